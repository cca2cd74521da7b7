"""Patches that wait until their module is imported.

Patching a class of ``multiprocessing`` means importing its module, and some
cost a spawn worker more than most targets do: ``multiprocessing.managers``
with what it brings took 40 ms of a cold start, ``shared_memory`` 10 ms.  A
worker that never touches a Manager must not pay for patching one.
:func:`when_imported` runs ``patch(module)`` at once when the module is
imported already, else right after it is, from a finder on ``sys.meta_path``.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from types import ModuleType
from typing import Any

Patch = Callable[[ModuleType], None]

_pending: dict[str, list[Patch]] = {}


def when_imported(name: str, patch: Patch) -> None:
    """``patch(module)`` once the module ``name`` is imported (now, if it is)."""
    module = sys.modules.get(name)
    if module is not None:
        patch(module)
        return
    _pending.setdefault(name, []).append(patch)
    if _FINDER not in sys.meta_path:
        sys.meta_path.insert(0, _FINDER)


class _Finder:
    """Finds nothing itself: gives the other finders' spec a loader that patches after executing."""

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
        if name not in _pending:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = _PatchingLoader(spec.loader, name)  # type: ignore[assignment]  # a loader by its methods, as importlib takes it
                return spec
        return None


class _PatchingLoader:
    """The module's own loader, with the waiting patches applied after ``exec_module``."""

    def __init__(self, loader: Any, name: str) -> None:
        self._loader = loader
        self._name = name

    def create_module(self, spec: Any) -> Any:
        return self._loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self._loader.exec_module(module)
        module.__loader__ = self._loader  # what the module would have had
        for patch in _pending.pop(self._name, ()):
            patch(module)
        if not _pending and _FINDER in sys.meta_path:
            sys.meta_path.remove(_FINDER)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loader, name)


_FINDER = _Finder()

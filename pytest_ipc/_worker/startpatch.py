"""The one patch of ``multiprocessing``'s ``BaseProcess.start``.

Two features must act inside processes that the code under test starts
itself, with ``Process(target=...)`` or a ``Process`` subclass, from the
test process or from a worker: the leak check notes the SharedMemory
segments they create (:mod:`.shmlog`), and race amplification switches
itself on in them (:mod:`.amplify`).  Each registers a hook with
:func:`add_hook`.  As a process starts, the patch asks every hook for a
:class:`Layer` and wraps the process's work once, in a :class:`Wrapped` that
runs the layers in the child around the work:

- a ``Process`` with a ``target``: the target is wrapped;
- a subclass that overrides ``run``: ``run`` itself, as an instance
  attribute that travels with the process object to a spawn or forkserver
  child (:class:`RunOf` calls the class's own ``run`` there).

``ipc_workers``' own workers (whose target is :func:`.bootstrap.bootstrap`)
are left alone: they set themselves up from their spec.  Under fork the
child inherits the patch and the hooks, so the processes it starts are
reached too.
"""

from __future__ import annotations

from collections.abc import Callable
from multiprocessing import process
from typing import Any, Protocol


class Layer(Protocol):
    """What a hook adds to a process that starts: picklable, run in the child."""

    def unpickled(self) -> None:
        """In a spawn or forkserver child, before the work's own modules are imported."""

    def enter(self, work: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """In the child, just before the work."""

    def exit(self) -> None:
        """In the child, just after the work."""


Hook = Callable[[Any], "Layer | None"]

_hooks: list[Hook] = []
_original_start: Callable[[Any], None] | None = None


def add_hook(hook: Hook) -> None:
    """Ask ``hook(process)`` for a layer whenever a process starts in this process (once per hook)."""
    if hook not in _hooks:
        _hooks.append(hook)
    install()


def install() -> None:
    """Patch ``BaseProcess.start`` in this process, once."""
    global _original_start
    if _original_start is not None:
        return
    _original_start = process.BaseProcess.start
    process.BaseProcess.start = _start  # type: ignore[method-assign]  # the patch itself


def _start(self: Any) -> None:
    assert _original_start is not None
    layers = [layer for layer in (hook(self) for hook in _hooks) if layer is not None]
    if not layers or _is_own_worker(self):
        return _original_start(self)
    # A wrapped run is there for the child only: once started, the parent's
    # object gets back what its instance dict held (usually nothing).
    saved = vars(self).get("run", _NO_RUN)
    run_wrapped = _wrap_work(self, layers)
    try:
        return _original_start(self)
    finally:
        if run_wrapped and saved is _NO_RUN:
            vars(self).pop("run", None)
        elif run_wrapped:
            vars(self)["run"] = saved


_NO_RUN = object()


def _is_own_worker(proc: Any) -> bool:
    from pytest_ipc._worker.bootstrap import bootstrap

    return getattr(proc, "_target", None) is bootstrap


def _wrap_work(proc: Any, layers: list[Layer]) -> bool:
    """Have ``proc`` do its work inside ``layers``; True when ``run`` was wrapped (not the target).

    The attribute is written into the instance's ``__dict__``, past a
    subclass's ``__setattr__``.
    """
    if type(proc).run is process.BaseProcess.run:
        target = getattr(proc, "_target", None)
        if target is not None and not isinstance(target, Wrapped):
            proc._target = Wrapped(target, layers)
        return False
    current = proc.__dict__.get("run")
    if isinstance(current, Wrapped):
        return False
    vars(proc)["run"] = Wrapped(current if current is not None else RunOf(type(proc).run), layers)
    return True


def take_names(wrapper: Any, target: Any) -> None:
    """Give ``wrapper`` the name and docstring of the work it wraps.

    Code that looks at a process's ``_target`` (a ``run`` override that logs
    its name) then sees what it would see without pytest-ipc.
    """
    for attr in ("__name__", "__qualname__", "__doc__"):
        try:
            setattr(wrapper, attr, getattr(target, attr))
        except AttributeError:
            pass


class Wrapped:
    """A process's work, run inside the layers that the hooks gave it."""

    def __init__(self, work: Callable[..., Any], layers: list[Layer]) -> None:
        self.work = work
        self.layers = layers
        if work is not None:
            take_names(self, work)

    def __reduce__(self) -> tuple[Any, ...]:
        # The work travels as state, unpickled after _rebuild() has run the
        # layers' unpickled(): their patches are in before its module is imported.
        state = {k: v for k, v in self.__dict__.items() if k != "layers"}
        return (_rebuild, (self.layers,), state)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        for layer in self.layers:
            layer.enter(self.work, args, kwargs)
        try:
            return self.work(*args, **kwargs)
        finally:
            for layer in reversed(self.layers):
                layer.exit()


def _rebuild(layers: list[Layer]) -> Wrapped:
    for layer in layers:
        layer.unpickled()
    return Wrapped(None, layers)  # type: ignore[arg-type]  # the work follows as state


class RunOf:
    """The ``run`` a ``Process`` subclass defines, called as the process would.

    It holds no reference to the process (a subclass's own ``__getstate__``
    or ``__reduce__`` could not pickle one): in the child, ``_bootstrap``
    has made the process the current one before it calls ``run``.
    """

    def __init__(self, run: Any) -> None:
        take_names(self, run)

    @property
    def proc(self) -> Any:
        return process.current_process()

    def __call__(self) -> Any:
        proc = process.current_process()
        vars(proc).pop("run", None)  # the wrappers have done their part
        return proc.run()

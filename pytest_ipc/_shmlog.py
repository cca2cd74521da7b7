"""The SharedMemory segments that child processes create during a test.

The leak check sees the segments the test's own process creates through
multiprocessing's resource-tracker registration; a segment that a worker
creates is registered from the worker, out of the test process's sight.  So,
while a test runs, ``SharedMemory.__init__`` notes every segment it creates
in a process other than the test's, one name a line, appended to a file
under pytest's basetemp (a child's memory dies with it; an ``O_APPEND`` write
this short is never interleaved).  At teardown the test process reads the
file, and a noted segment still in /dev/shm is a leak of that test.

Reach: processes forked from the test process while it runs inherit the
patch, and so do their own fork children; ``ipc_workers``' spawn and
forkserver workers install it from their spec (:func:`follow`).  A
``Process`` with a ``target`` that the code under test starts itself, from
the test process or from a worker, carries its target wrapped in a
:class:`Followed`, which installs it in a spawn or forkserver child before
the target runs; a ``Process`` subclass that overrides ``run`` carries its
``run`` wrapped the same way (:func:`wrap_work`).

No pytest here: workers import this module.
"""

from __future__ import annotations

import os
from multiprocessing import process
from typing import Any, Callable

_path: str | None = None
_owner = 0  # the test process: what it creates is seen by its registrations
_original_init: Callable[..., None] | None = None


def start(path: str) -> tuple[str | None, int, bool]:
    """In the test process, as a test starts: note children's segments in ``path``.

    Returns what :func:`stop` needs to restore: a test may run a whole pytest
    session in-process (pytester), whose tests start and stop their own.
    """
    global _path, _owner
    outer = (_path, _owner, _original_init is not None)
    _discard(path)
    _path, _owner = path, os.getpid()
    _patch()
    # A fork child uses its parent's resource tracker only if one is running
    # when it is forked; else it starts its own, which unlinks the child's
    # leaked segments as soon as the child exits (with a warning), so that
    # whether the check saw one would depend on timing.  (Spawn and forkserver
    # children get the parent's tracker started for them.)
    from multiprocessing import resource_tracker

    resource_tracker.ensure_running()
    return outer


def stop(path: str, outer: tuple[str | None, int, bool]) -> set[str]:
    """In the test process, as the test ends: the names children noted in ``path``."""
    global _path, _owner
    _path, _owner, patched = outer
    if not patched:
        _unpatch()
    try:
        with open(path, encoding="utf-8") as f:
            return {line.strip() for line in f if line.strip()}
    except OSError:  # no child created a segment
        return set()
    finally:
        _discard(path)


def current() -> tuple[str, int] | None:
    """Where a worker started now should note its segments, and the test process's pid."""
    return (_path, _owner) if _path is not None else None


def follow(path: str, owner: int) -> None:
    """In a spawn or forkserver worker: note the segments this process creates."""
    global _path, _owner
    _path, _owner = path, owner
    _patch()


def _note(name: str) -> None:
    path = _path
    if path is None or os.getpid() == _owner:
        return
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, name.encode() + b"\n")
        finally:
            os.close(fd)
    except OSError:  # basetemp gone: the test process is gone too
        pass


def take_names(wrapper: Any, target: Any) -> None:
    """Give ``wrapper`` the name and docstring of the ``Process`` target it wraps.

    Code that looks at a process's ``_target`` (a ``run`` override that logs
    its name) then sees what it would see without pytest-ipc.
    """
    for attr in ("__name__", "__qualname__", "__doc__"):
        try:
            setattr(wrapper, attr, getattr(target, attr))
        except AttributeError:
            pass


def wrap_work(proc: Any, kind: type, make: Callable[[Callable[..., Any]], Any]) -> bool:
    """Have ``proc``, about to start, do its work through ``make(work)``.

    A ``Process`` runs ``run()``, which calls its ``target``: the target is
    wrapped, or where a subclass overrides ``run``, ``run`` itself, as an
    instance attribute that travels with the process object to a spawn or
    forkserver child.  Nothing is wrapped twice in ``kind``, nor
    ``ipc_workers``' own workers (they follow from their spec).  Returns
    True when ``run`` was wrapped (see :func:`start_wrapped`).  The
    attribute is written into the instance's ``__dict__``, past a
    subclass's ``__setattr__``.
    """
    if type(proc).run is process.BaseProcess.run:
        target = getattr(proc, "_target", None)
        if target is None or isinstance(target, kind) or getattr(target, "__module__", None) == "pytest_ipc._child":
            return False
        proc._target = make(target)
        return False
    current = proc.__dict__.get("run")
    if isinstance(current, kind):
        return False
    vars(proc)["run"] = make(current if current is not None else RunOf(type(proc).run))
    return True


_NO_RUN = object()


def start_wrapped(proc: Any, start: Callable[[Any], Any], kind: type, make: Callable[[Callable[..., Any]], Any]) -> Any:
    """``start(proc)`` with its work wrapped by :func:`wrap_work`.

    A wrapped ``run`` is there for the child only: once started, the
    parent's object gets back what its instance dict held (usually nothing).
    """
    saved = vars(proc).get("run", _NO_RUN)
    run_wrapped = wrap_work(proc, kind, make)
    try:
        return start(proc)
    finally:
        if run_wrapped and saved is _NO_RUN:
            vars(proc).pop("run", None)
        elif run_wrapped:
            vars(proc)["run"] = saved


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


class Followed:
    """A ``Process`` target that notes, in its own process, the segments it creates."""

    _ipc_wraps = True  # its target is in ``target`` (see _amplify._reachable)

    def __init__(self, target: Callable[..., Any], path: str, owner: int) -> None:
        self.target = target
        self.path = path
        self.owner = owner
        take_names(self, target)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if _path is None:  # spawn, forkserver: a process of its own; fork: patched already
            follow(self.path, self.owner)
        return self.target(*args, **kwargs)


def _patch_start() -> None:
    """Wrap the target of every ``Process`` started while a test runs (once per process).

    The patch stays: outside a test it passes every target through as it is.
    It is marked with an attribute of its own, not ``__wrapped__``, so that
    race amplification, which wraps ``start`` too, still patches over it.
    """
    original = process.BaseProcess.start
    if any(getattr(f, "_ipc_shmlog", False) for f in _wrapped_chain(original)):
        return

    def start(self: Any) -> Any:
        path, owner = _path, _owner
        if path is None:
            return original(self)
        return start_wrapped(self, original, Followed, lambda work: Followed(work, path, owner))

    start._ipc_shmlog = True  # type: ignore[attr-defined]
    process.BaseProcess.start = start  # type: ignore[method-assign]


def _wrapped_chain(func: Any) -> list[Any]:
    """``func`` and the functions it wraps, by ``__wrapped__``."""
    chain = []
    while func is not None and len(chain) < 10:
        chain.append(func)
        func = getattr(func, "__wrapped__", None)
    return chain


def _patch() -> None:
    global _original_init
    _patch_start()
    if _original_init is not None:
        return
    from multiprocessing import shared_memory

    original = shared_memory.SharedMemory.__init__

    def __init__(self: Any, name: str | None = None, create: bool = False, size: int = 0, *args: Any,
                 **kwargs: Any) -> None:
        original(self, name, create, size, *args, **kwargs)
        if create:
            _note(self.name)

    __init__.__wrapped__ = original  # type: ignore[attr-defined]
    shared_memory.SharedMemory.__init__ = __init__  # type: ignore[method-assign]
    _original_init = original


def _unpatch() -> None:
    global _original_init
    if _original_init is None:
        return
    from multiprocessing import shared_memory

    shared_memory.SharedMemory.__init__ = _original_init  # type: ignore[method-assign]
    _original_init = None


def _discard(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass

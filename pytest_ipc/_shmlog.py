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
forkserver workers install it from their spec (:func:`follow`).  A process
that the code under test starts itself with spawn or forkserver is not
reached: the resource tracker still warns about its leak when it exits.

No pytest here: workers import this module.
"""

from __future__ import annotations

import os
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


def _patch() -> None:
    global _original_init
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

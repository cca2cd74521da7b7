"""The SharedMemory segments that child processes, or untracked ones, create during a test.

The leak check sees the segments the test's own process creates through
multiprocessing's resource-tracker registration; a segment that a worker
creates is registered from the worker, out of the test process's sight, and
one made with ``SharedMemory(track=False)`` (Python 3.13+) is not registered
at all.  So, while a test runs, ``SharedMemory.__init__`` notes every segment
it creates in a process other than the test's, and every untracked one, one
name a line, appended to a file under pytest's basetemp (a child's memory
dies with it; an ``O_APPEND`` write this short is never interleaved).  At
teardown the test process reads the file, and a noted segment still in
/dev/shm is a leak of that test.

Reach: processes forked from the test process while it runs inherit the
patch, and so do their own fork children; ``ipc_workers``' spawn and
forkserver workers install it from their spec (:func:`follow`).  Processes
that the code under test starts itself, from the test process or from a
worker, get a :class:`FollowSegments` layer through the start patch
(:mod:`.startpatch`), which installs it in a spawn or forkserver child
before its work runs.

The patch of ``SharedMemory.__init__`` waits until ``shared_memory`` is
imported (:mod:`.lazy`) and then stays: outside a test it only checks that
no log is set.  Standard library only: workers import this module.
"""

from __future__ import annotations

import os
from types import ModuleType
from typing import Any

from pytest_ipc._worker import lazy, startpatch

_path: str | None = None
_owner = 0  # the test process: what it creates is seen by its registrations


def start(path: str) -> tuple[str | None, int]:
    """In the test process, as a test starts: note children's segments in ``path``.

    Returns what :func:`stop` needs to restore: a test may run a whole pytest
    session in-process (pytester), whose tests start and stop their own.
    """
    global _path, _owner
    outer = (_path, _owner)
    _discard(path)
    _path, _owner = path, os.getpid()
    _install()
    # A fork child uses its parent's resource tracker only if one is running
    # when it is forked; else it starts its own, which unlinks the child's
    # leaked segments as soon as the child exits (with a warning), so that
    # whether the check saw one would depend on timing.  (Spawn and forkserver
    # children get the parent's tracker started for them.)
    from multiprocessing import resource_tracker

    resource_tracker.ensure_running()
    return outer


def stop(path: str, outer: tuple[str | None, int]) -> set[str]:
    """In the test process, as the test ends: the names children noted in ``path``."""
    global _path, _owner
    _path, _owner = outer
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
    _install()


def _note(name: str, tracked: bool) -> None:
    path = _path
    # The test process's own segments are seen by their registration with the
    # resource tracker, but for SharedMemory(track=False) (3.13+), which has none.
    if path is None or (tracked and os.getpid() == _owner):
        return
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, name.encode() + b"\n")
        finally:
            os.close(fd)
    except OSError:  # basetemp gone: the test process is gone too
        pass


class FollowSegments:
    """The leak check's layer (see :mod:`.startpatch`): a child notes the segments it creates."""

    def __init__(self, path: str, owner: int) -> None:
        self.path = path
        self.owner = owner

    def unpickled(self) -> None:
        pass

    def enter(self, work: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        if _path is None:  # spawn, forkserver: a process of its own; fork: inherited
            follow(self.path, self.owner)

    def exit(self) -> None:
        pass


def _layer_for(proc: Any) -> FollowSegments | None:
    """A process starts while a test runs: it notes its segments too."""
    return FollowSegments(_path, _owner) if _path is not None else None


_installed = False


def _install() -> None:
    global _installed
    if _installed:
        return
    _installed = True
    startpatch.add_hook(_layer_for)
    lazy.when_imported("multiprocessing.shared_memory", _patch_init)


def _patch_init(module: ModuleType) -> None:
    original = module.SharedMemory.__init__

    def __init__(
        self: Any, name: str | None = None, create: bool = False, size: int = 0, *args: Any, **kwargs: Any
    ) -> None:
        original(self, name, create, size, *args, **kwargs)
        if create:
            _note(self.name, getattr(self, "_track", True))

    __init__.__wrapped__ = original  # type: ignore[attr-defined]  # for introspection, as functools.wraps does
    module.SharedMemory.__init__ = __init__


def _discard(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass

"""Who holds which ``multiprocessing`` lock and who waits for which: the facts of a deadlock report.

Each process with pytest-ipc's code (every ``ipc_workers`` worker, and the
test process from its first ``ipc_workers`` on) knows, for its locks that
admit one holder at a time (``Lock``, ``RLock``, ``BoundedSemaphore(1)``):

- where each was made (``SemLock.__init__``, :func:`creation_site`): the
  user's line, that is the first frame outside ``multiprocessing`` and
  pytest-ipc, or the pytest-ipc fixture that made it;
- where this process last took it (``_ipc_taken``, kept on the lock by
  ``acquire`` and ``__enter__``); whether it still holds it is asked of the
  semaphore only when the state is asked for (:func:`snapshot`), so
  ``release`` and ``__exit__`` stay multiprocessing's own;
- which lock each of its threads waits for, and from which frame: the line
  is read when asked, as the thread is still there.

``Lock``, ``RLock`` and ``BoundedSemaphore`` get an ``acquire`` and an
``__enter__`` of their own, and ``SemLock._make_methods`` no longer binds the
C ``acquire`` on each instance (which would bypass the class), so a plain
``lock.acquire()`` is seen as well as ``with lock:``.  A lock made before the
patch (in the test process, before its first ``ipc_workers``) is seen
through ``with`` only.  A ``Semaphore`` is left alone.

Identity across processes (:func:`key`): the semaphore's name under spawn
and forkserver; under fork the name is unlinked at once, but the handle is
the same address in every forked child.

A worker answers the parent's query (:data:`QUERY_SIGNAL`, see
:func:`answer_queries`) from a Python signal handler, which a main thread
blocked in a lock's ``acquire`` runs too (``sem_wait`` returns EINTR, the
handler runs, the wait resumes).  SIGURG is ignored by default, so a
process that never installed the handler is not harmed by the query.

Standard library only: every worker imports this module.
"""

from __future__ import annotations

import itertools
import os
import signal
import sys
import time
from _thread import get_ident
from collections.abc import Callable
from types import FrameType, ModuleType
from typing import Any

QUERY_SIGNAL = signal.SIGURG

# The kind of an RLock's semaphore (multiprocessing.synchronize.RECURSIVE_MUTEX).
_RECURSIVE = 0

# Frames of these files are not the user's: pytest-ipc's own (its directory
# as its code objects name it: as imported, and absolute) and, once the
# module is patched, multiprocessing's.
_OURS = tuple({os.path.dirname(os.path.dirname(path)) + os.sep for path in (__file__, os.path.abspath(__file__))})
_FIXTURES = tuple(prefix + "fixtures.py" for prefix in _OURS)
_PYTEST_FIXTURES = os.sep + os.path.join("_pytest", "fixtures.py")
_skip: tuple[str, ...] = _OURS
# multiprocessing's own directory, once the module is patched.
_multiprocessing: tuple[str, ...] = ()

# Whether this process is traced (set by trace.start and trace.stop; see
# _traced_take): trace is imported only then, as it imports ctypes.
tracing = False

# thread ident -> (lock, frame of the acquire's caller) while the thread waits.
_waiting: dict[int, tuple[Any, FrameType]] = {}
# key -> (kind, creation site) of the locks made in this process, the latest
# last; bounded, as a test may make locks in a loop.
_created: dict[str, tuple[str, dict[str, Any] | None]] = {}
_CREATED_MAX = 4096

_installed = False


def install() -> None:
    """Record lock state in this process from now on (once ``multiprocessing.synchronize`` is imported)."""
    global _installed
    if _installed:
        return
    _installed = True
    from pytest_ipc._worker import lazy

    os.register_at_fork(after_in_child=_forked)
    lazy.when_imported("multiprocessing.synchronize", patch)


def _forked() -> None:
    # The parent's waiters are not this process's (its takes: the semaphores' counts start at 0).
    _waiting.clear()


def patch(module: ModuleType) -> None:
    """Patch the locks of ``module`` (``multiprocessing.synchronize``); once.

    ``Lock``, ``RLock`` and ``BoundedSemaphore`` get an ``acquire`` and an
    ``__enter__`` of their own; ``SemLock.__init__`` notes where a lock is
    made.  A ``Semaphore`` is left as it is.  Amplification's lock patches
    (:mod:`.amplify.patches`) wrap these, so they call this first.
    """
    global _skip, _multiprocessing
    semlock = module.SemLock
    if semlock.__dict__.get("_ipc_lockstate"):
        return
    here = os.path.dirname(str(module.__file__))
    _multiprocessing = tuple({here + os.sep, os.path.abspath(here) + os.sep})
    _skip = (*_multiprocessing, *_OURS)
    init = semlock.__init__
    make_methods = semlock._make_methods

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        if self._ipc_tracked and self._semlock.maxvalue == 1:
            _created_here(self, sys._getframe(1))

    def _make_methods(self: Any) -> None:
        if not self._ipc_tracked or self._semlock.maxvalue != 1:
            make_methods(self)  # a semaphore (a Queue's BoundedSemaphore too): multiprocessing's own
            return
        # multiprocessing's binds the C acquire and release on the instance,
        # which the class's acquire could not see past: release only.  (Not
        # by deleting the attribute afterwards, which would make every
        # attribute of the lock slower to read.)
        self.release = self._semlock.release
        self._ipc_taken = False

    semlock.__init__ = __init__
    semlock._make_methods = _make_methods
    semlock._ipc_tracked = False
    for cls, acquire, enter in (
        (module.Lock, _acquire, _enter),
        (module.BoundedSemaphore, _acquire, _enter_bounded),
        (module.RLock, _acquire_rlock, _enter_rlock),
    ):
        cls._ipc_tracked = True
        cls.acquire = acquire
        cls.__enter__ = enter
    semlock._ipc_lockstate = True


def key(semlock: Any) -> str:
    """The same string for one lock in every process: its name, else (fork) its handle."""
    name = semlock.name
    return str(name) if name else f"handle:{semlock.handle}"


# The hot path: every critical section passes __enter__ (or acquire), so
# these are written out, one pair per kind, with no calls of their own when
# the lock is free.  Where the lock was taken is kept on the lock
# (_ipc_taken), never cleared: release stays multiprocessing's own, and
# snapshot() asks the semaphore whether this process still holds it.  A
# BoundedSemaphore is a lock only when it admits one holder: otherwise its
# acquire stays the C method bound on the instance.


def _acquire(self: Any, block: bool = True, timeout: float | None = None) -> bool:
    semlock = self._semlock
    caller = sys._getframe(1)
    frame = _outside(caller) if caller.f_code.co_filename.startswith(_skip) else caller
    taken = None if frame is None else (frame.f_code, frame.f_lasti)  # before: the critical section stays short
    if semlock.acquire(False) or (block and _wait(self, semlock, timeout)):
        self._ipc_taken = taken
        if tracing:
            _traced_take(self, caller, frame, True)
        return True
    if block and tracing:
        _traced_take(self, caller, frame, False)
    return False


def _enter(self: Any) -> bool:
    semlock = self._semlock
    caller = sys._getframe(1)
    frame = _outside(caller) if caller.f_code.co_filename.startswith(_skip) else caller
    taken = None if frame is None else (frame.f_code, frame.f_lasti)
    if not semlock.acquire(False):
        _wait(self, semlock, None)
    self._ipc_taken = taken
    if tracing:
        _traced_take(self, caller, frame, True)
    return True


def _enter_bounded(self: Any) -> bool:
    if self._semlock.maxvalue != 1:
        return self._semlock.acquire()  # type: ignore[no-any-return]  # True: a semaphore, not a lock
    return _enter(self)


def _acquire_rlock(self: Any, block: bool = True, timeout: float | None = None) -> bool:
    semlock = self._semlock
    if semlock._is_mine():
        return semlock.acquire(block, timeout)  # type: ignore[no-any-return]  # True: taken again
    caller = sys._getframe(1)
    frame = _outside(caller) if caller.f_code.co_filename.startswith(_skip) else caller
    taken = None if frame is None else (frame.f_code, frame.f_lasti)  # before: the critical section stays short
    if semlock.acquire(False) or (block and _wait(self, semlock, timeout)):
        self._ipc_taken = taken
        if tracing:
            _traced_take(self, caller, frame, True)
        return True
    if block and tracing:
        _traced_take(self, caller, frame, False)
    return False


def _enter_rlock(self: Any) -> bool:
    semlock = self._semlock
    if semlock._is_mine():
        # Taken again (a synchronized Value's accessors do, inside ``with v.get_lock()``):
        # where it was first taken is what counts.
        return semlock.acquire()  # type: ignore[no-any-return]  # True
    caller = sys._getframe(1)
    frame = _outside(caller) if caller.f_code.co_filename.startswith(_skip) else caller
    taken = None if frame is None else (frame.f_code, frame.f_lasti)
    if not semlock.acquire(False):
        _wait(self, semlock, None)
    self._ipc_taken = taken
    if tracing:
        _traced_take(self, caller, frame, True)
    return True


def _traced_take(lock: Any, caller: FrameType, frame: FrameType | None, taken: bool) -> None:
    """In a traced run: this process took ``lock`` (or waited for it in vain) at ``frame``'s line, holding others.

    The event's value is the locks this process holds besides it, each with
    where it was taken: the order in which a worker nests its locks, which
    :mod:`pytest_ipc.race.conflicts` compares across workers.  Not recorded:
    a try-lock (``acquire(False)``), which cannot deadlock, and the takes of
    ``multiprocessing``'s own code (a queue's locks, a synchronized object's
    accessors, a feeder thread), which nest no lock of the user's.
    """
    from pytest_ipc._worker import trace

    events = trace.events
    if events is None:
        return
    by: FrameType | None = caller
    while by is not None and by.f_code.co_filename.startswith(_OURS):  # amplification's wrappers
        by = by.f_back
    if by is not None and by.f_code.co_filename.startswith(_multiprocessing):
        return
    when = time.monotonic_ns()
    ident = _trace_id(lock)
    held = []
    still = []
    for other in trace.locks_taken:
        semlock = other._semlock
        if other is lock or not _holds(semlock):
            continue  # released: it comes back at its next take
        still.append(other)
        if semlock._is_mine():  # this thread's, not another thread's of this process
            file, line, function = _taken_at(other) or ("?", 0, "?")
            held.append((_trace_id(other), file, line or 0, function))
    at = ("?", 0, "?") if frame is None else (frame.f_code.co_filename, frame.f_lineno, frame.f_code.co_name)
    events.append((when, ident, None, "take" if taken else "timeout", tuple(held), *at))
    if taken:
        still.append(lock)
    trace.locks_taken[:] = still


def _trace_id(lock: Any) -> str:
    from pytest_ipc._worker import trace

    ident = "lock:" + key(lock._semlock)
    if ident not in trace.objects:
        trace.objects[ident] = (type(lock).__name__, getattr(lock, "_ipc_site", None) or "", "lock")
    return ident


def _outside(frame: FrameType | None) -> FrameType | None:
    """The first frame, from ``frame`` out, outside multiprocessing and pytest-ipc: the user's."""
    skip = _skip
    while frame is not None and frame.f_code.co_filename.startswith(skip):
        frame = frame.f_back
    return frame


def _wait(lock: Any, semlock: Any, timeout: float | None) -> bool:
    """Block for ``lock``, noted as waited for meanwhile (its line is read from the frame when asked)."""
    me = get_ident()
    _waiting[me] = (lock, sys._getframe(2))
    try:
        return bool(semlock.acquire(True, timeout))
    finally:
        _waiting.pop(me, None)


def _created_here(lock: Any, frame: FrameType | None) -> None:
    try:
        site = creation_site(frame)
        lock._ipc_site = site
        _created[key(lock._semlock)] = (type(lock).__name__, site)
        if len(_created) > _CREATED_MAX:
            del _created[next(iter(_created))]
    except Exception:  # pragma: no cover - a lock is made whatever its bookkeeping does
        pass


def creation_site(frame: FrameType | None) -> dict[str, Any] | None:
    """Where the user made a lock, from the frame that called ``SemLock.__init__``.

    ``{"by": name}`` for a pytest-ipc fixture (``shared_value``'s lock), else
    the user's file, line, function, the call's position (line, end line,
    column, end column: it names the variable assigned) and, for a lock that
    a fixture of the user's made, that fixture's name.
    """
    outermost_ours = None
    while frame is not None:
        filename = frame.f_code.co_filename
        if not filename.startswith(_skip):
            break
        if filename.startswith(_OURS):
            outermost_ours = frame
        frame = frame.f_back
    if outermost_ours is not None and outermost_ours.f_code.co_filename in _FIXTURES:
        return {"by": outermost_ours.f_code.co_name}
    if frame is None:
        return None
    code = frame.f_code
    pos = call_position(frame)
    caller = frame.f_back
    fixture = code.co_name if caller is not None and caller.f_code.co_filename.endswith(_PYTEST_FIXTURES) else None
    return {
        "file": code.co_filename,
        "line": frame.f_lineno,
        "function": code.co_name,
        "pos": pos,
        "fixture": fixture,
    }


def call_position(frame: FrameType) -> tuple[int, int, int, int] | None:
    """The position (line, end line, column, end column) of the instruction ``frame`` is at, if known."""
    try:
        pos = next(itertools.islice(frame.f_code.co_positions(), frame.f_lasti // 2, None))
    except (StopIteration, ValueError):  # pragma: no cover - a code object without positions
        return None
    return None if None in pos else tuple(pos)  # type: ignore[return-value]  # four ints, once None is ruled out


def created(lock_key: str) -> tuple[str, dict[str, Any] | None] | None:
    """The kind and creation site of a lock made in this process, by its :func:`key`."""
    return _created.get(lock_key)


def _tracked_locks() -> list[Any]:
    """This process's Lock, RLock and BoundedSemaphore objects (found when asked: nothing to keep up to date)."""
    synchronize = sys.modules.get("multiprocessing.synchronize")
    if synchronize is None:
        return []
    import gc

    kinds = (synchronize.Lock, synchronize.RLock, synchronize.BoundedSemaphore)
    return [obj for obj in gc.get_objects() if isinstance(obj, kinds)]


def _holds(semlock: Any) -> bool:
    """Whether a thread of this process holds the lock (the semaphore counts this process's takes)."""
    try:
        # A Lock that another process released since (handed on) is not held here.
        return bool(semlock._count() > 0 and semlock._get_value() == 0)
    except Exception:  # pragma: no cover - sem_getvalue unsupported
        return False


def _line_of(code: Any, lasti: int) -> int | None:
    for start, end, line in code.co_lines():
        if start <= lasti < end:
            return line  # type: ignore[no-any-return]  # an int, or None for an artificial instruction
    return None


def _taken_at(lock: Any) -> tuple[str, int | None, str] | None:
    """Where this process last took ``lock``: file, line, function; None if it never did."""
    where = lock.__dict__.get("_ipc_taken")
    return None if not where else (where[0].co_filename, _line_of(*where), where[0].co_name)


def _describe(lock: Any) -> dict[str, Any]:
    return {"key": key(lock._semlock), "kind": type(lock).__name__, "created": getattr(lock, "_ipc_site", None)}


def _thread_names() -> dict[int, str]:
    threading = sys.modules.get("threading")
    active = getattr(threading, "_active", None) or {}
    return {ident: thread.name for ident, thread in list(active.items())}


def snapshot() -> dict[str, Any]:
    """This process's locks held and waited for, as plain data (it goes through ``repr``)."""
    names = _thread_names()
    holds = []
    for lock in _tracked_locks():
        semlock = lock._semlock
        if semlock.maxvalue != 1 or not _holds(semlock):
            continue
        holds.append({**_describe(lock), "taken_at": _taken_at(lock)})
    waits = []
    for ident, (lock, frame) in list(_waiting.items()):
        f: FrameType | None = frame
        while f is not None and f.f_code.co_filename.startswith(_skip):
            f = f.f_back
        at = None if f is None else (f.f_code.co_filename, f.f_lineno, f.f_code.co_name)
        waits.append({**_describe(lock), "thread": names.get(ident, str(ident)), "at": at})
    return {"pid": os.getpid(), "holds": holds, "waits": waits}


def answer_queries(state_path: str, answers_path: str) -> None:
    """From now on answer :data:`QUERY_SIGNAL`: :func:`snapshot` into ``state_path``, a byte into ``answers_path``.

    ``answers_path`` is the parent's FIFO, open while it waits for answers;
    the byte tells it this answer is complete.  Main thread only.
    """

    def answer(signum: int, frame: Any) -> None:
        try:
            data = repr(snapshot()).encode()
        except Exception as exc:
            data = repr({"error": f"{type(exc).__name__}: {exc}"}).encode()
        try:
            tmp = state_path + ".tmp"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
            finally:
                os.close(fd)
            os.replace(tmp, state_path)
        except Exception:
            pass  # no file: the parent has no lock state of this process
        try:
            fd = os.open(answers_path, os.O_WRONLY | os.O_NONBLOCK)
        except OSError:
            return  # the parent stopped waiting
        try:
            os.write(fd, b".")
        except OSError:
            pass
        finally:
            os.close(fd)

    handler: Callable[[int, Any], None] = answer
    signal.signal(QUERY_SIGNAL, handler)


# -- processes that a worker starts: they answer too ---------------------------


class AnswerQueriesToo:
    """The layer (see :mod:`.startpatch`) by which a process a worker starts answers lock-state queries.

    In the child it installs the lock patches before the work's objects are
    unpickled, answers :data:`QUERY_SIGNAL` into a file of its own, and
    writes ``child-<pid>.answers`` (its name and its parent worker's) so that
    the parent's hang report knows whom to ask.
    """

    def __init__(self, workdir: str, worker: str) -> None:
        self.workdir = workdir
        self.worker = worker

    def unpickled(self) -> None:
        install()

    def enter(self, work: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        from multiprocessing import process

        from pytest_ipc._worker.protocol import child_answers_path, lock_answers_path, lockstate_path

        try:
            install()
            pid = os.getpid()
            answer_queries(lockstate_path(self.workdir, f"child-{pid}"), lock_answers_path(self.workdir))
            with open(child_answers_path(self.workdir, pid), "w", encoding="utf-8") as f:
                f.write(repr((process.current_process().name, self.worker)))
        except Exception:  # the worker's directory gone, a signal not ours to take: the work runs all the same
            pass

    def exit(self) -> None:
        from pytest_ipc._worker.protocol import child_answers_path

        try:
            os.unlink(child_answers_path(self.workdir, os.getpid()))
        except OSError:
            pass


_followed: tuple[str, str] | None = None


def follow_children(workdir: str, worker: str) -> None:
    """Have the processes this worker starts (and theirs, under fork) answer lock-state queries too."""
    global _followed
    from pytest_ipc._worker import startpatch

    _followed = (workdir, worker)
    startpatch.add_hook(_layer_for)


def _layer_for(proc: Any) -> AnswerQueriesToo | None:
    return AnswerQueriesToo(*_followed) if _followed is not None else None

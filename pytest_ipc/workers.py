"""Starting, joining and ending worker processes: the parent side of ``ipc_workers``.

Every way a child can go wrong becomes a :class:`~pytest_ipc.WorkerError`
that names the worker and the cause.  Every wait has a deadline, a hung
worker's stacks are collected (faulthandler, on SIGABRT) before it is ended,
and whatever is still running at teardown is ended, grandchildren included
when psutil is installed.
"""

from __future__ import annotations

import os
import select
import shutil
import signal
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import wait
from typing import Any

from pytest_ipc import deadlock, gate
from pytest_ipc._worker import bootstrap, lockstate, shmlog
from pytest_ipc._worker.protocol import ChildResult, ChildSpec, Stage, TargetRef, read_result, stack_path
from pytest_ipc.errors import WorkerError, WorkerFailed, WorkerStartError, WorkerTimeout
from pytest_ipc.gate import StartGate

# How long a worker sent SIGABRT gets to write its stacks and die, and how
# long a SIGKILLed one gets to be reaped, before we stop waiting for it.
ABORT_GRACE = 2.0
KILL_GRACE = 5.0
# How long a killed worker's resource tracker gets to unlink what the worker
# left registered and exit by itself (it needs milliseconds).
TRACKER_GRACE = 2.0


@dataclass
class Worker:
    """One worker process of an :class:`IpcWorkers` group."""

    name: str
    index: int
    process: Any
    # Cached at start: the Process object is closed once the worker is
    # collected (that frees its sentinel fds), after which it has no pid.
    started_pid: int | None = None
    joined: bool = False
    exitcode: int | None = None
    result: ChildResult | None = None
    killed_for_hang: bool = False
    # Ended by us because another worker of the group failed first: not at fault.
    stopped_early: bool = False
    descendants: list[int] = field(default_factory=list)

    @property
    def pid(self) -> int | None:
        return self.started_pid

    def running(self) -> bool:
        """Started, not yet collected, and not exited."""
        return not self.joined and self.process.exitcode is None

    def label(self) -> str:
        return f"worker {self.name!r} (pid {self.pid})"


def describe_exit(worker: Worker) -> str | None:
    """Why ``worker`` failed, in one line, or None if it succeeded."""
    if worker.stopped_early:
        return None
    code = worker.exitcode
    result = worker.result
    if result is not None and not result.ok:
        return f"{worker.label()} {_FAILED_AT[result.stage]}{result.error()}"
    if code == 0:
        return None
    if code is None:
        return f"{worker.label()} is still running"
    if code < 0:
        try:
            sig = signal.Signals(-code)
            name = sig.name
        except ValueError:
            name, sig = f"signal {-code}", None
        if sig is signal.SIGSEGV:
            return f"{worker.label()} crashed with a segmentation fault ({name})"
        return f"{worker.label()} was killed by {name}"
    return f"{worker.label()} exited with code {code}"


def _read_text(path: str) -> str:
    try:
        with open(path, errors="replace") as f:
            return f.read().strip()
    except OSError:
        return ""


# How a failed worker's result reads, by the stage it failed at.
_FAILED_AT = {
    Stage.LOAD: "could not load its target: ",
    Stage.BARRIER: "gave up at the start barrier: ",
    Stage.RETURN: "returned a value that cannot be sent back: ",
    Stage.RUN: "raised ",
}


def _is_bootstrap_frame(line: str) -> bool:
    """Is this faulthandler line the frame where a worker's own code starts?

    Our bootstrap; or, for a worker that hangs after its target returned
    (flushing a Queue at exit) and has no frame of ours, multiprocessing's
    own bootstrap, or (3.13, where the exit functions run from atexit after
    it) the fork.  Frames are told by their file's path and function name.
    """
    return _frame_of(line) in _BOOTSTRAP_FRAMES


def _frame_of(line: str) -> tuple[str, str] | None:
    """The file and function of a faulthandler frame line; None for another line."""
    line = line.strip()
    if not line.startswith('File "'):
        return None
    filename, _, rest = line[len('File "') :].partition('", line ')
    return filename, rest.rpartition(" in ")[2]


def _is_lock_plumbing(line: str) -> bool:
    """Is this faulthandler line a frame of pytest-ipc's lock patches (where a blocked acquire sits)?"""
    frame = _frame_of(line)
    return frame is not None and (frame[0] == lockstate.__file__ or frame in _LOCK_WRAPPERS)


def _bootstrap_frames() -> frozenset[tuple[str, str]]:
    import multiprocessing.popen_fork
    import multiprocessing.process

    return frozenset(
        {
            (bootstrap.__file__, "bootstrap"),
            (multiprocessing.process.__file__, "_bootstrap"),
            (multiprocessing.popen_fork.__file__, "_launch"),
        }
    )


_BOOTSTRAP_FRAMES = _bootstrap_frames()
# Amplification's wrappers of SemLock.__enter__/__exit__, around lockstate's.
_AMPLIFY_PATCHES = os.path.join(os.path.dirname(lockstate.__file__), "amplify", "patches.py")
_LOCK_WRAPPERS = frozenset({(_AMPLIFY_PATCHES, "__enter__"), (_AMPLIFY_PATCHES, "__exit__")})


def trim_stack(text: str) -> str:
    """A worker's faulthandler dump, without the frames below our bootstrap, nor our lock patches'.

    Under fork those frames are the parent's (pytest's own call stack at the
    moment of the fork), under spawn multiprocessing's start-up: noise that
    hides the worker's real stack.  A worker blocked on a lock shows
    multiprocessing's frame or the user's line on top, not the patches that
    note who holds what (see :mod:`pytest_ipc.deadlock`).
    """
    out: list[str] = []
    skipping = False
    for line in text.splitlines():
        if line.startswith(("Fatal Python error", "Extension modules:")):
            continue
        if line.startswith(("Thread ", "Current thread ")) or not line.strip():
            skipping = False
        if skipping:
            continue
        if _is_bootstrap_frame(line):
            skipping = True
            continue
        if _is_lock_plumbing(line):
            continue
        out.append(line)
    return "\n".join(out).strip()


# A process that put items on a multiprocessing Queue waits at exit until its
# feeder thread has written them all to the pipe: if nobody reads them, forever.
_QUEUE_EXIT_HANG = "in _finalize_join"
_QUEUE_EXIT_HINT = (
    "(it returned from its target but cannot exit: it put items on a multiprocessing "
    "Queue that nobody has read, and a process waits at exit until its queued data is "
    "flushed into the pipe. Read the items before join() (fanin_queue.collect() does), "
    "or call queue.cancel_join_thread() in the worker if losing them is fine.)"
)


def descendant_pids(pid: int | None) -> list[int]:
    """PIDs of a process's children, grandchildren, ... (empty without psutil).

    A ``multiprocessing`` resource tracker among them is what unlinks the
    semaphores and segments its processes leave behind, once they are gone:
    :func:`end_pids` gives it the chance before it ends it.
    """
    if pid is None:
        return []
    try:
        import psutil
    except ImportError:
        return []
    try:
        return [p.pid for p in psutil.Process(pid).children(recursive=True)]
    except psutil.Error:
        return []


_RESOURCE_TRACKER = "from multiprocessing.resource_tracker import main"


def _is_resource_tracker(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return _RESOURCE_TRACKER.encode() in f.read()
    except OSError:
        return False


def end_pids(pids: Iterable[int], grace: float) -> None:
    """SIGKILL ``pids``, but give their resource trackers ``grace`` seconds to clean up and exit first.

    A tracker exits by itself once every process that writes to it is gone,
    after it has unlinked what they left registered (a hung worker's own
    ``Barrier`` under spawn, say); killed, it would leave that behind.
    """
    pids = list(pids)
    trackers = [pid for pid in pids if _is_resource_tracker(pid)]
    # A pidfd (Linux 5.3) becomes readable as its process exits, child of ours or not.
    fds = {}
    for pid in trackers:
        try:
            fds[pid] = os.pidfd_open(pid)
        except OSError:  # gone already, or a kernel without pidfds: ended below if still there
            pass
    kill_pids(pid for pid in pids if pid not in trackers)
    try:
        deadline = time.monotonic() + grace
        poller = select.poll()  # not select(): a test process may hold more than 1024 descriptors
        for fd in fds.values():
            poller.register(fd, select.POLLIN)
        waiting = set(fds.values())
        while waiting and (remaining := deadline - time.monotonic()) > 0:
            for fd, _event in poller.poll(remaining * 1000):
                waiting.discard(fd)
                poller.unregister(fd)
        kill_pids(pid for pid in trackers if pid not in fds or fds[pid] in waiting)
    finally:
        for fd in fds.values():
            os.close(fd)


def kill_pids(pids: Iterable[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def _wait_exit(workers: Sequence[Worker], deadline: float) -> None:
    """Wait until each worker has exited or ``deadline`` (monotonic) passed."""
    pending = {w.process.sentinel: w for w in workers if w.running()}
    while pending:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return
        for sentinel in wait(list(pending), timeout=remaining):
            pending.pop(sentinel)


def _pickle_hint(target: Any, method: str) -> str | None:
    """Why ``target`` cannot reach a spawn/forkserver child, if we can tell up front."""
    qualname = getattr(target, "__qualname__", None)
    if qualname is None:
        return None
    if "<lambda>" in qualname:
        what = "a lambda"
    elif "<locals>" in qualname:
        what = "a function defined inside another function"
    else:
        return None
    return (
        f"the target {qualname!r} is {what}, which cannot be pickled, and under "
        f"{method!r} each worker receives its target by pickling. Move it to module "
        "level in an importable module (a test module works), or use the fork start method."
    )


def _target_for(target: Callable[..., Any], method: str) -> Any:
    if method == "fork":
        return target  # inherited, never pickled
    module = getattr(target, "__module__", None)
    qualname = getattr(target, "__qualname__", "")
    # A functools.partial or a callable instance has no name of its own to be
    # found by (a partial's __module__ is "functools"): it is pickled.
    named = isinstance(qualname, str) and qualname and "<" not in qualname
    if module and module != "__main__" and named and getattr(target, "__self__", None) is None:
        return TargetRef(module, qualname)
    return target


# How a target that cannot be found by name in the child fails to load.
_NOT_FOUND = ("ModuleNotFoundError", "ImportError", "AttributeError")


def _load_hint(target: Any, method: str) -> str:
    module = getattr(target, "__module__", None) or "?"
    return (
        f"Under {method!r} each worker imports the target's module {module!r} afresh, so it "
        "must be importable by that name from sys.path in a new interpreter; a module that "
        "exists only in sys.modules (made at run time, or a test module collected with "
        "--import-mode=importlib from outside sys.path) is not. Put the target in a module "
        "on sys.path (for example a helper module beside conftest.py, with the ini option "
        "pythonpath), or use the fork start method."
    )


def _early_death_hint(method: str) -> str:
    return (
        f"It died before any pytest-ipc code ran in it: under {method!r} that most often means "
        "its target or arguments could not be unpickled in the child (for example an object of "
        "a class the child cannot import); its stderr, captured with the test, says why. Pass "
        "module-level functions, plain data and multiprocessing objects, or use the fork start method."
    )


def _cause(worker: Worker) -> str | None:
    """``describe_exit`` without the leading worker label."""
    text = describe_exit(worker)
    if text is None:
        return None
    return text[len(worker.label()) :].strip()


def _start(proc: Any, method: str) -> list[warnings.WarningMessage]:
    """``proc.start()``; under fork, what it warned, held back.

    From Python 3.12 ``os.fork()`` warns in a process that runs other
    threads, after the child exists.  A filter that turns that warning into
    an error would raise it before the launcher knows the child, which would
    then wait for the start barrier, unended; so it is raised again once the
    child is a worker that the launcher ends.
    """
    if method != "fork":
        proc.start()
        return []
    with warnings.catch_warnings(record=True) as warned:
        warnings.simplefilter("always")
        proc.start()
    return warned


def _warn_again(warned: list[warnings.WarningMessage]) -> None:
    for w in warned:
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno, source=w.source)


class IpcWorkers:
    """Starts worker processes from the test's ``multiprocessing`` context.

    ``start(target, args=..., count=N)`` starts N workers that all wait at a
    start barrier and begin together (in an ``ipc_race`` run, together with
    the workers of every other ``start()``: see :mod:`pytest_ipc.gate`, and
    :meth:`release`); ``join()`` waits for every worker
    started so far, with a timeout, and raises :class:`WorkerError` naming
    each worker that failed, crashed or hung.  Return values of the targets
    come back from ``join()`` in start order.
    """

    def __init__(
        self,
        ctx: Any,
        timeout: float,
        basetemp: str | None = None,
        seed: int = 0,
        jitter: float = 0.0,
        one_gate: bool = False,
        trace_dir: str | None = None,
        warn_again: Callable[[list[warnings.WarningMessage]], None] | None = None,
    ) -> None:
        self._ctx = ctx
        # What to do with the warnings a fork gave (forkwarn.ForkWarnings.warn_again: one per session).
        self._warn_again = warn_again or _warn_again
        self.timeout = timeout
        self.seed = seed
        self.jitter = jitter
        self.trace_dir = trace_dir  # a diagnostic run's (see pytest_ipc.race.conflicts)
        self._workdir = tempfile.mkdtemp(prefix="ipc-workers-", dir=basetemp)
        self.workers: list[Worker] = []
        self._closed = False
        # one_gate (ipc_race runs): the workers of every start() wait at one
        # gate until the test waits on them (see pytest_ipc.gate); otherwise
        # each start() lets its own workers go together.
        self._gate = StartGate(ctx, timeout, hold=one_gate, workdir=self._workdir)
        self.gate_overdue: str | None = None
        # Where the test's locks are made, taken and waited for, for the
        # report of a deadlock (see pytest_ipc.deadlock); fork workers inherit it.
        lockstate.install()

    @property
    def start_method(self) -> str:
        return str(self._ctx.get_start_method())

    # -- starting ---------------------------------------------------------

    def start(
        self,
        target: Callable[..., Any],
        args: Sequence[Any] = (),
        kwargs: dict[str, Any] | None = None,
        count: int = 1,
        name: str | None = None,
    ) -> list[Worker]:
        """Start ``count`` workers running ``target(*args, **kwargs)``; return them.

        Returns once every new worker has reached the start barrier; they are
        then released together: at once, or in an ``ipc_race`` run when the
        run's one gate opens (see :meth:`release`).
        """
        __tracebackhide__ = True
        if self._closed:
            raise WorkerStartError("ipc_workers.start() called after teardown")
        if not callable(target):
            raise WorkerStartError(f"ipc_workers.start(): target must be callable, got {target!r}")
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise WorkerStartError(f"ipc_workers.start(): count must be a positive integer, got {count!r}")
        if isinstance(args, (str, bytes)) or not isinstance(args, Sequence):
            raise WorkerStartError(
                f"ipc_workers.start(): args must be a tuple or list, got {args!r} (for one argument write args=(x,))"
            )
        if kwargs is not None and not isinstance(kwargs, dict):
            raise WorkerStartError(f"ipc_workers.start(): kwargs must be a dict, got {kwargs!r}")
        if name is not None and not isinstance(name, str):
            raise WorkerStartError(f"ipc_workers.start(): name must be a string, got {name!r}")
        method = self.start_method
        if method != "fork":
            hint = _pickle_hint(target, method)
            if hint:
                raise WorkerStartError(hint)
        base = name or getattr(target, "__name__", "worker")
        sent_target = _target_for(target, method)
        ready_r, ready_w = self._ctx.Pipe(duplex=False)
        go_r = self._gate.go_end()
        new: list[Worker] = []
        parent_pid = _death_watch_pid(method)
        try:
            for _ in range(count):
                index = len(self.workers)
                wname = f"{base}-{index}"
                spec = ChildSpec(
                    name=wname,
                    index=index,
                    workdir=self._workdir,
                    ready=ready_w,
                    go=go_r,
                    gate_deadline=self._gate.worker_deadline(),
                    timeout=self.timeout,
                    seed=self.seed,
                    jitter=self.jitter,
                    parent_pid=parent_pid,
                    shm_log=shmlog.current(),
                    trace_dir=self.trace_dir,
                )
                proc = self._ctx.Process(
                    target=bootstrap.bootstrap,
                    name=wname,
                    args=(spec, sent_target, tuple(args), dict(kwargs or {})),
                )
                worker = Worker(wname, index, proc)
                try:
                    warned = _start(proc, method)
                except Exception as exc:
                    raise WorkerStartError(self._start_failure(worker, target, exc)) from None
                worker.started_pid = proc.pid
                self.workers.append(worker)
                new.append(worker)
                try:
                    self._warn_again(warned)  # now that the child is ours to end if a filter makes it an error
                except Warning as exc:
                    raise WorkerStartError(self._start_failure(worker, target, exc)) from None
            # Only the children hold the write end now: once they have all
            # sent (or died) the read end sees EOF.
            ready_w.close()
            with gate.quiet():  # its ready pipe is not the test talking to its workers
                self._await_ready(new, ready_r, target)
            self._gate.let_in([w.label() for w in new])
        except BaseException:
            self._abort(new)
            raise
        finally:
            for conn in (ready_w, ready_r):
                conn.close()
        return new

    def release(self) -> None:
        """Open the start gate: the workers held there begin now, those started later at once.

        Only needed in an ``ipc_race`` run whose test waits for its workers by
        a means the gate does not see (a shared ``Value`` polled in a loop, a
        file): ``join()``, ``fanin_queue.collect()``, a
        blocking call on a ``multiprocessing`` object and the test returning
        open it themselves.  Opening an open gate does nothing; outside
        ``ipc_race`` the gate is always open.
        """
        if self._closed:
            raise WorkerError("ipc_workers.release() called after teardown")
        self._gate.open("ipc_workers.release()")

    def _start_failure(self, worker: Worker, target: Any, exc: BaseException) -> str:
        method = self.start_method
        failure = f"could not start {worker.name!r} under {method!r}: {type(exc).__name__}: {exc}"
        if method == "fork":  # nothing is pickled: the OS refused, or a warning filter made fork() an error
            return failure
        return (
            f"{failure}. Under {method!r} the target {getattr(target, '__qualname__', target)!r} and its "
            "args are pickled to reach the child: use module-level functions and picklable "
            "arguments (multiprocessing objects such as Value, Lock, Queue and Pipe ends are "
            "fine), or the fork start method."
        )

    def _await_ready(self, new: list[Worker], ready_r: Any, target: Any) -> None:
        __tracebackhide__ = True
        deadline = time.monotonic() + self.timeout
        waiting = {w.index: w for w in new}
        eof = False
        while waiting:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                # No lock state to ask for: their targets have not started.
                self._hang(
                    list(waiting.values()),
                    new,
                    f"did not reach the start barrier within {self.timeout:g}s",
                    ask_locks=False,
                )
            sentinels = {w.process.sentinel: w for w in waiting.values()}
            # At EOF the read end stays readable: waiting on it again would spin.
            handles = list(sentinels) if eof else [ready_r, *sentinels]
            ready = wait(handles, timeout=remaining)
            if not eof and ready_r in ready:
                eof = _drain_ready(ready_r, waiting)
            dead = [sentinels[h] for h in ready if h is not ready_r and h in sentinels]
            if not dead:
                continue
            # A worker may have signalled and exited at once: drain first.
            if not eof:
                eof = _drain_ready(ready_r, waiting)
            dead = [w for w in dead if w.index in waiting]
            if dead:
                for w in dead:
                    self._collect(w)
                self._abort(new)
                raise self._early_death(dead, new, target)

    def _early_death(self, dead: list[Worker], group: list[Worker], target: Any) -> WorkerError:
        method = self.start_method
        loads = [w.result for w in dead if w.result is not None and w.result.stage is Stage.LOAD]
        if loads:
            text = self._failure_text(dead, "", group)
            if method != "fork" and any(r.exc_type in _NOT_FOUND for r in loads):
                text += "\n" + _load_hint(target, method)
            return WorkerStartError(text)
        text = self._failure_text(dead, "before reaching the start barrier", group)
        if method != "fork" and any(w.result is None and (w.exitcode or 0) > 0 for w in dead):
            return WorkerStartError(text + "\n" + _early_death_hint(method))
        return WorkerFailed(text)

    # -- joining ----------------------------------------------------------

    def join(self, timeout: float | None = None) -> list[Any]:
        """Wait for every worker started so far; return their return values in start order.

        Raises :class:`WorkerFailed` if any worker raised, exited non-zero or
        was killed (the others are then ended at once rather than waited
        for), and :class:`WorkerTimeout`, with the stacks of the workers
        still running, if they did not all finish within ``timeout`` seconds
        (default: the test's ``ipc_timeout``).  Only workers not joined
        before are waited for and reported.
        """
        __tracebackhide__ = True
        self._gate.open("ipc_workers.join()")
        limit = self.timeout if timeout is None else timeout
        if isinstance(limit, bool) or not isinstance(limit, (int, float)) or not limit > 0:
            raise WorkerError(f"ipc_workers.join(): timeout must be a positive number of seconds, got {timeout!r}")
        deadline = time.monotonic() + limit
        group = [w for w in self.workers if not w.joined]
        pending = {w.process.sentinel: w for w in group}
        try:
            while pending:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    self._hang(list(pending.values()), group, f"still running after the {limit:g}s timeout")
                for sentinel in wait(list(pending), timeout=remaining):
                    worker = pending.pop(sentinel)
                    self._collect(worker)
                    if describe_exit(worker) is not None:
                        self._fail_fast(list(pending.values()))
                        pending.clear()
                        break
        except BaseException:
            # Interrupted (Ctrl-C) or broken: end the rest now rather than at
            # teardown, so nothing keeps running while pytest shuts down.
            self._abort(group)
            raise
        failed = [w for w in group if describe_exit(w) is not None]
        if failed:
            raise WorkerFailed(self._failure_text(failed, "", group))
        return [w.result.value if w.result is not None else None for w in self.workers]

    def _collect(self, worker: Worker) -> None:
        worker.process.join(KILL_GRACE)
        worker.exitcode = worker.process.exitcode
        worker.result = read_result(self._workdir, worker.index)
        worker.joined = True
        if worker.exitcode is not None:
            # Frees the sentinel fd(s) now: a test that starts and joins in a
            # loop must not run out of file descriptors before teardown.
            worker.process.close()

    def _fail_fast(self, others: list[Worker]) -> None:
        """A worker failed: end the rest now instead of waiting out the timeout."""
        self._abort(others)

    def _abort(self, workers: Sequence[Worker]) -> None:
        """End and reap ``workers``; those we had to end are marked as not at fault."""
        running = [w for w in workers if w.running()]
        self._end(workers)
        for w in workers:
            if not w.joined:
                self._collect(w)
        for w in running:
            w.stopped_early = True

    def _hang(self, hung: list[Worker], group: list[Worker], why: str, ask_locks: bool = True) -> None:
        """Collect the lock state and stacks of ``hung`` workers, end them all, raise WorkerTimeout.

        The lock state (who holds which lock, who waits for which: a
        deadlock's wait-for cycle) is asked for first, while the workers
        still run, and printed before the stacks.
        """
        __tracebackhide__ = True
        locks = deadlock.LockReport()
        children = deadlock.started_by(self._workdir, {w.name for w in hung})
        if ask_locks:
            asked = [
                deadlock.Asked(w.name, w.index, w.pid, w.process.sentinel)
                for w in hung
                if w.pid is not None and w.running()
            ]
            locks = deadlock.examine(asked + children, self._workdir)
        for w in hung:
            if w.pid is None:  # never started: nothing to ask for its stacks
                continue
            # psutil finds them all; without it, those that said they answer queries.
            w.descendants = descendant_pids(w.pid) or [c.pid for c in children if c.parent == w.name]
            w.killed_for_hang = True
            try:
                os.kill(w.pid, signal.SIGABRT)
            except ProcessLookupError:
                pass
        _wait_exit(hung, time.monotonic() + ABORT_GRACE)
        stacks = []
        for w in hung:
            raw = _read_text(stack_path(self._workdir, w.index))
            text = trim_stack(raw) or "(no stack: it did not answer SIGABRT, or had not started pytest-ipc's code yet)"
            if _QUEUE_EXIT_HANG in raw:
                text += "\n" + _QUEUE_EXIT_HINT
            stacks.append(f"--- stack of {w.label()} ---\n{text}")
        self._end(group)
        for w in group:
            if not w.joined:
                self._collect(w)
        names = ", ".join(w.label() for w in hung)
        text = "\n".join([f"{names} {why}; ended them.", *([locks.text] if locks.text else []), *stacks])
        raise WorkerTimeout(text, deadlock=locks.deadlock, lock_waits=locks.lock_waits)

    def _failure_text(self, failed: list[Worker], when: str, group: Sequence[Worker]) -> str:
        lines = []
        for w in failed:
            line = describe_exit(w) or f"{w.label()} failed"
            if when:
                line += f" {when}"
            lines.append(line)
            if w.result is not None and w.result.traceback:
                lines.append(f"--- traceback in {w.name!r} ---")
                lines.append(w.result.traceback.rstrip())
            elif w.exitcode is not None and w.exitcode < 0 and not w.killed_for_hang:
                text = trim_stack(_read_text(stack_path(self._workdir, w.index)))
                if text:
                    lines.append(f"--- stack of {w.name!r} when it crashed ---")
                    lines.append(text)
        ended = [w.name for w in group if w.stopped_early]
        if ended:
            lines.append(f"(ended the other workers, which were still running: {', '.join(ended)})")
        return "\n".join(lines)

    # -- ending -----------------------------------------------------------

    def _end(self, workers: Sequence[Worker]) -> None:
        """SIGKILL ``workers`` not collected yet, and their descendants, and reap them."""
        live = [w for w in workers if not w.joined and w.pid is not None]
        for w in live:
            if w.process.exitcode is None and w.pid is not None:
                w.descendants = w.descendants or descendant_pids(w.pid)
                kill_pids([w.pid])
        end_pids([pid for w in live for pid in w.descendants], TRACKER_GRACE)
        _wait_exit(live, time.monotonic() + KILL_GRACE)

    def close(self) -> list[str]:
        """End everything still running and clean up; return the complaints.

        A complaint names a worker that was still running or was never
        joined: at teardown that is a bug in the test.
        """
        if self._closed:
            return []
        self._closed = True
        self.gate_overdue = self._gate.close()
        complaints = []
        unjoined = [w for w in self.workers if not w.joined]
        running = [w for w in unjoined if w.process.exitcode is None]
        self._end(running)
        for w in unjoined:
            if w in running:
                complaints.append(f"{w.label()} was still running at teardown (ended it); call ipc_workers.join()")
                continue
            self._collect(w)
            cause = _cause(w)
            complaints.append(
                f"{w.label()} was never joined (exit code {w.exitcode}"
                + (f": it {cause}" if cause else "")
                + "); call ipc_workers.join()"
            )
        for w in unjoined:
            if w.joined:
                continue
            try:
                w.process.join(KILL_GRACE)  # reaped: 0 can miss a process still exiting
                w.process.close()
            except ValueError:  # still running after SIGKILL: nothing more to do
                pass
        shutil.rmtree(self._workdir, ignore_errors=True)
        return complaints


def _death_watch_pid(method: str) -> int | None:
    """The pid a new worker should die with, or None when that would change what the test means.

    The kernel's parent-death signal fires when the *thread* that forked the
    worker ends.  Under forkserver that is the fork server's main thread, and
    the fork server exits when this process dies.  Otherwise it is the thread
    calling ``start()``: only the main thread is sure to outlive the workers.
    """
    if sys.platform.startswith("linux"):
        bootstrap.libc_prctl()  # looked up here once, not in every fork worker
    if method == "forkserver":
        return 0  # the fork server: the child reads its parent's pid itself
    if threading.current_thread() is threading.main_thread():
        return os.getpid()
    return None


def _drain_ready(ready_r: Any, waiting: dict[int, Worker]) -> bool:
    """Take every index sent on the ready pipe off ``waiting``; True at EOF."""
    try:
        while ready_r.poll():
            waiting.pop(ready_r.recv(), None)
    except (EOFError, OSError):
        return True
    return False

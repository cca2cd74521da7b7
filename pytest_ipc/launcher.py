"""Starting, joining and ending worker processes: the ``ipc_workers`` fixture.

Every way a child can go wrong becomes a :class:`~pytest_ipc.WorkerError`
that names the worker and the cause.  Every wait has a deadline, a hung
worker's stacks are collected (faulthandler, on SIGABRT) before it is ended,
and whatever is still running at teardown is ended, grandchildren included
when psutil is installed.
"""

from __future__ import annotations

import os
import pickle
import shutil
import signal
import tempfile
import time
from dataclasses import dataclass, field
from multiprocessing.connection import wait
from typing import Any, Callable, Iterable, Sequence

from pytest_ipc import _child
from pytest_ipc.errors import WorkerError, WorkerFailed, WorkerStartError, WorkerTimeout

# How long a worker sent SIGABRT gets to write its stacks and die, and how
# long a SIGKILLed one gets to be reaped, before we stop waiting for it.
ABORT_GRACE = 2.0
KILL_GRACE = 5.0


@dataclass
class Worker:
    """One worker process of an :class:`IpcWorkers` group."""

    name: str
    index: int
    process: Any
    joined: bool = False
    exitcode: int | None = None
    result: dict[str, Any] | None = None
    killed_for_hang: bool = False
    # Ended by us because another worker of the group failed first: not at fault.
    stopped_early: bool = False
    descendants: list[int] = field(default_factory=list)

    @property
    def pid(self) -> int | None:
        return self.process.pid  # type: ignore[no-any-return]

    def label(self) -> str:
        return f"worker {self.name!r} (pid {self.pid})"


def describe_exit(worker: Worker) -> str | None:
    """Why ``worker`` failed, in one line, or None if it succeeded."""
    if worker.stopped_early:
        return None
    code = worker.exitcode
    result = worker.result
    if result is not None and not result.get("ok", True):
        stage = result.get("stage")
        what = f"{result['exc_type']}: {result['message']}"
        if stage == "load":
            return f"{worker.label()} could not load its target: {what}"
        if stage == "barrier":
            return f"{worker.label()} gave up at the start barrier: {what}"
        if stage == "return":
            return f"{worker.label()} returned a value that cannot be sent back: {what}"
        return f"{worker.label()} raised {what}"
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


def trim_stack(text: str) -> str:
    """A worker's faulthandler dump, without the frames below our bootstrap.

    Under fork those frames are the parent's (pytest's own call stack at the
    moment of the fork): noise that hides the worker's real stack.
    """
    out: list[str] = []
    skipping = False
    for line in text.splitlines():
        if line.startswith("Fatal Python error") or line.startswith("Extension modules:"):
            continue
        if line.startswith(("Thread ", "Current thread ")) or not line.strip():
            skipping = False
        if skipping:
            continue
        if "_child.py" in line and line.rstrip().endswith(" in bootstrap"):
            skipping = True
            continue
        out.append(line)
    return "\n".join(out).strip()


def _read_result(path: str) -> dict[str, Any] | None:
    try:
        with open(path, "rb") as f:
            return pickle.load(f)  # type: ignore[no-any-return]
    except FileNotFoundError:
        return None
    except Exception as exc:  # a torn or unloadable result is itself a failure
        return {"ok": False, "stage": "return", "exc_type": type(exc).__qualname__,
                "message": f"the result file could not be read: {exc}", "traceback": ""}


def _descendants(pid: int | None) -> list[int]:
    """PIDs of a process's children, grandchildren, ... (empty without psutil)."""
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


def _kill_pids(pids: Iterable[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def _wait_exit(workers: Sequence[Worker], deadline: float) -> None:
    """Wait until each worker has exited or ``deadline`` (monotonic) passed."""
    pending = {w.process.sentinel: w for w in workers if w.process.exitcode is None}
    while pending:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return
        for sentinel in wait(list(pending), timeout=remaining):
            pending.pop(sentinel)  # type: ignore[call-overload]


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
    if module and module != "__main__" and "<" not in qualname and getattr(target, "__self__", None) is None:
        return _child.TargetRef(module, qualname)
    return target


class IpcWorkers:
    """Starts worker processes from the test's ``multiprocessing`` context.

    ``start(target, args=..., count=N)`` starts N workers that all wait at a
    start barrier and begin together; ``join()`` waits for every worker
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
    ) -> None:
        self._ctx = ctx
        self.timeout = timeout
        self.seed = seed
        self.jitter = jitter
        self._workdir = tempfile.mkdtemp(prefix="ipc-workers-", dir=basetemp)
        self.workers: list[Worker] = []
        self._closed = False

    @property
    def start_method(self) -> str:
        return self._ctx.get_start_method()  # type: ignore[no-any-return]

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
        then released together.
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
                f"ipc_workers.start(): args must be a tuple or list, got {args!r}"
                " (for one argument write args=(x,))"
            )
        method = self.start_method
        if method != "fork":
            hint = _pickle_hint(target, method)
            if hint:
                raise WorkerStartError(hint)
        base = name or getattr(target, "__name__", "worker")
        sent_target = _target_for(target, method)
        ready_r, ready_w = self._ctx.Pipe(duplex=False)
        go = self._ctx.Event()
        new: list[Worker] = []
        try:
            for _ in range(count):
                index = len(self.workers)
                wname = f"{base}-{index}"
                spec = _child.ChildSpec(
                    name=wname, index=index, workdir=self._workdir, ready=ready_w, go=go,
                    timeout=self.timeout, seed=self.seed, jitter=self.jitter,
                )
                proc = self._ctx.Process(
                    target=_child.bootstrap, name=wname,
                    args=(spec, sent_target, tuple(args), dict(kwargs or {})),
                )
                worker = Worker(wname, index, proc)
                try:
                    proc.start()
                except Exception as exc:
                    raise WorkerStartError(self._start_failure(worker, target, exc)) from None
                self.workers.append(worker)
                new.append(worker)
            ready_w.close()
            self._await_ready(new, ready_r)
        except BaseException:
            self._abort(new)
            raise
        finally:
            ready_w.close()
            ready_r.close()
        go.set()
        return new

    def _start_failure(self, worker: Worker, target: Any, exc: BaseException) -> str:
        method = self.start_method
        return (
            f"could not start {worker.name!r} under {method!r}: {type(exc).__name__}: {exc}. "
            f"Under {method!r} the target {getattr(target, '__qualname__', target)!r} and its "
            "args are pickled to reach the child: use module-level functions and picklable "
            "arguments (multiprocessing objects such as Value, Lock, Queue and Pipe ends are "
            "fine), or the fork start method."
        )

    def _await_ready(self, new: list[Worker], ready_r: Any) -> None:
        __tracebackhide__ = True
        deadline = time.monotonic() + self.timeout
        waiting = {w.index: w for w in new}
        while waiting:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self._hang(list(waiting.values()), new, f"did not reach the start barrier within {self.timeout:g}s")
            sentinels = {w.process.sentinel: w for w in waiting.values()}
            for ready in wait([ready_r, *sentinels], timeout=remaining):
                if ready is ready_r:
                    try:
                        waiting.pop(ready_r.recv(), None)
                    except EOFError:
                        pass
                elif ready in sentinels and sentinels[ready].index in waiting:
                    dead = sentinels[ready]
                    # It may have signalled and exited at once; drain first.
                    while ready_r.poll():
                        waiting.pop(ready_r.recv(), None)
                    if dead.index in waiting:
                        self._collect(dead)
                        self._abort([w for w in new if w is not dead])
                        raise WorkerFailed(self._failure_text([dead], "before reaching the start barrier"))

    # -- joining ----------------------------------------------------------

    def join(self, timeout: float | None = None) -> list[Any]:
        """Wait for every worker started so far; return their return values in start order.

        Raises :class:`WorkerFailed` if any worker raised, exited non-zero or
        was killed (the others are then ended at once rather than waited
        for), and :class:`WorkerTimeout`, with the stacks of the workers
        still running, if they did not all finish within ``timeout`` seconds
        (default: the test's ``ipc_timeout``).
        """
        __tracebackhide__ = True
        limit = self.timeout if timeout is None else timeout
        if isinstance(limit, bool) or not isinstance(limit, (int, float)) or not limit > 0:
            raise WorkerError(f"ipc_workers.join(): timeout must be a positive number of seconds, got {timeout!r}")
        deadline = time.monotonic() + limit
        pending = {w.process.sentinel: w for w in self.workers if not w.joined}
        while pending:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                still = list(pending.values())
                self._hang(still, self.workers, f"still running after the {limit:g}s timeout")
            for sentinel in wait(list(pending), timeout=remaining):
                worker = pending.pop(sentinel)  # type: ignore[call-overload]
                self._collect(worker)
                if describe_exit(worker) is not None:
                    self._fail_fast(list(pending.values()))
                    pending.clear()
                    break
        failed = [w for w in self.workers if describe_exit(w) is not None]
        if failed:
            raise WorkerFailed(self._failure_text(failed, ""))
        return [(w.result or {}).get("value") for w in self.workers]

    def _collect(self, worker: Worker) -> None:
        worker.process.join(KILL_GRACE)
        worker.exitcode = worker.process.exitcode
        worker.result = _read_result(_child.result_path(self._workdir, worker.index))
        worker.joined = True

    def _fail_fast(self, others: list[Worker]) -> None:
        """A worker failed: end the rest now instead of waiting out the timeout."""
        self._abort(others)

    def _abort(self, workers: Sequence[Worker]) -> None:
        """End and reap ``workers``; those we had to end are marked as not at fault."""
        running = [w for w in workers if not w.joined and w.process.exitcode is None]
        self._end(workers)
        for w in workers:
            if not w.joined:
                self._collect(w)
        for w in running:
            w.stopped_early = True

    def _hang(self, hung: list[Worker], group: list[Worker], why: str) -> None:
        """Collect the stacks of ``hung`` workers, end them all, raise WorkerTimeout."""
        __tracebackhide__ = True
        for w in hung:
            w.descendants = _descendants(w.pid)
            w.killed_for_hang = True
            try:
                os.kill(w.pid, signal.SIGABRT)  # type: ignore[arg-type]
            except ProcessLookupError:
                pass
        _wait_exit(hung, time.monotonic() + ABORT_GRACE)
        stacks = []
        for w in hung:
            text = trim_stack(_read_text(_child.stack_path(self._workdir, w.index)))
            stacks.append(f"--- stack of {w.label()} ---\n{text or '(no stack: it did not answer SIGABRT)'}")
        self._end(group)
        for w in group:
            if not w.joined:
                self._collect(w)
        names = ", ".join(w.label() for w in hung)
        raise WorkerTimeout(f"{names} {why}; ended them.\n" + "\n".join(stacks))

    def _failure_text(self, failed: list[Worker], when: str) -> str:
        lines = []
        for w in failed:
            line = describe_exit(w) or f"{w.label()} failed"
            if when:
                line += f" {when}"
            lines.append(line)
            result = w.result or {}
            if result.get("traceback"):
                lines.append(f"--- traceback in {w.name!r} ---")
                lines.append(result["traceback"].rstrip())
            elif w.exitcode is not None and w.exitcode < 0 and not w.killed_for_hang:
                text = trim_stack(_read_text(_child.stack_path(self._workdir, w.index)))
                if text:
                    lines.append(f"--- stack of {w.name!r} when it crashed ---")
                    lines.append(text)
        ended = [w.name for w in self.workers if w.stopped_early]
        if ended:
            lines.append(f"(ended the other workers, which were still running: {', '.join(ended)})")
        return "\n".join(lines)

    # -- ending -----------------------------------------------------------

    def _end(self, workers: Sequence[Worker]) -> None:
        """SIGKILL ``workers`` and their descendants and reap them."""
        for w in workers:
            if w.process.exitcode is None and w.pid is not None:
                w.descendants = w.descendants or _descendants(w.pid)
                _kill_pids([w.pid])
            _kill_pids(w.descendants)
        started = [w for w in workers if w.pid is not None]
        _wait_exit(started, time.monotonic() + KILL_GRACE)

    def close(self) -> list[str]:
        """End everything still running and clean up; return the complaints.

        A complaint names a worker that was still running or was never
        joined: at teardown that is a bug in the test.
        """
        if self._closed:
            return []
        self._closed = True
        complaints = []
        running = [w for w in self.workers if w.process.exitcode is None]
        for w in self.workers:
            if w.joined:
                continue
            if w.process.exitcode is None:
                complaints.append(f"{w.label()} was still running at teardown (ended it); call ipc_workers.join()")
            else:
                complaints.append(f"{w.label()} was never joined (exit code {w.process.exitcode}); call ipc_workers.join()")
        self._end(running)
        for w in self.workers:
            try:
                w.process.join(0)
                w.process.close()
            except ValueError:  # still running after SIGKILL: nothing more to do
                pass
        shutil.rmtree(self._workdir, ignore_errors=True)
        return complaints

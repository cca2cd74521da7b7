"""The entry point of every ``ipc_workers`` worker: load, wait at the barrier, run, report.

Standard library only: under spawn and forkserver every worker imports this
module afresh.  What it reports goes through :mod:`.protocol`.
"""

from __future__ import annotations

import faulthandler
import functools
import os
import signal
import sys
import time
from collections.abc import Callable
from typing import Any

from pytest_ipc._worker import lockstate
from pytest_ipc._worker.protocol import (
    ChildResult,
    ChildSpec,
    Stage,
    TargetRef,
    lock_answers_path,
    lockstate_path,
    read_gate_deadline,
    stack_path,
    write_result,
)

try:
    import resource
except ImportError:  # pragma: no cover - not on POSIX
    resource = None  # type: ignore[assignment]  # the module or nothing


def bootstrap(spec: ChildSpec, target: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    """The ``Process`` target of every worker: load, wait at the barrier, run, report."""
    _prepare_process(spec)
    try:
        func = target.resolve() if isinstance(target, TargetRef) else target
    except BaseException as exc:
        write_result(spec.workdir, spec.index, error_result(Stage.LOAD, exc, target))
        raise SystemExit(1) from None

    spec.ready.send(spec.index)
    spec.ready.close()
    if not _pass_barrier(spec.go, spec.timeout, spec.gate_deadline, spec.workdir):
        write_result(
            spec.workdir,
            spec.index,
            ChildResult(
                Stage.BARRIER,
                exc_type="TimeoutError",
                message=f"the start barrier was not released within {spec.timeout:g}s",
            ),
        )
        raise SystemExit(1)

    stop_code_points: Callable[[], None] | None = None
    if spec.trace_dir:
        from pytest_ipc._worker import amplify, trace

        amplify.install()
        trace.start(spec.trace_dir, spec.name)
        trace.trace_raw((*args, *kwargs.values()))
    if spec.jitter > 0:
        from pytest_ipc._worker import amplify

        amplify.activate(spec.seed, spec.index, spec.jitter, (func, *args, *kwargs.values()))
        stop_code_points = amplify.stop_code_points

    try:
        value = func(*args, **kwargs)
    except SystemExit:
        raise
    except BaseException as exc:
        write_result(spec.workdir, spec.index, error_result(Stage.RUN, exc))
        raise SystemExit(1) from None
    finally:
        if stop_code_points is not None:
            # The worker's own code is done: what runs from here on (writing
            # the result, multiprocessing's exit handlers) is ours and the
            # standard library's, and before 3.12 a trace function would slow
            # all of it.  The IPC points stay, for queues flushed at exit.
            stop_code_points()
        if spec.trace_dir:
            trace.stop()

    if value is not None:
        try:
            write_result(spec.workdir, spec.index, ChildResult(Stage.DONE, value))
        except Exception as exc:
            write_result(spec.workdir, spec.index, error_result(Stage.RETURN, exc))
            raise SystemExit(1) from None


def error_result(stage: Stage, exc: BaseException, target: Any = None) -> ChildResult:
    """The result of a worker that failed at ``stage`` with ``exc``."""
    import traceback  # only a failing worker pays for it

    tb = exc.__traceback__
    if stage is Stage.RUN and tb is not None and tb.tb_next is not None:
        tb = tb.tb_next  # start at the target, not at bootstrap()
    if stage is Stage.LOAD:
        text = _load_traceback(exc, target)
    else:
        text = "".join(traceback.format_exception(type(exc), exc, tb))
    return ChildResult(stage, exc_type=type(exc).__qualname__, message=str(exc), traceback=text)


def _is_loader_frame(filename: str) -> bool:
    return (
        filename.startswith("<frozen ")
        or filename == __file__
        or filename.endswith(os.path.join("importlib", "__init__.py"))
    )


def _load_traceback(exc: BaseException, target: Any) -> str:
    """The traceback of a failed import of the target, without the import machinery."""
    import traceback

    module = getattr(target, "module", "")
    missing = getattr(exc, "name", None)
    if isinstance(exc, ModuleNotFoundError) and missing and (module + ".").startswith(missing + "."):
        return ""  # the module itself is not there: the message says all
    te = traceback.TracebackException.from_exception(exc)
    te.stack = traceback.StackSummary.from_list([f for f in te.stack if not _is_loader_frame(f.filename)])
    return "".join(te.format())


# prctl(2) option: the signal the kernel sends a process when its parent thread ends.
_PR_SET_PDEATHSIG = 1


@functools.cache
def libc_prctl() -> Callable[..., int] | None:
    """libc's prctl, looked up once: in the parent, so that fork workers inherit it."""
    try:
        import ctypes

        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):  # pragma: no cover - no libc prctl
        return None


def die_with_parent(parent_pid: int) -> None:
    """Have the kernel SIGKILL this worker when the process that started it dies (Linux).

    The parent normally ends its workers itself; this covers a parent that
    cannot, because it was SIGKILLed or crashed (a pytest-xdist worker that
    dies mid-test, say).  An orphaned worker would otherwise run on, or hang
    on a lock, forever.  ``parent_pid`` 0 stands for the fork server.
    """
    if not sys.platform.startswith("linux"):
        return
    from_fork_server = not parent_pid
    parent_pid = parent_pid or os.getppid()
    prctl = libc_prctl()
    if prctl is None or prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        return
    if os.getppid() != parent_pid:
        # The parent died before prctl took effect: the signal will never come.
        os._exit(1)
    if from_fork_server:
        _let_fork_server_go()


def _let_fork_server_go() -> None:
    """Close this worker's copy of the fork server's keep-alive pipe.

    The fork server exits when the last process holding that pipe's write
    end does, and it hands a copy to every child it forks; a hung worker
    would keep it, and so itself, alive after pytest died.  Without the copy
    the fork server exits with pytest and the kernel then ends this worker.
    (The copy is only needed to reuse the fork server: a worker that starts
    its own forkserver children starts a server of its own anyway.)
    """
    from multiprocessing import forkserver

    server = getattr(forkserver, "_forkserver", None)
    fd = getattr(server, "_forkserver_alive_fd", None)
    if isinstance(fd, int):
        try:
            os.close(fd)
        except OSError:  # pragma: no cover - already closed
            pass
        server._forkserver_alive_fd = None  # type: ignore[union-attr]  # a private attribute, seen set above


def _prepare_process(spec: ChildSpec) -> None:
    if spec.parent_pid is not None:
        die_with_parent(spec.parent_pid)
    if spec.shm_log is not None:
        from pytest_ipc._worker import shmlog

        shmlog.follow(*spec.shm_log)
    if resource is not None:
        # A hung worker is ended with SIGABRT so that faulthandler writes its
        # stacks; that must not leave a core file in the user's directory.
        try:
            resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        except (ValueError, OSError):  # pragma: no cover - hard limit lower than 0 is impossible
            pass
    # Kept open for the life of the process: faulthandler writes to its fd
    # from a signal handler, on SIGABRT (a hang) and on a crash.
    stack_file = open(stack_path(spec.workdir, spec.index), "w")
    faulthandler.enable(file=stack_file, all_threads=True)
    # Which locks it holds and waits for, told the parent at a hang (a deadlock report).
    lockstate.install()
    lockstate.answer_queries(lockstate_path(spec.workdir, spec.index), lock_answers_path(spec.workdir))
    lockstate.follow_children(spec.workdir, spec.name)


def _pass_barrier(go: Any, timeout: float, gate_deadline: float | None = None, workdir: str = "") -> bool:
    """Wait for the parent's go byte: one byte per worker on a shared pipe.

    Not a multiprocessing Event: a worker killed while waiting on one leaves
    its Condition counting a sleeper that never wakes, and the parent's
    ``set()`` then blocks forever.  A byte nobody reads harms no one.

    At an ``ipc_race`` run's gate (``gate_deadline`` given) a worker that is
    still held at the deadline, as the parent last moved it, goes on by
    itself: the parent reports the gate that never opened (see
    :mod:`pytest_ipc.gate`).
    """
    try:
        if gate_deadline is not None:
            while not go.poll(max(0.0, gate_deadline - time.monotonic())):
                moved = read_gate_deadline(workdir)
                if moved is None or moved <= gate_deadline:
                    return True
                gate_deadline = moved
        elif not go.poll(timeout):
            return False
        return os.read(go.fileno(), 1) == b"g"  # b"" at EOF: the parent gave up
    finally:
        go.close()

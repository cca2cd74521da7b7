"""What runs inside a worker process started by ``ipc_workers``.

This module must stay importable without pytest: under spawn and forkserver
every worker imports it afresh, and importing pytest there would cost more
than the work most targets do.  Everything it tells the parent goes through
files in the worker group's private directory, never through a pipe the
parent might not be reading (a large traceback in a full pipe would hang the
child at exit).
"""

from __future__ import annotations

import faulthandler
import functools
import importlib
import os
import pickle
import signal
import sys
import traceback
from dataclasses import dataclass
from typing import Any, Callable

try:
    import resource
except ImportError:  # pragma: no cover - not on POSIX
    resource = None  # type: ignore[assignment]


@dataclass(frozen=True)
class TargetRef:
    """A module-level function named by reference.

    Under spawn and forkserver the child then imports the target itself,
    inside :func:`bootstrap`, so an import failure is reported as such
    instead of dying in multiprocessing's own unpickling before any of our
    code runs.
    """

    module: str
    qualname: str

    def resolve(self) -> Callable[..., Any]:
        obj: Any = importlib.import_module(self.module)
        for part in self.qualname.split("."):
            obj = getattr(obj, part)
        return obj  # type: ignore[no-any-return]


@dataclass(frozen=True)
class ChildSpec:
    """Everything a worker needs besides its target and arguments."""

    name: str
    index: int
    workdir: str
    ready: Any  # the write end of the group's ready pipe (a Connection)
    go: Any  # the read end of the group's go pipe (a Connection): the start barrier
    timeout: float
    seed: int
    jitter: float
    # Whether the worker should die with its parent (see _die_with_parent), and
    # the parent's pid, or 0 for "whichever process forked me" (the fork server).
    die_with_parent: bool = False
    parent_pid: int = 0
    # Where to note the SharedMemory segments this worker creates, and the
    # test process's pid (see _shmlog); None outside a leak-checked test.
    shm_log: tuple[str, int] | None = None

    def __setstate__(self, state: dict[str, Any]) -> None:
        # Unpickled (spawn, forkserver) before the target's arguments: patch
        # now, so that a Queue among them binds the amplified pipe methods.
        self.__dict__.update(state)
        if self.jitter > 0:
            from pytest_ipc import _amplify

            _amplify.install()


def stack_path(workdir: str, index: int) -> str:
    return os.path.join(workdir, f"worker-{index}.stack")


def result_path(workdir: str, index: int) -> str:
    return os.path.join(workdir, f"worker-{index}.result")


def write_result(workdir: str, index: int, result: dict[str, Any]) -> None:
    """Write ``result`` so that the parent sees all of it or nothing."""
    path = result_path(workdir, index)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        pickle.dump(result, f)
    os.replace(tmp, path)


def _is_loader_frame(filename: str) -> bool:
    return (
        filename.startswith("<frozen ")
        or os.path.basename(filename) == "_child.py"
        or filename.endswith(os.path.join("importlib", "__init__.py"))
    )


def _load_traceback(exc: BaseException, target: Any) -> str:
    """The traceback of a failed import of the target, without the import machinery."""
    module = getattr(target, "module", "")
    missing = getattr(exc, "name", None)
    if isinstance(exc, ModuleNotFoundError) and missing and (module + ".").startswith(missing + "."):
        return ""  # the module itself is not there: the message says all
    te = traceback.TracebackException.from_exception(exc)
    te.stack = traceback.StackSummary.from_list([f for f in te.stack if not _is_loader_frame(f.filename)])
    return "".join(te.format())


def _error_result(stage: str, exc: BaseException, target: Any = None) -> dict[str, Any]:
    tb = exc.__traceback__
    if stage == "run" and tb is not None and tb.tb_next is not None:
        tb = tb.tb_next  # start at the target, not at bootstrap()
    if stage == "load":
        text = _load_traceback(exc, target)
    else:
        text = "".join(traceback.format_exception(type(exc), exc, tb))
    return {
        "ok": False,
        "stage": stage,
        "exc_type": type(exc).__qualname__,
        "message": str(exc),
        "traceback": text,
    }


# prctl(2) option: the signal the kernel sends a process when its parent thread ends.
_PR_SET_PDEATHSIG = 1


@functools.lru_cache(maxsize=None)
def _libc_prctl() -> Callable[..., int] | None:
    """libc's prctl, looked up once: in the parent, so that fork workers inherit it."""
    try:
        import ctypes

        return ctypes.CDLL(None, use_errno=True).prctl  # type: ignore[no-any-return]
    except (OSError, AttributeError):  # pragma: no cover - no libc prctl
        return None


def _die_with_parent(parent_pid: int) -> None:
    """Have the kernel SIGKILL this worker when the process that started it dies (Linux).

    The parent normally ends its workers itself; this covers a parent that
    cannot, because it was SIGKILLed or crashed (a pytest-xdist worker that
    dies mid-test, say).  An orphaned worker would otherwise run on, or hang
    on a lock, forever.
    """
    if not sys.platform.startswith("linux"):
        return
    from_fork_server = not parent_pid
    parent_pid = parent_pid or os.getppid()
    prctl = _libc_prctl()
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
        server._forkserver_alive_fd = None  # type: ignore[union-attr]


def _prepare_process(spec: ChildSpec) -> None:
    if spec.die_with_parent:
        _die_with_parent(spec.parent_pid)
    if spec.shm_log is not None:
        from pytest_ipc import _shmlog

        _shmlog.follow(*spec.shm_log)
    if resource is not None:
        # A hung worker is ended with SIGABRT so that faulthandler writes its
        # stacks; that must not leave a core file in the user's directory.
        try:
            resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        except (ValueError, OSError):  # pragma: no cover - hard limit lower than 0 is impossible
            pass
    # Kept open for the life of the process: faulthandler writes to its fd
    # from a signal handler, on SIGABRT (a hang) and on a crash.
    stack_file = open(stack_path(spec.workdir, spec.index), "w")  # noqa: SIM115
    faulthandler.enable(file=stack_file, all_threads=True)


def _pass_barrier(go: Any, timeout: float) -> bool:
    """Wait for the parent's go byte: one byte per worker on a shared pipe.

    Not a multiprocessing Event: a worker killed while waiting on one leaves
    its Condition counting a sleeper that never wakes, and the parent's
    ``set()`` then blocks forever.  A byte nobody reads harms no one.
    """
    try:
        if not go.poll(timeout):
            return False
        return os.read(go.fileno(), 1) == b"g"  # b"" at EOF: the parent gave up
    finally:
        go.close()


def bootstrap(spec: ChildSpec, target: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    """The ``Process`` target of every worker: load, wait at the barrier, run, report."""
    _prepare_process(spec)
    try:
        func = target.resolve() if isinstance(target, TargetRef) else target
    except BaseException as exc:
        write_result(spec.workdir, spec.index, _error_result("load", exc, target))
        raise SystemExit(1) from None

    spec.ready.send(spec.index)
    spec.ready.close()
    if not _pass_barrier(spec.go, spec.timeout):
        write_result(
            spec.workdir,
            spec.index,
            {"ok": False, "stage": "barrier", "exc_type": "TimeoutError",
             "message": f"the start barrier was not released within {spec.timeout:g}s",
             "traceback": ""},
        )
        raise SystemExit(1)

    if spec.jitter > 0:
        from pytest_ipc import _amplify

        _amplify.activate(spec.seed, spec.index, spec.jitter, (func, *args, *kwargs.values()))

    try:
        value = func(*args, **kwargs)
    except SystemExit:
        raise
    except BaseException as exc:
        write_result(spec.workdir, spec.index, _error_result("run", exc))
        raise SystemExit(1) from None
    finally:
        if spec.jitter > 0:
            # The worker's own code is done: what runs from here on (writing
            # the result, multiprocessing's exit handlers) is ours and the
            # standard library's, and before 3.12 a trace function would slow
            # all of it.  The IPC points stay, for queues flushed at exit.
            _amplify.stop_code_points()

    if value is not None:
        try:
            write_result(spec.workdir, spec.index, {"ok": True, "value": value})
        except Exception as exc:
            write_result(spec.workdir, spec.index, _error_result("return", exc))
            raise SystemExit(1) from None

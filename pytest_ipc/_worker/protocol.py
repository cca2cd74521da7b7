"""What the test process and an ``ipc_workers`` worker tell each other.

In: a :class:`ChildSpec` (name, index, the group's directory, the start
barrier's pipes, the run's seed and amplification) and the target, by
reference (:class:`TargetRef`) where it can be imported by name.

Out: a :class:`ChildResult`, pickled into a file of the group's private
directory, never sent through a pipe that the parent might not be reading (a
large traceback in a full pipe would hang the child at exit); and the
worker's stacks, written by faulthandler into a file of its own on SIGABRT
(a hang) or a crash; and, asked at a hang, its lock state (see
:mod:`.lockstate`), written into a file of its own with a byte into the
group's answer FIFO to say it is complete.

Standard library only.  No ``dataclasses`` here: importing it costs a spawn
worker about 10-20 ms (it brings ``inspect``), more than the work of most
targets, so the result is a ``NamedTuple`` and the spec a plain class.
"""

from __future__ import annotations

import enum
import importlib
import os
import pickle
from collections.abc import Callable
from typing import Any, NamedTuple


class TargetRef(NamedTuple):
    """A module-level function named by reference.

    Under spawn and forkserver the child then imports the target itself,
    inside the bootstrap, so an import failure is reported as such instead
    of dying in multiprocessing's own unpickling before any of our code runs.
    """

    module: str
    qualname: str

    def resolve(self) -> Callable[..., Any]:
        obj: Any = importlib.import_module(self.module)
        for part in self.qualname.split("."):
            obj = getattr(obj, part)
        return obj  # type: ignore[no-any-return]  # whatever the module holds under that name


class ChildSpec:
    """Everything a worker needs besides its target and arguments."""

    def __init__(
        self,
        *,
        name: str,
        index: int,
        workdir: str,
        ready: Any,
        go: Any,
        timeout: float,
        seed: int,
        jitter: float,
        parent_pid: int | None = None,
        shm_log: tuple[str, int] | None = None,
        gate_deadline: float | None = None,
        trace_dir: str | None = None,
    ) -> None:
        self.name = name
        self.index = index
        self.workdir = workdir
        self.ready = ready  # the write end of the group's ready pipe (a Connection)
        self.go = go  # the read end of the start barrier's pipe (a Connection)
        self.timeout = timeout
        self.seed = seed
        self.jitter = jitter
        # The pid the worker dies with (see bootstrap.die_with_parent): 0 for
        # "whichever process forked me" (the fork server), None for none.
        self.parent_pid = parent_pid
        # Where to note the SharedMemory segments this worker creates, and the
        # test process's pid (see shmlog); None outside a leak-checked test.
        self.shm_log = shm_log
        # In an ipc_race run, until when (time.monotonic(), the same clock in
        # every process) the worker waits at the run's one start gate before
        # it lets itself go, unless the parent has moved that deadline on
        # since (each start() does: see write_gate_deadline); None: it fails
        # after ``timeout`` at its barrier.
        self.gate_deadline = gate_deadline
        # In a diagnostic run (see pytest_ipc.race.conflicts), where the
        # worker writes the trace of its accesses; None: it is not traced.
        self.trace_dir = trace_dir

    def __setstate__(self, state: dict[str, Any]) -> None:
        # Unpickled (spawn, forkserver) before the target's arguments: patch
        # now, so that a Queue among them binds the amplified pipe methods.
        self.__dict__.update(state)
        from pytest_ipc._worker import lockstate

        lockstate.install()  # before a lock among them is unpickled: its methods are bound then
        if self.jitter > 0 or self.trace_dir:
            from pytest_ipc._worker import amplify

            amplify.install()


class Stage(enum.Enum):
    """How far a worker got: where it failed, or ``DONE``."""

    LOAD = "load"  # finding or importing its target
    BARRIER = "barrier"  # waiting at the start barrier (or gate)
    RUN = "run"  # running its target, which raised
    RETURN = "return"  # sending back the value its target returned
    DONE = "done"  # its target returned, and the value is here


class ChildResult(NamedTuple):
    """What a worker reports: its stage, and the value or the exception."""

    stage: Stage
    value: Any = None
    exc_type: str = ""
    message: str = ""
    traceback: str = ""

    @property
    def ok(self) -> bool:
        return self.stage is Stage.DONE

    def error(self) -> str:
        """``ExceptionType: message``."""
        return f"{self.exc_type}: {self.message}"


def stack_path(workdir: str, index: int) -> str:
    return os.path.join(workdir, f"worker-{index}.stack")


def result_path(workdir: str, index: int) -> str:
    return os.path.join(workdir, f"worker-{index}.result")


def lockstate_path(workdir: str, index: int | str) -> str:
    """Where a worker (by index), or a process a worker started (``child-<pid>``), writes its lock state."""
    return os.path.join(workdir, f"worker-{index}.locks")


def child_answers_path(workdir: str, pid: int) -> str:
    """Written by a process that a worker started, once it answers lock-state queries: its name, its parent's."""
    return os.path.join(workdir, f"child-{pid}.answers")


def lock_answers_path(workdir: str) -> str:
    """The FIFO that the parent opens while it waits for the hung workers' lock state."""
    return os.path.join(workdir, "lock-answers")


def gate_deadline_path(workdir: str) -> str:
    return os.path.join(workdir, "gate-deadline")


def write_gate_deadline(workdir: str, deadline: float) -> None:
    """Move the start gate's deadline (``time.monotonic()``) for the workers held there."""
    path = gate_deadline_path(workdir)
    with open(path + ".tmp", "w") as f:
        f.write(repr(deadline))
    os.replace(path + ".tmp", path)


def read_gate_deadline(workdir: str) -> float | None:
    """The start gate's deadline as the parent last moved it; None if it wrote none."""
    try:
        with open(gate_deadline_path(workdir)) as f:
            return float(f.read())
    except (OSError, ValueError):
        return None


def write_result(workdir: str, index: int, result: ChildResult) -> None:
    """Write ``result`` so that the parent sees all of it or nothing."""
    path = result_path(workdir, index)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        pickle.dump(result, f)
    os.replace(tmp, path)


def read_result(workdir: str, index: int) -> ChildResult | None:
    """The worker's result; None when it wrote none (it returned None, or died first)."""
    try:
        with open(result_path(workdir, index), "rb") as f:
            result = pickle.load(f)
    except FileNotFoundError:
        return None
    except Exception as exc:  # a torn or unloadable result is itself a failure
        return ChildResult(
            Stage.RETURN, exc_type=type(exc).__qualname__, message=f"the result file could not be read: {exc}"
        )
    if not isinstance(result, ChildResult):
        return ChildResult(
            Stage.RETURN,
            exc_type="TypeError",
            message=f"the result file held {type(result).__name__}, not a ChildResult",
        )
    return result

"""The exceptions pytest-ipc raises in the test process.

Worker errors are ordinary exceptions raised by ``ipc_workers`` in the test's
own code, so ``pytest.raises(pytest_ipc.WorkerFailed)`` works.  The race
verdict subclasses pytest's own failure outcome with ``pytrace=False``: the
report then shows the histogram, not a traceback from inside the plugin.
"""

from __future__ import annotations

from typing import Any

import pytest

# The class behind pytest.fail(): a failure that pytest reports without a
# traceback from inside the plugin when raised with pytrace=False.
Failed = pytest.fail.Exception

__all__ = [
    "ForkWarning",
    "LeakError",
    "LeakWarning",
    "RaceDetected",
    "RunsFailed",
    "Terminated",
    "UnexpectedOutcome",
    "WorkerError",
    "WorkerFailed",
    "WorkerStartError",
    "WorkerTimeout",
]


class _PlainFailure(Failed):  # type: ignore[misc,valid-type]  # a class held by pytest.fail
    """A failure reported as its message alone: no traceback from inside the plugin."""

    def __init__(self, msg: str) -> None:
        super().__init__(msg, pytrace=False)


class WorkerError(Exception):
    """Something went wrong in a worker started by ``ipc_workers``."""


class WorkerStartError(WorkerError):
    """A worker could not be started (most often: its target cannot be pickled)."""


class WorkerFailed(WorkerError):
    """A worker raised, exited non-zero or was killed by a signal."""


class WorkerTimeout(WorkerError):
    """Workers were still running when the timeout ran out (a hang).

    Its message names the hung workers, then, when they were blocked on
    ``multiprocessing`` locks (``Lock``, ``RLock``, ``BoundedSemaphore(1)``),
    who holds which and who waits for which (a deadlock's wait-for cycle
    first), then each worker's stack.  The lock facts are also data, for
    reports (plain values: lists, dicts, strings, ints and None):

    ``deadlock``
        The workers of the wait-for cycle, in its order, each waiting for a
        lock that the next one holds; empty when there is no cycle::

            [{"worker": "left-0", "pid": 4711,
              "holds": [{"lock": "lock_a", "kind": "Lock", "created": "test_x.py:12",
                         "taken_at": "test_x.py:5 in left"}],
              "waits_for": {"lock": "lock_b", "kind": "Lock", "created": "test_x.py:13",
                            "at": "test_x.py:6 in left", "thread": "MainThread",
                            "held_by": "right-1"}},
             ...]

        ``lock`` is the variable the lock was assigned to where it was made
        (``"shared_value's lock"`` for a fixture's, None when unknown);
        ``created`` where it was made (``"conftest.py:8 in the locks
        fixture"``, ``"the shared_value fixture"``, None when unknown); the
        lines are the user's (the first frame outside ``multiprocessing``
        and pytest-ipc), paths relative to the working directory.
    ``lock_waits``
        Every hung worker's wait for a lock, in the cycle or not, as
        ``{"worker", "pid", "waits_for"}`` with ``waits_for`` as above;
        ``held_by`` is a worker's name, ``"the test process"``, or None
        when no process that answered holds it.
    """

    def __init__(
        self,
        msg: str,
        *,
        deadlock: list[dict[str, Any]] | None = None,
        lock_waits: list[dict[str, Any]] | None = None,
    ) -> None:
        super().__init__(msg)
        self.deadlock: list[dict[str, Any]] = list(deadlock or ())
        self.lock_waits: list[dict[str, Any]] = list(lock_waits or ())


class RunsFailed(_PlainFailure):
    """Every run of an ``ipc_race`` test failed: a plain bug, not a race."""


class UnexpectedOutcome(_PlainFailure):
    """Every run of an ``ipc_race`` test agreed, on an outcome outside ``expect``."""


class RaceDetected(_PlainFailure):
    """Runs of an ``ipc_race`` test disagreed: their outcomes differ, or some failed."""


class LeakError(_PlainFailure):
    """A pytest-ipc test left a process, a SharedMemory segment or a Pipe behind (see leaks.py)."""


class LeakWarning(UserWarning):
    """What :class:`LeakError` reports, as a warning (``--ipc-leak-check=warn``)."""


class ForkWarning(DeprecationWarning):
    """pytest-ipc forked workers while the test process ran other threads (Python 3.12+).

    Given once per session in place of Python's own ``DeprecationWarning``
    at each of those forks (see forkwarn.py).  A ``DeprecationWarning``, so
    the filters that silence or show Python's warning do the same to it.
    """


class Terminated(KeyboardInterrupt):
    """pytest received SIGTERM while a pytest-ipc test ran.

    Raised from the signal handler so that the session stops the way it does
    on Ctrl-C: fixtures are torn down (workers ended, shared memory
    released) and the summary printed, instead of the process vanishing and
    orphaning its workers.
    """


# Report the public name users import, not the private module.
for _cls in (
    WorkerError,
    WorkerStartError,
    WorkerFailed,
    WorkerTimeout,
    RunsFailed,
    UnexpectedOutcome,
    RaceDetected,
    LeakError,
    LeakWarning,
    ForkWarning,
    Terminated,
):
    _cls.__module__ = "pytest_ipc"
del _cls

"""The exceptions pytest-ipc raises in the test process.

Worker errors are ordinary exceptions raised by ``ipc_workers`` in the test's
own code, so ``pytest.raises(pytest_ipc.WorkerFailed)`` works.  The race
verdict subclasses pytest's own failure outcome with ``pytrace=False``: the
report then shows the histogram, not a traceback from inside the plugin.
"""

from __future__ import annotations

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


class WorkerError(Exception):
    """Something went wrong in a worker started by ``ipc_workers``."""


class WorkerStartError(WorkerError):
    """A worker could not be started (most often: its target cannot be pickled)."""


class WorkerFailed(WorkerError):
    """A worker raised, exited non-zero or was killed by a signal."""


class WorkerTimeout(WorkerError):
    """Workers were still running when the timeout ran out (a hang)."""


class RunsFailed(Failed):  # type: ignore[misc,valid-type]  # a class held by pytest.fail
    """Every run of an ``ipc_race`` test failed: a plain bug, not a race."""

    def __init__(self, msg: str) -> None:
        super().__init__(msg, pytrace=False)


class UnexpectedOutcome(Failed):  # type: ignore[misc,valid-type]  # a class held by pytest.fail
    """Every run of an ``ipc_race`` test agreed, on an outcome outside ``expect``."""

    def __init__(self, msg: str) -> None:
        super().__init__(msg, pytrace=False)


class RaceDetected(Failed):  # type: ignore[misc,valid-type]  # a class held by pytest.fail
    """Runs of an ``ipc_race`` test disagreed: their outcomes differ, or some failed."""

    def __init__(self, msg: str) -> None:
        super().__init__(msg, pytrace=False)


class LeakError(Failed):  # type: ignore[misc,valid-type]  # a class held by pytest.fail
    """A pytest-ipc test left a process, a SharedMemory segment or a Pipe behind (see leaks.py)."""

    def __init__(self, msg: str) -> None:
        super().__init__(msg, pytrace=False)


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

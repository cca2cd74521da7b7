"""Python 3.12+'s fork warning: one ``pytest_ipc.ForkWarning`` per session for pytest-ipc's own forks.

Each test runs a real pytest session in a subprocess whose test process
keeps a thread alive while ``ipc_workers`` and ``ipc_manager`` fork, and
counts what the user sees.
"""

from __future__ import annotations

import re
import sys

import pytest
from sessions import run

pytestmark = pytest.mark.skipif(
    sys.version_info < (3, 12), reason="os.fork() warns in a multi-threaded process from 3.12"
)

THREADED_SESSION = """
import threading

import pytest


def give(x):
    return x


@pytest.fixture(scope="session", autouse=True)
def held_open():
    stop = threading.Event()
    thread = threading.Thread(target=stop.wait, name="held-open")
    thread.start()
    yield
    stop.set()
    thread.join()


def test_workers(ipc_workers):
    ipc_workers.start(give, args=(1,), count=3)
    assert ipc_workers.join() == [1, 1, 1]


def test_more_workers(ipc_workers):
    for i in range(3):
        ipc_workers.start(give, args=(i,))
    assert ipc_workers.join() == [0, 1, 2]


@pytest.mark.ipc_race(runs=5)
def test_race(ipc_workers, ipc_outcome):
    ipc_workers.start(give, args=(2,), count=2)
    ipc_outcome.record(tuple(ipc_workers.join()))


def test_manager(ipc_manager):
    assert ipc_manager.dict(n=1)["n"] == 1
"""

# Python's own warning as pytest shows a warning (or an error), with a pid:
# it never shows for pytest-ipc's forks.
PYTHON_FORK_WARNING = re.compile(r"DeprecationWarning: This process \(pid=\d+\) is multi-threaded")


def _run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    """The threaded session, under fork."""
    pytester.makepyfile(test_threaded=THREADED_SESSION)
    return run(pytester, "--ipc-start-method=fork", *args, timeout=120, cache=False)


def test_forks_with_a_thread_alive_give_one_warning_naming_the_thread(pytester: pytest.Pytester) -> None:
    """Twenty-two forks (workers, race runs, a Manager) with a thread alive: one ForkWarning, no storm."""
    result = _run(pytester)
    result.assert_outcomes(passed=4, warnings=1)
    out = result.stdout.str()
    assert PYTHON_FORK_WARNING.findall(out) == []
    assert out.count("ForkWarning") == 1
    result.stdout.fnmatch_lines(
        [
            "*warnings summary*",
            "test_threaded.py::test_workers",
            "*test_threaded.py:*: ForkWarning: pytest-ipc started worker processes by fork while this process "
            "ran other threads (*'held-open'*). A fork child gets a copy of the forking thread only*"
            " Use the forkserver or spawn start method (--ipc-start-method=forkserver, or the ini key "
            "ipc_start_method), or stop the threads before the test starts workers.",
            "    ipc_workers.start(give, args=(1,), count=3)",
        ]
    )


def test_a_filter_that_ignores_pythons_fork_warning_ignores_the_forkwarning_too(pytester: pytest.Pytester) -> None:
    """-W ignore::DeprecationWarning: nothing about forks is shown."""
    result = _run(pytester, "-W", "ignore::DeprecationWarning")
    result.assert_outcomes(passed=4)
    result.stdout.no_fnmatch_line("*ForkWarning*")
    result.stdout.no_fnmatch_line("*multi-threaded*")


def test_a_filter_that_makes_pythons_fork_warning_an_error_still_fails_the_start(pytester: pytest.Pytester) -> None:
    """-W error::DeprecationWarning: every forking test fails with Python's warning, as without pytest-ipc's."""
    result = _run(pytester, "-W", "error::DeprecationWarning")
    result.assert_outcomes(failed=3, errors=1)
    result.stdout.fnmatch_lines_random(
        [
            "*WorkerStartError: could not start 'give-0' under 'fork': DeprecationWarning: This process (pid=*) "
            "is multi-threaded, use of fork() may lead to deadlocks in the child.",
            "ipc_manager: could not start the Manager under 'fork': DeprecationWarning: This process (pid=*) "
            "is multi-threaded, use of fork() may lead to deadlocks in the child.",
        ]
    )
    result.stdout.no_fnmatch_line("*ForkWarning*")


def test_under_xdist_each_worker_warns_once(pytester: pytest.Pytester) -> None:
    """-n 2: each xdist worker is a session of its own, and warns once, at its first fork."""
    result = _run(pytester, "-n", "2")
    result.assert_outcomes(passed=4)
    out = result.stdout.str()
    assert PYTHON_FORK_WARNING.findall(out) == []
    assert 1 <= out.count("ForkWarning: pytest-ipc started worker processes by fork") <= 2


def test_a_filter_that_makes_the_forkwarning_an_error_fails_every_forking_start(pytester: pytest.Pytester) -> None:
    """-W error::pytest_ipc.ForkWarning: each start that forks with a thread alive fails, naming the warning."""
    result = _run(pytester, "-W", "error::pytest_ipc.ForkWarning")
    result.assert_outcomes(failed=3, errors=1)
    result.stdout.fnmatch_lines_random(
        [
            "*WorkerStartError: could not start 'give-0' under 'fork': ForkWarning: pytest-ipc started worker processes*",
            "ipc_manager: could not start the Manager under 'fork': ForkWarning: pytest-ipc started worker processes*",
        ]
    )
    result.stdout.no_fnmatch_line("*forkwarn.py*")
    assert PYTHON_FORK_WARNING.findall(result.stdout.str()) == []


def test_a_manager_forked_first_warns_at_the_test(pytester: pytest.Pytester) -> None:
    """The warning of an ipc_manager's fork points at the test's definition, not into pytest's fixture code."""
    result = _run(pytester, "-k", "manager")
    result.assert_outcomes(passed=1, deselected=3, warnings=1)
    result.stdout.fnmatch_lines(
        ["test_threaded.py::test_manager", "  *test_threaded.py:37: ForkWarning: pytest-ipc started*"]
    )

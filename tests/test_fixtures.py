"""The IPC fixtures, each under fork, spawn and forkserver, through real pytest sessions.

Worker targets live in pytest-free modules (``bodies`` and ``helpers``) so
that spawn and forkserver workers stay cheap to start.
"""

from __future__ import annotations

import multiprocessing
import re

import pytest
from sessions import copy_bodies

from pytest_ipc import config as settings

METHODS = ("fork", "spawn", "forkserver")

# Its own: the start-time stamps and the small targets only these fixtures' tests start.
HELPERS = r'''
import os
import time

# When this process came into being as a worker, which is always before the
# start barrier: spawn and forkserver workers import this module to load
# their target, fork workers pass through the at-fork hook.
READY_AT = time.monotonic()


def _forked():
    global READY_AT
    READY_AT = time.monotonic()


os.register_at_fork(after_in_child=_forked)


def stamp():
    """(ready, body): when this worker existed, and when its body began."""
    return READY_AT, time.monotonic()


def fill_squares(array):
    for i in range(len(array)):
        array[i] = i * i


def echo_doubled(conn):
    conn.send(conn.recv() * 2)
    conn.close()


def report(conn, item):
    conn.send(item)
    conn.close()


def produce(q, count, sentinel):
    for i in range(count):
        q.put((os.getpid(), i))
    q.put(q.DONE if sentinel is None else sentinel)


def square(n):
    return n * n
'''


# -- ipc_context: where the start method comes from ---------------------------

REPORT_METHOD = """
def test_method(ipc_start_method, ipc_context):
    print("method:", ipc_start_method, ipc_context.get_start_method())
    assert ipc_context.get_start_method() == ipc_start_method


def test_without_ipc(tmp_path):
    pass
"""


@pytest.mark.parametrize(
    ("ini", "args", "expected"),
    [
        pytest.param("", (), multiprocessing.get_all_start_methods()[0], id="platform-default"),
        pytest.param("spawn", (), "spawn", id="ini"),
        pytest.param("spawn", ("--ipc-start-method=forkserver",), "forkserver", id="option-beats-ini"),
        pytest.param("", ("--ipc-start-method=fork",), "fork", id="option"),
    ],
)
def test_start_method_comes_from_option_ini_or_platform(
    pytester: pytest.Pytester, ini: str, args: tuple[str, ...], expected: str
) -> None:
    """Without a marker, ipc_context uses --ipc-start-method, else the ini key, else the platform default."""
    if ini:
        pytester.makefile(".ini", pytest=f"[pytest]\nipc_start_method = {ini}\n")
    pytester.makepyfile(REPORT_METHOD)
    result = pytester.runpytest("-s", *args)
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines([f"*method: {expected} {expected}*"])


def test_marker_beats_option_and_ini(pytester: pytest.Pytester) -> None:
    """@pytest.mark.ipc_start_methods parametrizes with ids [fork] [spawn] [forkserver] whatever else is set."""
    pytester.makefile(".ini", pytest="[pytest]\nipc_start_method = spawn\n")
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.ipc_start_methods("fork", "spawn", "forkserver")
        def test_marked(ipc_start_method, ipc_context):
            assert ipc_context.get_start_method() == ipc_start_method

        @pytest.mark.ipc_start_methods("all")
        def test_all(ipc_context):
            pass

        @pytest.mark.ipc_start_methods("spawn")
        def test_one(ipc_context):
            assert ipc_context.get_start_method() == "spawn"
        """
    )
    result = pytester.runpytest("-v", "--ipc-start-method=fork")
    result.assert_outcomes(passed=7)
    result.stdout.fnmatch_lines(
        [f"*::test_marked[[]{m}[]] PASSED*" for m in METHODS]
        + [f"*::test_all[[]{m}[]] PASSED*" for m in METHODS]
        + ["*::test_one[[]spawn[]] PASSED*"]
    )


def test_all_parametrizes_every_test_using_the_fixtures(pytester: pytest.Pytester) -> None:
    """--ipc-start-method=all runs each test using an ipc fixture under every method, others once."""
    pytester.makepyfile(REPORT_METHOD)
    result = pytester.runpytest("-v", "--ipc-start-method=all")
    result.assert_outcomes(passed=4)
    result.stdout.fnmatch_lines([f"*::test_method[[]{m}[]] PASSED*" for m in METHODS] + ["*::test_without_ipc PASSED*"])


# Stands in for a platform without forkserver (Windows has only spawn): the
# plugin asks multiprocessing which methods exist, so that is what changes.
NO_FORKSERVER_CONFTEST = """
import multiprocessing

_all_methods = multiprocessing.get_all_start_methods
multiprocessing.get_all_start_methods = lambda: [m for m in _all_methods() if m != "forkserver"]
"""


def test_unavailable_start_method_is_a_skip_with_the_reason(pytester: pytest.Pytester) -> None:
    """A start method the platform lacks skips the test, from the marker or the option, naming the method."""
    pytester.makeconftest(NO_FORKSERVER_CONFTEST)
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.ipc_start_methods("fork", "forkserver")
        def test_marked(ipc_context):
            pass
        """
    )
    marked = pytester.runpytest_subprocess("-rs", "-v", timeout=60)
    marked.assert_outcomes(passed=1, skipped=1)
    marked.stdout.fnmatch_lines(
        [
            "*::test_marked[[]fork[]] PASSED*",
            "*::test_marked[[]forkserver[]] SKIPPED*",
            "SKIPPED [[]1[]] *start method 'forkserver' is not available on this platform",
        ]
    )
    pytester.makepyfile(test_unmarked="def test_plain(ipc_context):\n    pass\n")
    plain = pytester.runpytest_subprocess("-rs", "--ipc-start-method=forkserver", "test_unmarked.py", timeout=60)
    plain.assert_outcomes(skipped=1)
    plain.stdout.fnmatch_lines(["SKIPPED [[]1[]] *start method 'forkserver' is not available on this platform"])


# -- the fixtures, with real workers, under all three methods ----------------

FIXTURE_TESTS = r'''
import pytest

import bodies
import helpers


def test_shared_value_default(shared_value, ipc_workers):
    assert shared_value.value == 0
    assert type(shared_value.get_obj()).__name__ == "c_int"
    ipc_workers.start(bodies.add_locked, args=(shared_value, 50), count=2)
    ipc_workers.join()
    assert shared_value.value == 100


@pytest.mark.parametrize(
    ("shared_value", "ctype", "initial"),
    [("d", "c_double", 0.0), (("d", 0.5), "c_double", 0.5), (("c", b"x"), "c_char", b"x")],
    indirect=["shared_value"],
)
def test_shared_value_params(shared_value, ctype, initial):
    assert type(shared_value.get_obj()).__name__ == ctype
    assert shared_value.value == initial
    assert hasattr(shared_value, "get_lock")


@pytest.mark.parametrize("shared_value", [{"typecode": "d", "value": 1.5, "lock": False}], indirect=True)
def test_shared_value_without_lock(shared_value, ipc_workers):
    assert not hasattr(shared_value, "get_lock")
    assert shared_value.value == 1.5

    ipc_workers.start(helpers.square, args=(2,))
    assert ipc_workers.join() == [4]


def test_shared_array_default(shared_array, ipc_workers):
    assert shared_array.get_obj()._type_.__name__ == "c_int"
    assert shared_array[:] == [0] * 10
    ipc_workers.start(helpers.fill_squares, args=(shared_array,))
    ipc_workers.join()
    assert shared_array[:] == [i * i for i in range(10)]


@pytest.mark.parametrize(
    ("shared_array", "expected"),
    [(("d", 3), [0.0] * 3), (("i", [1, 2, 3]), [1, 2, 3]), ({"typecode": "i", "value": 4, "lock": False}, [0] * 4)],
    indirect=["shared_array"],
)
def test_shared_array_params(shared_array, expected):
    assert shared_array[:] == expected


def test_pipe_pair_duplex(pipes_seen, pipe_pair, ipc_workers):
    parent, child = pipe_pair
    pipes_seen.append(pipe_pair)
    ipc_workers.start(helpers.echo_doubled, args=(child,))
    parent.send(21)
    assert parent.poll(30)
    assert parent.recv() == 42
    ipc_workers.join()


@pytest.mark.parametrize("pipe_pair", [False], indirect=True)
def test_pipe_pair_one_way(pipes_seen, pipe_pair, ipc_workers):
    parent, child = pipe_pair
    pipes_seen.append(pipe_pair)
    with pytest.raises(OSError, match="read-only"):
        parent.send("wrong way")
    ipc_workers.start(helpers.report, args=(child, "up"))
    assert parent.poll(30)
    assert parent.recv() == "up"
    ipc_workers.join()


@pytest.fixture
def pipes_seen():
    """Set up before pipe_pair, so torn down after it: checks both ends were closed."""
    pairs = []
    yield pairs
    assert pairs and all(end.closed for pair in pairs for end in pair)


@pytest.mark.parametrize("sentinel", [None, "exit"])
def test_fanin_queue_collects_from_producers(fanin_queue, ipc_workers, sentinel):
    workers = ipc_workers.start(helpers.produce, args=(fanin_queue, 4, sentinel), count=2)
    items = fanin_queue.collect(producers=2) if sentinel is None else fanin_queue.collect(2, sentinel=sentinel)
    ipc_workers.join()
    assert sorted(items) == sorted((w.pid, i) for w in workers for i in range(4))


def test_fanin_queue_timeout_names_sentinels_seen(fanin_queue):
    from pytest_ipc import FanInTimeout

    fanin_queue.put("item")
    fanin_queue.put(fanin_queue.DONE)
    with pytest.raises(FanInTimeout, match=r"1 of 2 producers sent their sentinel pytest_ipc.DONE within 0.2s \(1 items received\)"):
        fanin_queue.collect(producers=2, timeout=0.2)


def test_workers_return_values_in_start_order(ipc_workers):
    first = ipc_workers.start(bodies.pid, count=2)
    ipc_workers.start(helpers.square, args=(7,))
    ipc_workers.start(bodies.pid)
    values = ipc_workers.join()
    assert values[:2] == [w.pid for w in first]
    assert values[2] == 49
    assert values[3] == ipc_workers.workers[3].pid


def test_workers_of_one_start_begin_together(ipc_workers):
    ipc_workers.start(helpers.stamp, count=3)
    stamps = ipc_workers.join()
    ready = [r for r, _ in stamps]
    bodies = [b for _, b in stamps]
    # No body began before every worker of the start existed (a logical
    # consequence of the barrier; without it the first worker would run
    # while the last one was still being started).
    assert min(bodies) >= max(ready), stamps
'''


def test_fixtures_work_under_every_start_method(pytester: pytest.Pytester) -> None:
    """shared_value, shared_array, pipe_pair, fanin_queue and ipc_workers pass under fork, spawn and forkserver."""
    copy_bodies(pytester)
    pytester.makepyfile(helpers=HELPERS, test_fixtures=FIXTURE_TESTS)
    result = pytester.runpytest_subprocess("-v", "--ipc-start-method=all", "-p", "no:cacheprovider", timeout=180)
    functions = set(re.findall(r"^def (test_\w+)", FIXTURE_TESTS, re.M))
    cases_per_method = 16
    result.assert_outcomes(passed=cases_per_method * len(METHODS))
    # Every test function ran, and passed, under each method (the first part of its id).
    ran = re.findall(r"::(test_\w+)\[(fork|spawn|forkserver)\b[^\]]*\] PASSED", result.stdout.str())
    assert len(ran) == cases_per_method * len(METHODS)
    assert set(ran) == {(name, method) for name in functions for method in METHODS}


# -- fanin_queue teardown with undrained data --------------------------------

UNDRAINED_TESTS = r"""
import pytest

import bodies
import helpers


@pytest.mark.ipc_start_methods("fork", "spawn", "forkserver")
def test_parent_leaves_data(fanin_queue):
    fanin_queue.put(b"p" * (10 * 1024 * 1024))
    fanin_queue.put(list(range(100_000)))


@pytest.mark.ipc_start_methods("fork", "spawn", "forkserver")
def test_worker_leaves_data(ipc_workers, fanin_queue):
    fanin_queue.put(b"p" * (10 * 1024 * 1024))
    ipc_workers.start(bodies.put_big, args=(fanin_queue, 10 * 1024 * 1024))
    # Not joined: the worker cannot exit before its 10 MB are read, which
    # only the queue's teardown does.
"""

TEARDOWN_TIMER = """
def pytest_runtest_logreport(report):
    if report.when == "teardown":
        print(f"\\nteardown-seconds {report.nodeid} {report.duration:.3f}")
"""


def test_fanin_queue_teardown_never_hangs_on_undrained_data(pytester: pytest.Pytester) -> None:
    """10 MB left in the queue by the test and by a worker is drained at teardown in well under a second or two."""
    copy_bodies(pytester)
    pytester.makepyfile(helpers=HELPERS, test_undrained=UNDRAINED_TESTS)
    pytester.makeconftest(TEARDOWN_TIMER)
    result = pytester.runpytest_subprocess("-s", "-p", "no:cacheprovider", timeout=120)
    # The unjoined worker is the launcher's complaint at teardown, after the
    # queue's drain let it exit.
    result.assert_outcomes(passed=6, errors=3)
    result.stdout.fnmatch_lines(["*worker 'put_big-0' (pid *)*call ipc_workers.join()*"])
    durations = dict(re.findall(r"^teardown-seconds (\S+) ([\d.]+)$", result.stdout.str(), re.M))
    assert len(durations) == 6
    # The queue gives a stuck feeder 5 s (CLOSE_TIMEOUT) before abandoning
    # it; a drain that works never comes near that.
    slow = {node: float(s) for node, s in durations.items() if float(s) >= 3.0}
    assert slow == {}


# -- the timeout: option, ini, marker ----------------------------------------

TIMEOUT_TESTS = r"""
import time

import pytest

import bodies
import helpers
from pytest_ipc import FanInTimeout, WorkerTimeout


def test_session_timeout(ipc_workers):
    print("timeout:", ipc_workers.timeout)


@pytest.mark.ipc_timeout(1)
def test_marker_timeout(ipc_workers, fanin_queue, ipc_context):
    print("timeout:", ipc_workers.timeout)
    started = time.monotonic()
    with pytest.raises(FanInTimeout, match="within 1s"):
        fanin_queue.collect(producers=1)
    event = ipc_context.Event()
    ipc_workers.start(bodies.wait_for, args=(event,))
    with pytest.raises(WorkerTimeout, match="still running after the 1s timeout"):
        ipc_workers.join()
    # Two 1 s waits plus the launcher's grace periods, nowhere near the session's timeout.
    assert time.monotonic() - started < 8
"""


@pytest.mark.parametrize(
    ("ini", "args", "session_timeout"),
    [
        pytest.param("", (), settings.DEFAULT_TIMEOUT, id="default"),
        pytest.param("9", (), 9.0, id="ini"),
        pytest.param("9", ("--ipc-timeout=12.5",), 12.5, id="option-beats-ini"),
    ],
)
def test_timeout_comes_from_marker_option_or_ini(
    pytester: pytest.Pytester, ini: str, args: tuple[str, ...], session_timeout: float
) -> None:
    """ipc_workers and fanin_queue wait for @ipc_timeout, else --ipc-timeout, else ini ipc_timeout, else 30 s."""
    if ini:
        pytester.makefile(".ini", pytest=f"[pytest]\nipc_timeout = {ini}\n")
    copy_bodies(pytester)
    pytester.makepyfile(helpers=HELPERS, test_timeouts=TIMEOUT_TESTS)
    result = pytester.runpytest_subprocess("-s", "--ipc-start-method=fork", "-p", "no:cacheprovider", *args, timeout=90)
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines([f"*timeout: {session_timeout}", "*timeout: 1.0"])


# A fork server can start before the first ipc_context: a session fixture's
# Manager or Pool starts it.  It must still preload pytest-ipc's modules (else
# every worker imports pytest and the launcher itself, ~10x slower starts),
# and keep the modules the user asked it to preload.
EARLY_FORK_SERVER = '''
import multiprocessing
import os

IMPORTED_IN = os.getpid()


def quick():
    pass


def preloaded():
    """[pytest imported before the target's module was, this module imported by another process]."""
    import sys

    return ["pytest" in sys.modules, IMPORTED_IN != os.getpid()]
'''

# The conftest sets the user's own preload list as it is imported, before
# pytest configures the plugins; its session fixture starts the fork server.
EARLY_FORK_SERVER_CONFTEST = """
import multiprocessing

import pytest

import early

multiprocessing.set_forkserver_preload(["early"])


@pytest.fixture(scope="session", autouse=True)
def fork_server_started_first():
    p = multiprocessing.get_context("forkserver").Process(target=early.quick)
    p.start()
    p.join()
"""

EARLY_FORK_SERVER_TEST = """
import early


def test_worker(ipc_workers):
    ipc_workers.start(early.preloaded)
    assert ipc_workers.join() == [[True, True]]
"""


def test_a_fork_server_started_before_any_ipc_fixture_still_preloads(pytester: pytest.Pytester) -> None:
    """pytest-ipc's preload modules are set as pytest configures, added to the user's."""
    pytester.makepyfile(early=EARLY_FORK_SERVER, test_early=EARLY_FORK_SERVER_TEST)
    pytester.makeconftest(EARLY_FORK_SERVER_CONFTEST)
    result = pytester.runpytest_subprocess("--ipc-start-method=forkserver", timeout=60)
    result.assert_outcomes(passed=1)

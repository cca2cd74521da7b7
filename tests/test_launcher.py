"""The ``ipc_workers`` launcher: every way a worker can go wrong is a clear failure.

Each test writes a small test session and runs it in a pytest subprocess
(workers, signals and timeouts are involved), under fork, spawn and
forkserver, then checks the outcome, the lines the user sees, and that
nothing outlived the session: no worker or grandchild process (every worker
writes its pid to a file that is checked afterwards), no semaphore in
/dev/shm (the inner session uses a private name prefix), and no worker
group directory under the session's basetemp.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from sessions import InnerRun as Run
from sessions import inner_sessions

METHODS = ["fork", "spawn", "forkserver"]
SPAWNING = ["spawn", "forkserver"]

# The workers' targets, in a module that does not import pytest, so that
# spawn workers start fast.  Every target records its pid first.  Its own:
# each target is one way for a worker to end, marked for line_of().
HELPERS = '''
import ctypes
import os
import signal
import subprocess
import sys
import time

from bodies import record_pid as record


def wait_recorded(pid):
    """Return once ``pid`` is in the pid file (the worker got past record())."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with open(os.environ["IPC_TEST_PIDFILE"], "a+") as f:
            f.seek(0)
            if str(pid) in f.read().split():
                return
        time.sleep(0.01)
    raise AssertionError(f"worker {pid} never recorded its pid")


def give(value):
    record()
    return value


def raise_value_error():
    record()
    raise ValueError("boom from the worker")  # RAISE-LINE


def os_exit_3():
    record()
    os._exit(3)


def sys_exit_4():
    record()
    sys.exit(4)


def sigkill():
    record()
    os.kill(os.getpid(), signal.SIGKILL)


def sigterm():
    record()
    os.kill(os.getpid(), signal.SIGTERM)


def segv_ctypes():
    record()
    ctypes.string_at(0)  # CTYPES-SEGV-LINE


def segv_kill():
    record()
    os.kill(os.getpid(), signal.SIGSEGV)  # KILL-SEGV-LINE


def sleep_forever():
    record()
    time.sleep(600)  # SLEEP-LINE


def wait_on_lock(lock):
    record()
    lock.acquire()  # LOCK-LINE


def wait_on_recv(conn):
    record()
    conn.recv()  # RECV-LINE


def put_big_item(q):
    record()
    # More than a pipe holds: the worker cannot exit until someone reads it.
    q.put(b"x" * 1_000_000)


def hang_with_grandchild():
    record()
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    record(child.pid)
    time.sleep(600)  # GRANDCHILD-LINE


def ignore_sigterm_and_hang():
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    record()
    time.sleep(600)  # STUBBORN-LINE


def type_of(arg):
    record()
    return type(arg).__name__


def interrupt(pid):
    record()
    # A KeyboardInterrupt raised inside a callback that CPython runs during
    # the wait is swallowed as unraisable: send again until this worker is
    # ended (join() ends the workers as soon as it is interrupted).
    for _ in range(600):
        os.kill(pid, signal.SIGINT)
        time.sleep(1)
'''


def line_of(marker: str) -> int:
    """The line number in helpers.py of the line carrying ``marker``."""
    # makepyfile drops the leading blank line.
    for number, line in enumerate(HELPERS.strip("\n").splitlines(), start=1):
        if marker in line:
            return number
    raise AssertionError(f"no line with {marker!r} in HELPERS")


def helpers_line(marker: str, func: str) -> str:
    """An fnmatch pattern for a faulthandler frame of helpers.py."""
    return f'*File "*helpers.py", line {line_of(marker)} in {func}'


@pytest.fixture
def run_inner(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Callable[..., Run]:
    """Runs the session written in ``pytester`` under a start method and checks nothing is left."""
    return inner_sessions(pytester, monkeypatch, tmp_path, HELPERS, timeout=60)


@pytest.mark.parametrize("method", METHODS)
def test_raising_target_fails_the_test_with_the_child_traceback(
    pytester: pytest.Pytester, run_inner: Callable[..., Run], method: str
) -> None:
    """A target that raises fails the test, naming the worker and showing the raising line."""
    pytester.makepyfile(
        """
        import multiprocessing
        import helpers

        def test_ipc_workers(ipc_workers):
            ipc_workers.start(helpers.raise_value_error, name="boom")
            ipc_workers.join()

        def test_plain_multiprocessing_would_pass(ipc_context):
            p = ipc_context.Process(target=helpers.raise_value_error)
            p.start()
            p.join(30)
            assert p.exitcode == 1
        """
    )
    run = run_inner(method=method)
    run.result.assert_outcomes(failed=1, passed=1)
    run.result.stdout.fnmatch_lines(
        [
            "E * pytest_ipc.WorkerFailed: worker 'boom-0' (pid *) raised ValueError: boom from the worker",
            "E * --- traceback in 'boom-0' ---",
            f'E * File "*helpers.py", line {line_of("RAISE-LINE")}, in raise_value_error',
            'E *     raise ValueError("boom from the worker")  # RAISE-LINE',
            "E * ValueError: boom from the worker",
        ]
    )
    assert len(run.pids) == 2


@pytest.mark.parametrize("method", METHODS)
def test_crashing_worker_names_exit_code_signal_or_segfault(
    pytester: pytest.Pytester, run_inner: Callable[..., Run], method: str
) -> None:
    """Non-zero exits give the code, signals their name, segfaults the faulthandler stack."""
    pytester.makepyfile(
        """
        import pytest
        import helpers

        HOW = ["os_exit_3", "sys_exit_4", "sigkill", "sigterm", "segv_ctypes", "segv_kill"]

        @pytest.mark.parametrize("how", HOW)
        def test_crash(ipc_workers, how):
            ipc_workers.start(getattr(helpers, how), name=how)
            ipc_workers.join()
        """
    )
    run = run_inner(method=method)
    run.result.assert_outcomes(failed=6)
    run.result.stdout.fnmatch_lines(
        [
            "E *WorkerFailed: worker 'os_exit_3-0' (pid *) exited with code 3",
            "E *WorkerFailed: worker 'sys_exit_4-0' (pid *) exited with code 4",
            "E *WorkerFailed: worker 'sigkill-0' (pid *) was killed by SIGKILL",
            "E *WorkerFailed: worker 'sigterm-0' (pid *) was killed by SIGTERM",
            "E *WorkerFailed: worker 'segv_ctypes-0' (pid *) crashed with a segmentation fault (SIGSEGV)",
            "E * --- stack of 'segv_ctypes-0' when it crashed ---",
            "E  " + helpers_line("CTYPES-SEGV-LINE", "segv_ctypes"),
            "E *WorkerFailed: worker 'segv_kill-0' (pid *) crashed with a segmentation fault (SIGSEGV)",
            "E * --- stack of 'segv_kill-0' when it crashed ---",
            "E  " + helpers_line("KILL-SEGV-LINE", "segv_kill"),
        ]
    )
    # The stack is the worker's own: none of the parent's pytest frames (fork).
    run.result.stdout.no_fnmatch_line("E *_pytest*")
    assert len(run.pids) == 6


@pytest.mark.parametrize("method", METHODS)
def test_hung_workers_time_out_with_their_stacks_and_are_ended(
    pytester: pytest.Pytester, run_inner: Callable[..., Run], method: str
) -> None:
    """Workers blocked on a lock, a recv, an undrained queue, a grandchild or ignoring SIGTERM all end."""
    pytester.makepyfile(
        """
        import time
        import pytest
        import helpers

        @pytest.mark.ipc_timeout(2)
        def test_hangs(ipc_workers, ipc_context):
            lock = ipc_context.Lock()
            lock.acquire()
            mine, theirs = ipc_context.Pipe()
            q = ipc_context.Queue()
            ipc_workers.start(helpers.wait_on_lock, args=(lock,), name="lock")
            ipc_workers.start(helpers.wait_on_recv, args=(theirs,), name="recv")
            ipc_workers.start(helpers.put_big_item, args=(q,), name="queue")
            ipc_workers.start(helpers.hang_with_grandchild, name="grandparent")
            ipc_workers.start(helpers.ignore_sigterm_and_hang, name="stubborn")
            started = time.monotonic()
            try:
                ipc_workers.join()
            finally:
                print(f"join took {time.monotonic() - started:.2f}s")
        """
    )
    run = run_inner(method=method)
    run.result.assert_outcomes(failed=1)
    run.result.stdout.fnmatch_lines(
        [
            "E * pytest_ipc.WorkerTimeout: worker 'lock-0' (pid *), worker 'recv-1' (pid *), "
            "worker 'queue-2' (pid *), worker 'grandparent-3' (pid *), worker 'stubborn-4' (pid *) "
            "still running after the 2s timeout; ended them.",
            "E * --- stack of worker 'lock-0' (pid *) ---",
            "E  " + helpers_line("LOCK-LINE", "wait_on_lock"),
            "E * --- stack of worker 'recv-1' (pid *) ---",
            "E  " + helpers_line("RECV-LINE", "wait_on_recv"),
            "E * --- stack of worker 'queue-2' (pid *) ---",
            "E *multiprocessing*queues.py*in _finalize_join",
            "E * (it returned from its target but cannot exit: it put items on a multiprocessing Queue "
            "that nobody has read*",
            "E * --- stack of worker 'grandparent-3' (pid *) ---",
            "E  " + helpers_line("GRANDCHILD-LINE", "hang_with_grandchild"),
            "E * --- stack of worker 'stubborn-4' (pid *) ---",
            "E  " + helpers_line("STUBBORN-LINE", "ignore_sigterm_and_hang"),
        ]
    )
    run.result.stdout.no_fnmatch_line("E *_pytest*")  # no parent frames in a fork worker's stack
    # Five workers and the grandchild, all checked gone by run_inner.
    assert len(run.pids) == 6
    # The timeout, then at most a moment for the stacks and the kill.
    assert 2 <= run.join_seconds() < 2 + 3
    # Start-up of the session and five workers, the timeout, the clean-up.
    assert run.elapsed < 2 + 15


@pytest.mark.parametrize("method", METHODS)
def test_one_failing_worker_ends_the_others_at_once(
    pytester: pytest.Pytester, run_inner: Callable[..., Run], method: str
) -> None:
    """A worker that raises fails the test well before the timeout; blocked ones are ended, not blamed."""
    pytester.makepyfile(
        """
        import time
        import pytest
        import helpers

        @pytest.mark.ipc_timeout(20)
        def test_fail_fast(ipc_workers):
            ipc_workers.start(helpers.sleep_forever, count=2, name="blocked")
            ipc_workers.start(helpers.raise_value_error, name="boom")
            started = time.monotonic()
            try:
                ipc_workers.join()
            finally:
                print(f"join took {time.monotonic() - started:.2f}s")
        """
    )
    run = run_inner(method=method)
    run.result.assert_outcomes(failed=1)
    run.result.stdout.fnmatch_lines(
        [
            "E * pytest_ipc.WorkerFailed: worker 'boom-2' (pid *) raised ValueError: boom from the worker",
            "E * ValueError: boom from the worker",
            "E * (ended the other workers, which were still running: blocked-0, blocked-1)",
        ]
    )
    run.result.stdout.no_fnmatch_line("E * worker 'blocked-* (pid *)*")
    assert run.join_seconds() < 5  # the timeout is 20 s
    assert len(run.pids) == 3


@pytest.mark.parametrize("method", METHODS)
def test_unpicklable_target_or_argument_is_a_clear_start_error(
    pytester: pytest.Pytester, run_inner: Callable[..., Run], method: str
) -> None:
    """Lambdas, nested functions, run-time and importlib-mode modules, a thread lock: why and how to fix."""
    pytester.makepyfile(
        test_pickling="""
        import sys
        import threading
        import types
        import helpers

        def test_lambda(ipc_workers):
            ipc_workers.start(lambda: helpers.give(1))
            assert ipc_workers.join() == [1]

        def test_nested_function(ipc_workers):
            def nested():
                return helpers.give(2)
            ipc_workers.start(nested)
            assert ipc_workers.join() == [2]

        def test_module_made_at_run_time(ipc_workers):
            module = types.ModuleType("made_at_run_time")
            exec("import helpers\\ndef target():\\n    return helpers.give(3)\\n", module.__dict__)
            sys.modules["made_at_run_time"] = module
            ipc_workers.start(module.target)
            assert ipc_workers.join() == [3]

        def test_thread_lock_argument(ipc_workers):
            ipc_workers.start(helpers.type_of, args=(threading.Lock(),))
            assert ipc_workers.join() == ["lock"]
        """
    )
    # A directory name with a dot: --import-mode=importlib imports this test
    # module under a name no child process can import.
    unimportable = pytester.path / "tests.v1"
    unimportable.mkdir()
    (unimportable / "test_importlib_mode.py").write_text(
        "import helpers\n\n"
        "def target():\n"
        "    return helpers.give(4)\n\n"
        "def test_importlib_mode_module(ipc_workers):\n"
        "    ipc_workers.start(target)\n"
        "    assert ipc_workers.join() == [4]\n"
    )
    run = run_inner("--import-mode=importlib", "test_pickling.py", "tests.v1", method=method)
    if method == "fork":
        # Nothing is pickled under fork: all of these just work.
        run.result.assert_outcomes(passed=5)
        assert len(run.pids) == 5
        return
    run.result.assert_outcomes(failed=5)
    run.result.stdout.fnmatch_lines(
        [
            f"E * pytest_ipc.WorkerStartError: the target 'test_lambda.<locals>.<lambda>' is a lambda, "
            f"which cannot be pickled, and under '{method}' each worker receives its target by pickling. "
            "Move it to module level in an importable module (a test module works), or use the fork start method.",
            "E * pytest_ipc.WorkerStartError: the target 'test_nested_function.<locals>.nested' is a function "
            "defined inside another function, which cannot be pickled*use the fork start method.",
            "E * pytest_ipc.WorkerStartError: worker 'target-0' (pid *) could not load its target: "
            "ModuleNotFoundError: No module named 'made_at_run_time'",
            f"E * Under '{method}' each worker imports the target's module 'made_at_run_time' afresh*"
            "exists only in sys.modules*or use the fork start method.",
            f"E * pytest_ipc.WorkerStartError: could not start 'type_of-0' under '{method}': "
            "TypeError: cannot pickle '_thread.lock' object. Under*picklable arguments*",
            "E * pytest_ipc.WorkerStartError: worker 'target-0' (pid *) could not load its target: "
            "ModuleNotFoundError: No module named *",
            "E * *--import-mode=importlib*",
        ]
    )
    run.result.stdout.no_fnmatch_line("*PicklingError*")
    run.result.stdout.no_fnmatch_line("*EOFError*")
    assert run.pids == []  # no target ever ran


# A process running other threads: from Python 3.12 os.fork() warns there,
# after the child exists.  Made an error by a filter, the warning must fail
# the test with a start error (no pickling hint: nothing is pickled under
# fork), and the child must not be left waiting for the start barrier.
THREADED_FORK = """
import os
import threading

import pytest


def give(x):
    return x


def children():
    \"\"\"This process's children, but multiprocessing's resource tracker.\"\"\"
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read()
        except (OSError, ValueError, IndexError):
            continue
        if ppid == os.getpid() and b"resource_tracker" not in cmdline:
            found.append(int(entry))
    return found


def test_threaded_fork(ipc_workers):
    stop = threading.Event()
    thread = threading.Thread(target=stop.wait)
    thread.start()
    try:
        ipc_workers.start(give, args=(1,))
    finally:
        stop.set()
        thread.join()


def test_nothing_left():
    assert children() == []
"""


@pytest.mark.skipif(sys.version_info < (3, 12), reason="os.fork() warns in a multi-threaded process from 3.12")
def test_a_fork_that_a_warning_filter_fails_leaves_no_child(pytester: pytest.Pytester) -> None:
    """-W error for fork()'s multi-threading warning: a clear start error, and the child ended."""
    pytester.makepyfile(test_threaded_fork=THREADED_FORK)
    result = pytester.runpytest_subprocess(
        "-W", "error:This process:DeprecationWarning", "--ipc-start-method=fork", "-p", "no:cacheprovider", timeout=60
    )
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        [
            "E * pytest_ipc.WorkerStartError: could not start 'give-0' under 'fork': "
            "DeprecationWarning: This process (pid=*) is multi-threaded, use of fork() may lead to deadlocks in the child.",
        ]
    )
    result.stdout.no_fnmatch_line("*pickled*")


@pytest.mark.parametrize("method", METHODS)
def test_partial_and_callable_instance_targets_reach_every_start_method(
    pytester: pytest.Pytester, run_inner: Callable[..., Run], method: str
) -> None:
    """Targets with no name of their own are pickled whole, not looked up by a name they lack."""
    pytester.makepyfile(
        test_targets="""
        import functools
        import helpers

        class Giver:
            def __call__(self, value):
                return helpers.give(value)

        def test_partial(ipc_workers):
            ipc_workers.start(functools.partial(helpers.give, 5), count=2)
            assert ipc_workers.join() == [5, 5]

        def test_callable_instance(ipc_workers):
            ipc_workers.start(Giver(), args=(6,))
            assert ipc_workers.join() == [6]
        """
    )
    run = run_inner(method=method)
    run.result.assert_outcomes(passed=2)
    assert len(run.pids) == 3


@pytest.mark.parametrize("method", METHODS)
def test_worker_left_at_teardown_is_an_error_naming_it(
    pytester: pytest.Pytester, run_inner: Callable[..., Run], method: str
) -> None:
    """Running or unjoined workers at teardown are errors, unless the test already failed."""
    pytester.makepyfile(
        """
        import helpers

        def test_still_running(ipc_workers):
            [worker] = ipc_workers.start(helpers.sleep_forever, name="forgotten")
            helpers.wait_recorded(worker.pid)  # so that the outer test can check it is gone

        def test_exited_but_never_joined(ipc_workers):
            [worker] = ipc_workers.start(helpers.raise_value_error, name="unchecked")
            worker.process.join(30)

        def test_already_failed(ipc_workers):
            [worker] = ipc_workers.start(helpers.sleep_forever, name="abandoned")
            helpers.wait_recorded(worker.pid)
            assert False, "the test's own failure"
        """
    )
    run = run_inner(method=method)
    run.result.assert_outcomes(passed=2, errors=2, failed=1)
    run.result.stdout.fnmatch_lines(
        [
            "*ERROR at teardown of test_still_running*",
            "E * pytest_ipc.WorkerError: worker 'forgotten-0' (pid *) was still running at teardown "
            "(ended it); call ipc_workers.join()",
            "*ERROR at teardown of test_exited_but_never_joined*",
            "E * pytest_ipc.WorkerError: worker 'unchecked-0' (pid *) was never joined (exit code 1: "
            "it raised ValueError: boom from the worker); call ipc_workers.join()",
            "*_ test_already_failed _*",
            "E * AssertionError: the test's own failure",
        ]
    )
    run.result.stdout.no_fnmatch_line("*ERROR at teardown of test_already_failed*")
    run.result.stdout.no_fnmatch_line("*abandoned-0*")
    assert len(run.pids) == 3


@pytest.mark.parametrize("method", METHODS)
def test_interrupt_while_joining_ends_the_workers(
    pytester: pytest.Pytester, run_inner: Callable[..., Run], method: str
) -> None:
    """Ctrl-C during join() interrupts the session; every worker is ended and none is blamed."""
    pytester.makepyfile(
        """
        import os
        import signal
        import helpers

        def test_interrupted(ipc_workers):
            # A job started in the background by a non-interactive shell (as
            # CI may be) inherits SIGINT ignored, and Python then keeps it so.
            signal.signal(signal.SIGINT, signal.default_int_handler)
            ipc_workers.start(helpers.sleep_forever, count=2, name="blocked")
            ipc_workers.start(helpers.interrupt, args=(os.getpid(),), name="interrupter")
            try:
                ipc_workers.join()
            except KeyboardInterrupt:
                signal.signal(signal.SIGINT, signal.SIG_IGN)  # one is enough
                raise

        def test_never_reached():
            pass
        """
    )
    run = run_inner(method=method)
    assert run.result.ret == pytest.ExitCode.INTERRUPTED
    run.result.stdout.fnmatch_lines(["*! KeyboardInterrupt !*"])
    run.result.stdout.no_fnmatch_line("*test_never_reached*PASSED*")
    run.result.stdout.no_fnmatch_line("*at teardown*")
    run.result.stderr.no_fnmatch_line("*WorkerError*")
    assert len(run.pids) == 3


@pytest.mark.parametrize("method", METHODS)
def test_start_and_join_release_their_file_descriptors(
    pytester: pytest.Pytester, run_inner: Callable[..., Run], method: str
) -> None:
    """Rounds of start/join, passing and failing, leave the test process's fd count unchanged."""
    pytester.makepyfile(
        """
        import os
        import pytest
        import pytest_ipc
        import helpers

        def fds():
            return len(os.listdir("/proc/self/fd"))

        def test_rounds(ipc_workers):
            # The first round starts the fork server / resource tracker, once.
            ipc_workers.start(helpers.give, args=(0,), count=2)
            ipc_workers.join()
            before = fds()
            for round in range(1, 5):
                ipc_workers.start(helpers.give, args=(round,), count=2)
                assert ipc_workers.join()[-2:] == [round, round]
            with pytest.raises(pytest_ipc.WorkerFailed):
                ipc_workers.start(helpers.raise_value_error)
                ipc_workers.join()
            assert fds() == before
        """
    )
    run = run_inner(method=method)
    run.result.assert_outcomes(passed=1)
    assert len(run.pids) == 11


def test_start_and_join_reject_bad_arguments(pytester: pytest.Pytester, run_inner: Callable[..., Run]) -> None:
    """start(count=0), start(args="x"), start(kwargs=[]) and join(timeout=-1) say what is wrong."""
    pytester.makepyfile(
        """
        import helpers

        def test_count_zero(ipc_workers):
            ipc_workers.start(helpers.give, args=(1,), count=0)

        def test_args_string(ipc_workers):
            ipc_workers.start(helpers.give, args="x")

        def test_kwargs_list(ipc_workers):
            ipc_workers.start(helpers.give, kwargs=[1])

        def test_join_negative_timeout(ipc_workers):
            ipc_workers.join(timeout=-1)
        """
    )
    run = run_inner(method="fork")
    run.result.assert_outcomes(failed=4)
    run.result.stdout.fnmatch_lines(
        [
            "E * pytest_ipc.WorkerStartError: ipc_workers.start(): count must be a positive integer, got 0",
            "E * pytest_ipc.WorkerStartError: ipc_workers.start(): args must be a tuple or list, got 'x' "
            "(for one argument write args=(x,))",
            "E * pytest_ipc.WorkerStartError: ipc_workers.start(): kwargs must be a dict, got [[]1]",  # [[] is a literal [
            "E * pytest_ipc.WorkerError: ipc_workers.join(): timeout must be a positive number of seconds, got -1",
        ]
    )
    assert run.pids == []

"""Ctrl-C or SIGTERM in the middle of a long ipc_race campaign.

pytest must stop promptly, print (and write as JSON) what the completed runs
found, and leave nothing behind: no worker, no semaphore, no segment.  The
inner session runs in a subprocess that the test signals once the campaign
is under way; the inner test announces each run on a FIFO, so the signal is
sent at a known point, not after a guessed sleep.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from leftovers import still_alive
from sessions import SEMPREFIX_CONFTEST, copy_bodies

METHODS = ["fork", "spawn", "forkserver"]

CONFTEST = (
    SEMPREFIX_CONFTEST
    + """
import signal

# Background jobs may start with SIGINT ignored, and some process managers
# (pytest-xdist's workers) with it blocked; a terminal's Ctrl-C is neither.
signal.signal(signal.SIGINT, signal.default_int_handler)
signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})
"""
)

CAMPAIGN = """
import os

import pytest

import bodies


# all_runs: the race shows at once, and the campaign must go on until the signal.
@pytest.mark.ipc_race(runs=1000, all_runs=True)
def test_counter(shared_value, ipc_workers):
    # One byte per run started: the outer test counts them.
    fd = os.open(os.environ["RUNS_FIFO"], os.O_WRONLY)
    os.write(fd, b".")
    os.close(fd)
    ipc_workers.start(bodies.record_then_add, args=(shared_value, 50), count=9)
    ipc_workers.join()
"""

# Runs to let start before the signal: enough that some have completed.
RUNS_BEFORE_SIGNAL = 5
# From the signal to the end of pytest: teardown of one run's workers.
PROMPT = 15.0


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_mid_campaign_stops_reports_and_cleans_up(
    pytester: pytest.Pytester, tmp_path: Path, method: str, signum: int
) -> None:
    pytester.makeconftest(CONFTEST)
    copy_bodies(pytester)
    pytester.makepyfile(test_campaign=CAMPAIGN)
    fifo = tmp_path / "runs.fifo"
    os.mkfifo(fifo)
    pidfile = tmp_path / "pids.txt"
    report = tmp_path / "report.json"
    prefix = f"ipcint{uuid.uuid4().hex[:10]}"
    env = dict(
        os.environ,
        RUNS_FIFO=str(fifo),
        IPC_TEST_PIDFILE=str(pidfile),
        IPC_TEST_SEMPREFIX=prefix,
        PYTEST_DISABLE_PLUGIN_AUTOLOAD="1",
    )
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    # Held open for reading and writing, so the FIFO never reports end of
    # file between runs and the inner test never blocks opening it.
    fd = os.open(fifo, os.O_RDWR)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "pytest_ipc",
            "-p",
            "no:cacheprovider",
            f"--ipc-start-method={method}",
            f"--ipc-report={report}",
            f"--basetemp={tmp_path / 'basetemp'}",
        ],
        cwd=pytester.path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        # Its own process group, as a terminal's foreground job; signals go to pytest only.
        start_new_session=True,
    )
    try:
        started = b""
        deadline = time.monotonic() + 120
        while len(started) < RUNS_BEFORE_SIGNAL:
            # Never a read that waits forever: the FIFO never reports end of file.
            readable, _, _ = select.select([fd], [], [], 1.0)
            if readable:
                started += os.read(fd, RUNS_BEFORE_SIGNAL - len(started))
                continue
            assert proc.poll() is None, f"the inner session ended after {len(started)} runs:\n{proc.communicate()[0]}"
            assert time.monotonic() < deadline, f"only {len(started)} runs started in 120 s"
        signalled = time.monotonic()
        proc.send_signal(signum)
        out, _ = proc.communicate(timeout=PROMPT + 30)
        took = time.monotonic() - signalled
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        os.close(fd)

    assert proc.returncode == pytest.ExitCode.INTERRUPTED, out
    assert took < PROMPT, f"pytest took {took:.1f}s to stop:\n{out}"
    # What the completed runs found, on the terminal and in the JSON.
    lines = out.splitlines()
    assert "ipc race report" in out, out
    row = next(line for line in lines if line.startswith("test_campaign.py::test_counter "))
    assert "INTERRUPTED (" in row and "so far)" in row, row
    assert any(line.strip().startswith("total") and line.strip().endswith("runs") for line in lines), out
    if signum == signal.SIGTERM:
        assert "Terminated: pytest received SIGTERM" in out, out
    else:
        assert "KeyboardInterrupt" in out, out
    entry = json.loads(report.read_text())["tests"][0]
    assert entry["interrupted"] is True
    assert entry["nodeid"] == "test_campaign.py::test_counter"
    assert RUNS_BEFORE_SIGNAL - 1 <= entry["runs"] < 1000
    assert sum(n for _, n in entry["histogram"]) == entry["runs"]
    # Nothing left behind.
    pids = [int(p) for p in pidfile.read_text().split()]
    assert len(pids) >= 9 * (RUNS_BEFORE_SIGNAL - 1)
    alive = still_alive(pids)
    assert not alive, f"workers outlived the session: {alive}"
    leftovers = [p.name for p in Path("/dev/shm").iterdir() if prefix in p.name]
    assert not leftovers, f"left in /dev/shm: {leftovers}"
    assert not list((tmp_path / "basetemp").glob("ipc-workers-*")), "a worker directory was left behind"


def test_sigterm_handler_of_the_user_is_left_alone(pytester: pytest.Pytester) -> None:
    """Only the default disposition is replaced; and fork children end by SIGTERM as usual."""
    pytester.makepyfile(
        """
        import signal
        import multiprocessing

        def mine(signum, frame):
            pass

        def test_handler_kept(ipc_context):
            signal.signal(signal.SIGTERM, mine)
            try:
                assert signal.getsignal(signal.SIGTERM) is mine
            finally:
                signal.signal(signal.SIGTERM, signal.SIG_DFL)

        def test_plugin_handler_only_during_ipc_tests():
            assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL

        def _wait(event):
            event.wait()

        def test_fork_child_terminates_as_without_the_plugin(ipc_context):
            assert signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL  # the plugin's, inherited
            event = ipc_context.Event()
            p = ipc_context.Process(target=_wait, args=(event,))
            p.start()
            p.terminate()
            p.join(10)
            assert p.exitcode == -signal.SIGTERM
        """
    )
    result = pytester.runpytest_subprocess("-p", "pytest_ipc", "--ipc-start-method=fork")
    result.assert_outcomes(passed=3)


@pytest.mark.skipif(sys.version_info < (3, 12), reason="Python 3.12 warns when a multi-threaded process forks")
def test_fork_warnings_point_at_the_code_that_forks(pytester: pytest.Pytester) -> None:
    """The os.fork wrapper does not make Python's own fork warning point into the plugin."""
    pytester.makepyfile(
        """
        import threading

        def _wait(event):
            event.wait()

        def test_fork_with_a_thread(ipc_context):
            gate = threading.Event()
            thread = threading.Thread(target=gate.wait)
            thread.start()
            try:
                p = ipc_context.Process(target=_wait, args=(ipc_context.Event(),))
                p.start()
                p.kill()
                p.join()
            finally:
                gate.set()
                thread.join()
        """
    )
    result = pytester.runpytest_subprocess("-p", "pytest_ipc", "--ipc-start-method=fork", "-W", "always")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*popen_fork.py:*: DeprecationWarning: This process * is multi-threaded*"])
    result.stdout.no_fnmatch_line("*pytest_ipc*plugin.py*")

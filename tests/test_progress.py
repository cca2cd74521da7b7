"""The live progress line of a long ``ipc_race`` campaign: on a terminal only.

The inner session runs on a pseudo-terminal (``pty``) where the line must
show, and on a pipe or under ``-q`` where it must not.
"""

from __future__ import annotations

import os
import pty
import subprocess
import sys

import pytest

# About 3 s of runs: past the line's 2 s threshold.  The sleep is the
# campaign's workload, not a synchronisation.
CAMPAIGN = """
import time

import pytest

@pytest.mark.ipc_race(runs=30, budget=60)
def test_long(ipc_outcome):
    time.sleep(0.1)
    ipc_outcome.record(1)
"""


def session_output(pytester: pytest.Pytester, tty: bool, *args: str) -> str:
    pytester.makepyfile(test_long=CAMPAIGN)
    env = dict(os.environ, COLUMNS="160")
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    cmd = [sys.executable, "-m", "pytest", "-p", "pytest_ipc", "-p", "no:cacheprovider", *args]
    if not tty:
        done = subprocess.run(cmd, cwd=pytester.path, env=env, capture_output=True, text=True, timeout=120)
        return done.stdout + done.stderr
    master, slave = pty.openpty()
    proc = subprocess.Popen(cmd, cwd=pytester.path, env=env, stdout=slave, stderr=slave, stdin=subprocess.DEVNULL)
    os.close(slave)
    chunks = []
    try:
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the session closed its end
                break
            if not data:
                break
            chunks.append(data)
    finally:
        os.close(master)
        proc.wait(timeout=120)
    return b"".join(chunks).decode(errors="replace")


def test_a_long_campaign_shows_its_progress_on_a_terminal(pytester: pytest.Pytester) -> None:
    out = session_output(pytester, True)
    assert "1 passed" in out, out
    assert "[ipc_race: " in out and "of at most 30 runs, 1 outcome, no race so far, ~" in out, out
    # Drawn after a saved cursor position, and erased again at the end of the test.
    assert "\0337 [ipc_race: " in out, out
    last = out.rindex("[ipc_race: ")
    assert "\0338\033[K" in out[last:], out[last:]


@pytest.mark.parametrize(("tty", "args"), [(False, ()), (True, ("-q",))], ids=["pipe", "quiet"])
def test_no_progress_line_off_a_terminal_or_under_quiet(
    pytester: pytest.Pytester, tty: bool, args: tuple[str, ...]
) -> None:
    out = session_output(pytester, tty, *args)
    assert "1 passed" in out, out
    assert "[ipc_race: " not in out and "\0337" not in out, out


def test_the_xdist_controller_shows_a_sharded_campaigns_total(pytester: pytest.Pytester) -> None:
    out = session_output(pytester, True, "-n", "2", "--ipc-shards=4")
    assert "4 passed" in out, out
    # One update per shard as its report reaches the controller; the last one says all four.
    assert "[test_long.py::test_long: 4 of 4 shards, 30 runs, no race so far]" in out, out
    assert "\0337 [test_long.py::test_long: 1 of 4 shards, " in out, out

"""Running a real pytest session with the plugin, and reading what it reported.

Shared by the test modules that drive sessions through pytester: the session
runs in a subprocess (the race runner starts worker processes), its workers
run the bodies of ``bodies.py`` (copied in with :func:`copy_bodies`), and its
``ipc race report`` section and ``--ipc-report`` JSON are read back.
"""

from __future__ import annotations

import json
import re
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest
from leftovers import gone, kill, processes_marked, still_alive, wait_until

SEED_RE = re.compile(r"^pytest-ipc: seed (\d+),", re.MULTILINE)

BODIES = Path(__file__).resolve().with_name("bodies.py")

# A private prefix for the named semaphores of an inner session (from
# $IPC_TEST_SEMPREFIX), so that its leftovers in /dev/shm can be told apart
# from other processes' entries.
SEMPREFIX_CONFTEST = """
import multiprocessing
import os

multiprocessing.current_process()._config["semprefix"] = "/" + os.environ["IPC_TEST_SEMPREFIX"]
"""


def copy_bodies(pytester: pytest.Pytester) -> None:
    """Put ``bodies.py`` beside the session's test modules, which ``import bodies`` (so do its spawn workers)."""
    shutil.copy(BODIES, pytester.path / BODIES.name)


def run(pytester: pytest.Pytester, *args: str, timeout: float = 120, cache: bool = True) -> pytest.RunResult:
    """A pytest session in a subprocess, with the plugin, bounded by ``timeout``.

    ``cache=False`` adds ``-p no:cacheprovider``; the default leaves it out,
    so that the session's rerun lines name ``-p pytest_ipc`` alone.
    """
    no_cache = () if cache else ("-p", "no:cacheprovider")
    return pytester.runpytest_subprocess("-p", "pytest_ipc", *no_cache, *args, timeout=timeout)


def session_seed(result: pytest.RunResult) -> int:
    """The session seed printed in the report header."""
    match = SEED_RE.search(result.stdout.str())
    assert match, result.stdout.str()
    return int(match.group(1))


def race_section(result: pytest.RunResult) -> str:
    """The ``ipc race report`` section of the session's output."""
    text = result.stdout.str()
    assert "ipc race report" in text, text
    return text.split("ipc race report", 1)[1]


def report_line(result: pytest.RunResult, nodeid: str) -> re.Match[str]:
    """The ``ipc race report`` line of ``nodeid``: runs, distinct outcomes, verdict."""
    section = race_section(result)
    match = re.search(
        rf"^{re.escape(nodeid)}\s+(\d+) runs\s+(\d+) outcomes?\s+(\S.*?)\s+[\d.]+s(?:  \d+ shards)?$",
        section,
        re.MULTILINE,
    )
    assert match, section
    return match


def load_report(pytester: pytest.Pytester, name: str = "report.json") -> dict[str, Any]:
    """The ``--ipc-report`` JSON file of the session."""
    with open(pytester.path / name) as f:
        return json.load(f)  # type: ignore[no-any-return]


def report_tests(pytester: pytest.Pytester, name: str = "report.json") -> dict[str, dict[str, Any]]:
    """The ``--ipc-report`` entries by node id."""
    return {t["nodeid"]: t for t in load_report(pytester, name)["tests"]}


@dataclass
class Isolation:
    """What tells an inner session's processes and /dev/shm entries apart from everyone else's."""

    marker: str  # $IPC_TEST_RUN, inherited by every process the session starts
    prefix: str  # $IPC_TEST_SEMPREFIX, the prefix of its named semaphores (SEMPREFIX_CONFTEST)
    pidfile: Path  # $IPC_TEST_PIDFILE, where bodies.record_pid writes each worker's pid

    def pids(self) -> list[int]:
        """The pids the session's workers recorded."""
        return [int(p) for p in self.pidfile.read_text().split()] if self.pidfile.exists() else []

    def left_in_shm(self) -> list[str]:
        """The session's entries in /dev/shm."""
        return [e.name for e in Path("/dev/shm").iterdir() if self.prefix in e.name]

    def check_nothing_left(self, pids: list[int]) -> None:
        """None of ``pids``, no process with the marker, no /dev/shm entry is left; what is found is killed."""
        alive = wait_until(lambda: [p for p in pids if not gone(p)], 10)
        left = wait_until(lambda: processes_marked(self.marker), 10)
        described = [_describe(p) for p in left]
        kill(left)  # never leave them behind, even when failing
        kill(alive)
        assert not alive, f"workers outlived the session: {alive}"
        assert not left, "processes of the session outlived it:\n" + "\n".join(described)
        shm = wait_until(self.left_in_shm, 5)
        assert not shm, f"left in /dev/shm: {shm}"


def _describe(proc: psutil.Process) -> str:
    try:
        return f"{proc.pid} {' '.join(proc.cmdline())[:120]}"
    except psutil.Error:
        return f"{proc.pid} (gone meanwhile)"


def isolate(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Isolation:
    """Set the environment of the inner sessions a test runs: pytest-ipc's plugins only, and an :class:`Isolation`.

    Autoload is off: every other installed plugin would cost start-up time
    in each of the session's processes (~1 s a run).
    """
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")
    marker = uuid.uuid4().hex
    isolation = Isolation(marker, f"ipctest{marker[:10]}", tmp_path / "pids.txt")
    monkeypatch.setenv("IPC_TEST_RUN", isolation.marker)
    monkeypatch.setenv("IPC_TEST_SEMPREFIX", isolation.prefix)
    monkeypatch.setenv("IPC_TEST_PIDFILE", str(isolation.pidfile))
    return isolation


@dataclass
class InnerRun:
    """The outcome of one inner session, with what it left behind already checked."""

    result: pytest.RunResult
    elapsed: float
    pids: list[int]

    def join_seconds(self) -> float:
        """How long the inner test's join() took, as it printed it."""
        match = re.search(r"join took ([0-9.]+)s", self.result.stdout.str())
        assert match, "the inner test did not print its join time"
        return float(match.group(1))


def inner_sessions(
    pytester: pytest.Pytester,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    helpers: str,
    conftest: str = SEMPREFIX_CONFTEST,
    *,
    timeout: float,
) -> Callable[..., InnerRun]:
    """A runner of the session written in ``pytester``, under a start method, that checks nothing is left.

    The inner session loads pytest-ipc only (:func:`isolate`), writes each
    worker's pid to ``IPC_TEST_PIDFILE`` (``bodies.record_pid`` does, called
    by ``helpers``) and names its semaphores with ``IPC_TEST_SEMPREFIX``
    (``conftest`` does), so that what outlived it can be told apart.
    """
    isolation = isolate(monkeypatch, tmp_path)
    basetemp = tmp_path / "basetemp"
    copy_bodies(pytester)
    pytester.makepyfile(helpers=helpers)
    pytester.makeconftest(conftest)

    def run_inner(*args: str, method: str) -> InnerRun:
        started = time.monotonic()
        result = run(
            pytester, f"--ipc-start-method={method}", f"--basetemp={basetemp}", *args, timeout=timeout, cache=False
        )
        elapsed = time.monotonic() - started
        pids = isolation.pids()
        isolation.pidfile.unlink(missing_ok=True)
        alive = still_alive(pids)  # a just-killed grandchild may need a moment
        assert not alive, f"processes outlived the session: {alive}"
        leftovers = isolation.left_in_shm()
        assert not leftovers, f"left in /dev/shm: {leftovers}"
        assert not list(basetemp.glob("ipc-workers-*")), "a worker group directory was left behind"
        result.stderr.no_fnmatch_line("*leaked*")  # the resource tracker's complaint
        result.stdout.no_fnmatch_line("*INTERNALERROR*")
        return InnerRun(result, elapsed, pids)

    return run_inner

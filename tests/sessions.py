"""Running a real pytest session with the plugin, and reading what it reported.

Shared by the test modules that drive ``ipc_race`` sessions through pytester:
the session runs in a subprocess (the race runner starts worker processes),
and its ``ipc race report`` section and ``--ipc-report`` JSON are read back.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from leftovers import still_alive

SEED_RE = re.compile(r"^pytest-ipc: seed (\d+),", re.MULTILINE)


def run(pytester: pytest.Pytester, *args: str, timeout: float = 120) -> pytest.RunResult:
    """A pytest session in a subprocess, with the plugin, bounded by ``timeout``."""
    return pytester.runpytest_subprocess("-p", "pytest_ipc", *args, timeout=timeout)


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
    conftest: str,
    timeout: float,
) -> Callable[..., InnerRun]:
    """A runner of the session written in ``pytester``, under a start method, that checks nothing is left.

    The inner session loads pytest-ipc only (every other installed plugin
    would cost ~1 s per run), writes each worker's pid to ``IPC_TEST_PIDFILE``
    (``helpers`` does) and names its semaphores with ``IPC_TEST_SEMPREFIX``
    (``conftest`` does), so that what outlived it can be told apart.
    """
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")
    prefix = f"ipctest{uuid.uuid4().hex[:10]}"
    monkeypatch.setenv("IPC_TEST_SEMPREFIX", prefix)
    pidfile = tmp_path / "pids.txt"
    monkeypatch.setenv("IPC_TEST_PIDFILE", str(pidfile))
    basetemp = tmp_path / "basetemp"
    pytester.makepyfile(helpers=helpers)
    pytester.makeconftest(conftest)

    def run(*args: str, method: str) -> InnerRun:
        started = time.monotonic()
        result = pytester.runpytest_subprocess(
            "-p",
            "pytest_ipc",
            "-p",
            "no:cacheprovider",
            f"--ipc-start-method={method}",
            f"--basetemp={basetemp}",
            *args,
            timeout=timeout,
        )
        elapsed = time.monotonic() - started
        pids = [int(p) for p in pidfile.read_text().split()] if pidfile.exists() else []
        pidfile.unlink(missing_ok=True)
        alive = still_alive(pids)  # a just-killed grandchild may need a moment
        assert not alive, f"processes outlived the session: {alive}"
        leftovers = [name for name in Path("/dev/shm").iterdir() if prefix in name.name]
        assert not leftovers, f"left in /dev/shm: {leftovers}"
        assert not list(basetemp.glob("ipc-workers-*")), "a worker group directory was left behind"
        result.stderr.no_fnmatch_line("*leaked*")  # the resource tracker's complaint
        result.stdout.no_fnmatch_line("*INTERNALERROR*")
        return InnerRun(result, elapsed, pids)

    return run

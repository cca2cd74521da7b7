"""Running a real pytest session with the plugin, and reading what it reported.

Shared by the test modules that drive ``ipc_race`` sessions through pytester:
the session runs in a subprocess (the race runner starts worker processes),
and its ``ipc race report`` section and ``--ipc-report`` JSON are read back.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

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

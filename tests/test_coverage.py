"""Coverage of the code that worker processes run, with coverage.py and with pytest-cov.

Each test writes a user project (a test module, a helper module whose
functions only workers run, a ``.coveragerc`` with nothing but the standard
multiprocessing settings) and runs a real ``coverage run`` + ``combine`` +
``json`` (or ``pytest --cov``) on it, then reads the JSON report back.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import pytest

METHODS = ("fork", "spawn", "forkserver")

# Targets live in a pytest-free module: cheap for spawn workers to import.
# Each marked line runs only in a worker: the parent checks its own pid.
# Its own: the coverage report of this very file is what the tests read.
HELPERS = """
import os

def child_only(parent_pid):
    if os.getpid() == parent_pid:
        raise RuntimeError("must run in a worker")  # GUARD
    value = 42  # CHILD-RETURNS
    return value

def child_fails(parent_pid):
    if os.getpid() == parent_pid:
        raise RuntimeError("must run in a worker")  # GUARD
    message = "raised in the worker"  # CHILD-RAISES
    raise ValueError(message)
"""

TEST_MODULE = """
import os
import pytest
import helpers
from pytest_ipc import WorkerFailed

def test_worker_returns(ipc_workers):
    ipc_workers.start(helpers.child_only, args=(os.getpid(),))
    assert ipc_workers.join() == [42]

def test_worker_raises(ipc_workers):
    ipc_workers.start(helpers.child_fails, args=(os.getpid(),))
    with pytest.raises(WorkerFailed, match="raised in the worker"):
        ipc_workers.join()
"""

# The standard configuration for multiprocessing code (coverage.py's docs,
# and pytest-cov's since it dropped its own subprocess support).
COVERAGERC = """
[run]
concurrency = multiprocessing
parallel = true
sigterm = true
"""

# The environment variables of a coverage run around this suite (the tox
# env "coverage"): the inner runs must start from a clean slate.
OUTER_COVERAGE_ENV = (
    "COVERAGE_PROCESS_CONFIG",
    "COVERAGE_PROCESS_START",
    "COVERAGE_RCFILE",
    "COVERAGE_FILE",
    "COV_CORE_SOURCE",
    "COV_CORE_CONFIG",
    "COV_CORE_DATAFILE",
)


@pytest.fixture
def project(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    """A user project with worker-only lines and a standard multiprocessing .coveragerc."""
    for name in OUTER_COVERAGE_ENV:
        monkeypatch.delenv(name, raising=False)
    pytester.makepyfile(helpers=HELPERS, test_workers=TEST_MODULE)
    (pytester.path / ".coveragerc").write_text(COVERAGERC)
    return pytester


def line_of(pytester: pytest.Pytester, tag: str) -> int:
    """The line number of the line of helpers.py tagged ``# tag``."""
    lines = (pytester.path / "helpers.py").read_text().splitlines()
    return next(i for i, line in enumerate(lines, 1) if line.rstrip().endswith(f"# {tag}"))


def lines_of(pytester: pytest.Pytester, tag: str) -> list[int]:
    """The line numbers of all lines of helpers.py tagged ``# tag``."""
    lines = (pytester.path / "helpers.py").read_text().splitlines()
    return [i for i, line in enumerate(lines, 1) if line.rstrip().endswith(f"# {tag}")]


def helpers_coverage(pytester: pytest.Pytester, report: str) -> dict[str, Any]:
    """The JSON coverage report's entry for helpers.py."""
    with open(pytester.path / report) as f:
        files = json.load(f)["files"]
    return files["helpers.py"]  # type: ignore[no-any-return]


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    """A command of the project's Python in the project directory, bounded in time.

    Not sessions.run: these commands are ``coverage`` as well as ``pytest``.
    """
    return pytester.run(sys.executable, *args, timeout=120)


def coverage_run(pytester: pytest.Pytester, method: str) -> pytest.RunResult:
    """``coverage run -m pytest`` on the project under ``method``, then ``coverage combine``."""
    result = run(
        pytester,
        "-m",
        "coverage",
        "run",
        "-m",
        "pytest",
        "-p",
        "pytest_ipc",
        f"--ipc-start-method={method}",
        f"--basetemp={pytester.path / 'basetemp'}",
        "-q",
    )
    result.assert_outcomes(passed=2)
    combined = run(pytester, "-m", "coverage", "combine")
    assert combined.ret == 0, combined.stderr.str()
    return result


@pytest.mark.parametrize("method", METHODS)
def test_coverage_run_counts_lines_only_workers_execute(project: pytest.Pytester, method: str) -> None:
    """coverage run + combine report the worker-only lines, of a worker that returns and one that raises."""
    coverage_run(project, method)
    reported = run(project, "-m", "coverage", "json", "-o", "cov.json", "--include=helpers.py")
    assert reported.ret == 0, reported.stderr.str()
    data = helpers_coverage(project, "cov.json")
    assert line_of(project, "CHILD-RETURNS") in data["executed_lines"], data
    # A worker whose target raised leaves through SystemExit(1) in the bootstrap: its data is saved too.
    assert line_of(project, "CHILD-RAISES") in data["executed_lines"], data
    # Only the guards that would fail a target run in the parent are missed.
    assert data["missing_lines"] == lines_of(project, "GUARD"), data


def test_without_the_multiprocessing_setting_the_worker_lines_are_missing(project: pytest.Pytester) -> None:
    """The control: without concurrency = multiprocessing the same run misses the worker-only lines."""
    (project.path / ".coveragerc").write_text("[run]\nparallel = true\n")
    coverage_run(project, "fork")
    reported = run(project, "-m", "coverage", "json", "-o", "cov.json", "--include=helpers.py")
    assert reported.ret == 0, reported.stderr.str()
    data = helpers_coverage(project, "cov.json")
    assert line_of(project, "CHILD-RETURNS") in data["missing_lines"], data
    assert line_of(project, "CHILD-RAISES") in data["missing_lines"], data


@pytest.mark.parametrize("method", METHODS)
def test_pytest_cov_counts_lines_only_workers_execute(project: pytest.Pytester, method: str) -> None:
    """pytest --cov with the same .coveragerc reports the worker-only lines as covered."""
    pytest.importorskip("pytest_cov")
    result = run(
        project,
        "-m",
        "pytest",
        "-p",
        "pytest_ipc",
        f"--ipc-start-method={method}",
        f"--basetemp={project.path / 'basetemp'}",
        "--cov=.",
        "--cov-report=json:cov.json",
        "--cov-report=term-missing",
    )
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["helpers.py * 2 * 82%*"])  # 2 missed: the guards
    data = helpers_coverage(project, "cov.json")
    assert line_of(project, "CHILD-RETURNS") in data["executed_lines"], data
    assert line_of(project, "CHILD-RAISES") in data["executed_lines"], data
    # pytest-cov combined the workers' parallel data files and removed them.
    assert not list(project.path.glob(".coverage.*"))

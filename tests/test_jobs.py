"""Campaigns across CI jobs: ``--ipc-job-shard=I/K`` and ``python -m pytest_ipc.merge``.

K separate pytest processes, each with its share of every test's runs and
the same seed, then the merge command on their report files: the same
verdict and histogram as one process making all the runs, including a race
that no single job saw.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from sessions import report_tests, run

SCENARIOS = """
import os

import pytest

# The outcome is a function of the run's own seed, so a run has the same
# outcome whichever job (or one session) makes it.  all_runs: every run, so
# that the histograms can be compared count for count.
@pytest.mark.ipc_race(runs=12, all_runs=True)
def test_by_seed(ipc_workers, ipc_outcome):
    ipc_outcome.record(ipc_workers.seed % 3)

# Each job's runs agree with each other, not with the other jobs' runs.
@pytest.mark.ipc_race(runs=12)
def test_by_job(ipc_outcome):
    ipc_outcome.record(os.environ.get("JOB", "one session"))

@pytest.mark.ipc_race(runs=12)
def test_steady(ipc_outcome):
    ipc_outcome.record(1)
"""

SEED = "4711"
JOBS = 3


def merge(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    """``python -m pytest_ipc.merge`` as a CI merge job runs it."""
    return subprocess.run(
        [sys.executable, "-m", "pytest_ipc.merge", *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=60
    )


def run_jobs(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, jobs: range) -> list[Path]:
    pytester.makepyfile(test_scenarios=SCENARIOS)
    reports = []
    for job in jobs:
        monkeypatch.setenv("JOB", str(job))
        name = f"job{job}.json"
        result = run(pytester, f"--ipc-job-shard={job}/{JOBS}", f"--ipc-seed={SEED}", f"--ipc-report={name}")
        result.stdout.fnmatch_lines([f"pytest-ipc: seed {SEED}, *, job shard {job}/{JOBS}"])
        tests = report_tests(pytester, name)
        # Each job made its own share of the runs and saw no race in test_by_job.
        assert tests["test_scenarios.py::test_by_seed"]["runs"] == 12 // JOBS
        assert tests["test_scenarios.py::test_by_job"]["verdict"] == "passed"
        assert tests["test_scenarios.py::test_by_job"]["job_shard"] == [job, JOBS]
        reports.append(pytester.path / name)
    monkeypatch.delenv("JOB")
    return reports


def test_jobs_and_the_merge_give_one_sessions_verdict_and_histogram(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    reports = run_jobs(pytester, monkeypatch, range(1, JOBS + 1))
    merged = merge(*reports, "--out", "merged.json", cwd=pytester.path)
    assert merged.returncode == 1, merged.stdout + merged.stderr
    tests = {t["nodeid"]: t for t in json.loads((pytester.path / "merged.json").read_text())["tests"]}

    # One session making all the runs, with the same seed.
    single = run(pytester, f"--ipc-seed={SEED}", "--ipc-report=single.json")
    alone = report_tests(pytester, "single.json")
    for name in ("test_by_seed", "test_steady"):
        nodeid = f"test_scenarios.py::{name}"
        facts = ("runs", "distinct", "histogram", "verdict")
        assert [tests[nodeid][k] for k in facts] == [alone[nodeid][k] for k in facts], (tests[nodeid], alone[nodeid])
    assert tests["test_scenarios.py::test_by_seed"]["verdict"] == "race"
    assert tests["test_scenarios.py::test_steady"]["verdict"] == "passed"

    # The race no single job saw: one outcome per job.
    by_job = tests["test_scenarios.py::test_by_job"]
    assert (by_job["verdict"], by_job["runs"], by_job["jobs"]) == ("race", 12, JOBS), by_job
    assert sorted(by_job["histogram"]) == [["'1'", 4], ["'2'", 4], ["'3'", 4]], by_job
    assert alone["test_scenarios.py::test_by_job"]["verdict"] == "passed"  # one session: one outcome
    single.assert_outcomes(failed=1, passed=2)

    out = merged.stdout
    assert "pytest-ipc: merged 3 reports, seed 4711" in out, out
    assert "RaceDetected: outcomes differ across 12 runs of 3 jobs" in out, out
    # The rerun line replays every job's runs in one session.
    assert 'rerun: pytest -p pytest_ipc "test_scenarios.py::test_by_job" --ipc-seed=4711' in out, out
    assert "--ipc-job-shard" not in out.split("test_by_job", 1)[1].split("rerun:", 1)[1].splitlines()[0]


def test_a_merge_of_passing_jobs_passes(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    pytester.makepyfile(test_scenarios=SCENARIOS)
    reports = []
    for job in range(1, JOBS + 1):
        name = f"job{job}.json"
        run(pytester, f"--ipc-job-shard={job}/{JOBS}", f"--ipc-seed={SEED}", f"--ipc-report={name}", "-k", "steady")
        reports.append(name)
    merged = merge(*reports, cwd=pytester.path)
    assert merged.returncode == 0, merged.stdout + merged.stderr
    assert "1 tests, 0 failing" in merged.stdout


def test_a_missing_job_makes_the_merge_incomplete(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    reports = run_jobs(pytester, monkeypatch, range(1, 3))  # job 3 of 3 never reported
    merged = merge(*reports, "--out", "merged.json", cwd=pytester.path)
    assert merged.returncode == 1
    tests = {t["nodeid"]: t for t in json.loads((pytester.path / "merged.json").read_text())["tests"]}
    steady = tests["test_scenarios.py::test_steady"]
    assert (steady["verdict"], steady["missing_jobs"], steady["runs"]) == ("incomplete", ["3/3"], 8), steady
    assert "incomplete: job shards 3/3 sent no runs of this test" in merged.stdout


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "cannot read {path}: No such file or directory"),
        ("{not json", "{path} is not JSON: "),
        ('{"schema": 4}', "{path} is not a pytest-ipc --ipc-report file"),
        ('{"schema": 1, "tests": []}', "{path} has report schema 1; this pytest-ipc merges schema 4"),
        ('{"schema": 4, "tests": [{"nodeid": "t"}]}', "{path}: test 0 lacks runs, failed_runs"),
    ],
    ids=["missing", "not-json", "no-tests", "old-schema", "bad-entry"],
)
def test_a_bad_report_is_a_clear_error(tmp_path: Path, content: str | None, message: str) -> None:
    path = tmp_path / "report.json"
    if content is not None:
        path.write_text(content)
    merged = merge(path, cwd=tmp_path)
    assert merged.returncode == 2
    assert f"pytest_ipc.merge: {message.format(path=path)}" in merged.stderr, merged.stderr
    assert "Traceback" not in merged.stderr


def test_the_same_job_twice_is_refused(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_scenarios=SCENARIOS)
    run(pytester, f"--ipc-job-shard=2/{JOBS}", f"--ipc-seed={SEED}", "--ipc-report=a.json", "-k", "steady")
    merged = merge("a.json", "a.json", cwd=pytester.path)
    assert merged.returncode == 2
    assert "a.json and a.json both hold job shard 2/3" in merged.stderr, merged.stderr


@pytest.mark.parametrize("value", ["0/3", "4/3", "2", "a/b", "1/0"])
def test_a_bad_job_shard_is_a_usage_error(pytester: pytest.Pytester, value: str) -> None:
    pytester.makepyfile(test_scenarios=SCENARIOS)
    result = run(pytester, f"--ipc-job-shard={value}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [f"*pytest-ipc: --ipc-job-shard={value}: expected I/K, this job's share I of K jobs with 1 <= I <= K*"]
    )


def test_job_shards_and_session_shards_together(pytester: pytest.Pytester) -> None:
    """Under xdist-style --ipc-shards, a job's share is split further, and still merges."""
    pytester.makepyfile(test_scenarios=SCENARIOS)
    names = []
    for job in (1, 2):
        name = f"job{job}.json"
        run(pytester, f"--ipc-job-shard={job}/2", "--ipc-shards=2", f"--ipc-seed={SEED}", f"--ipc-report={name}")
        names.append(name)
        by_seed: dict[str, Any] = report_tests(pytester, name)["test_scenarios.py::test_by_seed"]
        assert (by_seed["runs"], by_seed["shards"]) == (6, 2), by_seed
    merge(*names, "--out", "merged.json", cwd=pytester.path)
    single = run(pytester, f"--ipc-seed={SEED}", "--ipc-report=single.json", "-k", "by_seed")
    single.assert_outcomes(failed=1)
    merged = {t["nodeid"]: t for t in json.loads((pytester.path / "merged.json").read_text())["tests"]}
    alone = report_tests(pytester, "single.json")["test_scenarios.py::test_by_seed"]
    assert merged["test_scenarios.py::test_by_seed"]["histogram"] == alone["histogram"]

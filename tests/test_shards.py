"""``--ipc-shards=K``: one ipc_race test split into K items, merged back into one verdict.

Shard i of K runs the runs i, i + K, ... with the seeds they have unsharded;
the controller (or the one process without pytest-xdist) merges the shards'
histograms into one verdict per test.  Most tests record the run index with
``ipc_outcome``, so which shard sees which outcome is known in advance.
"""

from __future__ import annotations

import json
import multiprocessing
import re
import shlex
from typing import Any

import pytest
from sessions import copy_bodies, run, session_seed

# The start method of a session that names none, which these tests accept:
# the platform's default (on Linux fork before Python 3.14, forkserver from 3.14).
DEFAULT_METHOD = multiprocessing.get_start_method()

USAGE_ERROR = pytest.ExitCode.USAGE_ERROR

# Outcomes chosen from the run index: the verdicts follow from the arithmetic.
RECORDED = """
import pytest
from pytest_ipc import stash as state

def run_of(request):
    return state.current_run(request.node)

@pytest.mark.ipc_race(runs={runs})
def test_recorded(ipc_outcome, request):
    run = run_of(request)
    ipc_outcome.record({outcome})
"""

# The seed's counter, as in tests/test_race.py.  Not flaky: 9 workers x 50
# unlocked increments under fork with the default amplification lost updates
# in 200 of 200 measured runs, the most common total in 7 of 200; the merged
# verdict only needs two of the 8 runs to disagree: all 8 agree with a
# chance below 0.035 ** 7 < 1e-10.  The verdicts of the shards (2 runs each)
# are not asserted: a shard's 2 runs may agree.
COUNTER = """
import pytest
from bodies import add, add_locked
from pytest_ipc import stash as state

@pytest.mark.ipc_race(runs=8)
def test_counter(shared_value, ipc_workers):
    ipc_workers.start(add, args=(shared_value, 50), count=9)
    ipc_workers.join()

@pytest.mark.ipc_race(runs=8)
def test_locked(shared_value, ipc_workers):
    ipc_workers.start(add_locked, args=(shared_value, 50), count=9)
    ipc_workers.join()

# With 4 shards, shard i runs i and i + 4: every shard sees one parity only.
@pytest.mark.ipc_race(runs=8)
def test_split(ipc_outcome, request):
    ipc_outcome.record(state.current_run(request.node).index % 2)
"""

RERUN_RE = re.compile(r"^rerun: (pytest .*)$", re.MULTILINE)


def recorded(pytester: pytest.Pytester, runs: int, outcome: str) -> None:
    """A module ``test_rec.py`` with one race test recording ``outcome`` (an expression of ``run``)."""
    pytester.makepyfile(test_rec=RECORDED.format(runs=runs, outcome=outcome))


def load_report(pytester: pytest.Pytester, name: str) -> dict[str, Any]:
    """The --ipc-report JSON file ``name``, by node id."""
    report = json.loads((pytester.path / name).read_text())
    return {test["nodeid"]: test for test in report["tests"]} | {"": report}


def report_line(result: pytest.RunResult, nodeid: str) -> tuple[int, str, int]:
    """The merged ``ipc race report`` line of ``nodeid``: runs, verdict, shards; exactly one."""
    section = result.stdout.str().split("ipc race report", 1)[1]
    found = re.findall(
        rf"^{re.escape(nodeid)}\s+(\d+) runs\s+\d+ outcomes?\s+(\S+)\s+[\d.]+s  (\d+) shards$", section, re.MULTILINE
    )
    assert len(found) == 1, section
    runs, verdict, shards = found[0]
    return int(runs), verdict, int(shards)


def failure_section(result: pytest.RunResult, test: str) -> str:
    """The text of the FAILURES entry of ``test`` (a name with its parameters)."""
    text = result.stdout.str()
    start = re.search(rf"^_+ {re.escape(test)} _+$", text, re.MULTILINE)
    assert start, text
    end = re.search(r"^(_+ \S+ _+|=+ .* =+)$", text[start.end() :], re.MULTILINE)
    return text[start.end() : start.end() + end.start() if end else None]


def test_shards_split_the_runs_and_keep_their_seeds(pytester: pytest.Pytester) -> None:
    """--ipc-shards=3 makes 3 items running runs i, i+3 with the unsharded seeds; the merged histogram is the unsharded one."""
    recorded(pytester, runs=6, outcome="(run.index, run.seed)")
    # Every run (no stop rule), so that the two histograms can be compared run for run.
    plain = run(pytester, "--ipc-seed=4242", "--ipc-report=plain.json", "--ipc-all-runs")
    plain.assert_outcomes(failed=1)  # six distinct outcomes: a "race"
    sharded = run(pytester, "--ipc-seed=4242", "--ipc-shards=3", "-v", "--ipc-report=sharded.json", "--ipc-all-runs")
    sharded.stdout.fnmatch_lines(["pytest-ipc: seed 4242, *, shards 3", "*collected 3 items"])
    sharded.assert_outcomes(failed=3)
    for i in range(3):
        section = failure_section(sharded, f"test_recorded[shard{i + 1}of3]")
        assert "outcomes differ across 2 runs" in section
        assert sorted(int(n) for n in re.findall(r"^\s+\((\d+), \d+\)\s+1$", section, re.MULTILINE)) == [i, i + 3]

    unsharded = load_report(pytester, "plain.json")["test_rec.py::test_recorded"]
    merged = load_report(pytester, "sharded.json")["test_rec.py::test_recorded"]
    assert (merged["runs"], merged["shards"], merged["verdict"]) == (6, 3, "race")
    # The same (index, seed) pairs: every run kept the seed it has unsharded.
    assert sorted(map(tuple, merged["histogram"])) == sorted(map(tuple, unsharded["histogram"]))
    assert {label.split(", ")[0] for label, _ in merged["histogram"]} == {f"({i}" for i in range(6)}
    assert report_line(sharded, "test_rec.py::test_recorded") == (6, "RACE", 3)


def test_race_no_shard_sees_fails_the_session(pytester: pytest.Pytester) -> None:
    """Shards that each pass but disagree with each other fail the session with the merged histogram and a rerun."""
    # Shard 1 runs the even runs and always records 0, shard 2 always 1.
    recorded(pytester, runs=10, outcome="run.index % 2")
    result = run(pytester, "--ipc-shards=2", "--ipc-report=report.json")
    result.assert_outcomes(passed=2)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    seed = session_seed(result)
    result.stdout.fnmatch_lines(
        [
            "test_rec.py::test_recorded: every shard passed, but together they disagree",
            f"RaceDetected: outcomes differ across 10 runs of 2 shards (start method {DEFAULT_METHOD}, seed {seed}, jitter low)",
            "  outcome   runs",
            "        0      5",
            "        1      5",
            f'rerun: pytest -p pytest_ipc "test_rec.py::test_recorded" --ipc-seed={seed} *',
            "*2 passed, 1 raced across shards in *",
        ]
    )
    assert report_line(result, "test_rec.py::test_recorded") == (10, "RACE", 2)
    report = load_report(pytester, "report.json")
    assert report[""]["exitstatus"] == 1
    assert report["test_rec.py::test_recorded"]["histogram"] == [["0", 5], ["1", 5]]

    # The rerun line replays the same runs as one unsharded item, which fails on its own.
    argv = shlex.split(RERUN_RE.search(result.stdout.str()).group(1))  # type: ignore[union-attr]
    assert not any(arg.startswith("--ipc-shards") for arg in argv)
    again = pytester.runpytest_subprocess(*argv[1:], timeout=60)
    again.assert_outcomes(failed=1)
    again.stdout.fnmatch_lines(
        [
            # Unsharded, runs 0 and 1 disagree: it stops soon after (tests/test_stop.py).
            f"RaceDetected: outcomes differ across * runs (start method {DEFAULT_METHOD}, seed {seed}, jitter low)",
            "        0      *",
            "        1      *",
        ]
    )


def test_race_inside_a_shard_fails_that_shard(pytester: pytest.Pytester) -> None:
    """A race within one shard fails that shard's item only; its rerun line reruns that shard."""
    # Shard 1 runs 0, 2, 4 and sees True once; shard 2 runs 1, 3, 5 and sees False only.
    recorded(pytester, runs=6, outcome="run.index == 2")
    result = run(pytester, "--ipc-shards=2", "-v")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        [
            "test_rec.py::test_recorded[[]shard1of2[]] FAILED*",
            "test_rec.py::test_recorded[[]shard2of2[]] PASSED*",
        ]
    )
    section = failure_section(result, "test_recorded[shard1of2]")
    assert "RaceDetected: outcomes differ across 3 runs" in section
    assert report_line(result, "test_rec.py::test_recorded") == (6, "RACE", 2)
    result.stdout.no_fnmatch_line("*every shard passed*")  # the shard's failure already fails the session
    argv = shlex.split(RERUN_RE.search(section).group(1))  # type: ignore[union-attr]
    assert "--ipc-shards=2" in argv
    again = pytester.runpytest_subprocess(*argv[1:], timeout=60)
    again.assert_outcomes(failed=1)
    again.stdout.fnmatch_lines(["*RaceDetected: outcomes differ across 3 runs*"])


def test_xdist_spreads_shards_and_the_controller_merges(pytester: pytest.Pytester) -> None:
    """-n 2 --ipc-shards=4 spreads the shards over both workers; the controller prints and writes one merged entry per test."""
    copy_bodies(pytester)
    pytester.makepyfile(test_counter=COUNTER)
    result = run(pytester, "-n", "2", "-v", "--ipc-shards=4", "--ipc-report=report.json")
    out = result.stdout.str()
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    shard_lines = re.findall(r"^\[(gw\d)\] .*(PASSED|FAILED) (test_counter\.py::\S+)", out, re.MULTILINE)
    assert len(shard_lines) == 12
    assert {worker for worker, _, _ in shard_lines} == {"gw0", "gw1"}
    assert out.count("ipc race report") == 1
    assert report_line(result, "test_counter.py::test_counter") == (8, "RACE", 4)
    assert report_line(result, "test_counter.py::test_locked") == (8, "passed", 4)
    assert report_line(result, "test_counter.py::test_split") == (8, "RACE", 4)
    result.stdout.fnmatch_lines(["test_counter.py::test_locked *", "    total   runs", "      450      8"])
    assert out.count("every shard passed, but together they disagree") == 1
    result.stdout.fnmatch_lines(["test_counter.py::test_split: every shard passed, but together they disagree"])

    report = load_report(pytester, "report.json")
    assert sorted(report) == [
        "",
        "test_counter.py::test_counter",
        "test_counter.py::test_locked",
        "test_counter.py::test_split",
    ]
    assert report[""]["exitstatus"] == 1
    assert report["test_counter.py::test_locked"]["histogram"] == [["450", 8]]
    assert report["test_counter.py::test_split"]["histogram"] == [["0", 4], ["1", 4]]
    assert {(t["runs"], t["shards"]) for k, t in report.items() if k} == {(8, 4)}


SETS = """
import collections
import dataclasses

import pytest

Pair = collections.namedtuple("Pair", "left right")


@dataclasses.dataclass(frozen=True)
class Box:
    items: frozenset
    hidden: frozenset = dataclasses.field(default=frozenset("QRSTUVWXYZ"), repr=False)


@pytest.mark.ipc_race(runs=8)
def test_set(ipc_outcome):
    ipc_outcome.record((
        frozenset("abcdefghijklmnop"),
        frozenset({frozenset({"x", "y", "z"})}),
        Pair(frozenset("ABCDEFGHIJ"), 1),
        Box(frozenset("klmnopqrst")),
    ))
"""


def test_one_outcome_prints_alike_in_every_shard(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    """A constant frozenset is one outcome across xdist workers, whose string hashes (and so set orders) differ."""
    # Each worker salts its string hashes at random: with sixteen one-letter
    # strings, two workers printing the set in one order by chance is very
    # unlikely, so without sorted labels this test fails.
    monkeypatch.delenv("PYTHONHASHSEED", raising=False)
    pytester.makepyfile(test_sets=SETS)
    result = run(pytester, "-n", "2", "--ipc-shards=4", "--ipc-report=report.json")
    result.assert_outcomes(passed=4)
    assert report_line(result, "test_sets.py::test_set") == (8, "passed", 4)
    ((label, runs),) = load_report(pytester, "report.json")["test_sets.py::test_set"]["histogram"]
    assert runs == 8
    assert label.startswith("(frozenset({'a', 'b', 'c', 'd', ")
    assert label.endswith("'t'})))")  # Box(items=frozenset({'k', ..., 't'})), the hidden field not shown


def test_shard_ids_at_collection(pytester: pytest.Pytester) -> None:
    """Only ipc_race tests are sharded, after their other parameters, and never into more shards than runs."""
    pytester.makepyfile(
        test_ids="""
        import pytest

        @pytest.mark.ipc_race(runs=2)
        def test_two(ipc_outcome):
            pass

        @pytest.mark.ipc_race
        @pytest.mark.ipc_start_methods("fork")
        @pytest.mark.parametrize("n", [7])
        def test_default_runs(ipc_start_method, n):
            pass

        @pytest.mark.ipc_race(runs=1)
        def test_one():
            pass

        def test_plain():
            pass
        """
    )
    result = pytester.runpytest("--ipc-shards=3", "--collect-only", "-q")
    assert result.ret == pytest.ExitCode.OK
    assert [line for line in result.stdout.lines if "::" in line] == [
        "test_ids.py::test_two[shard1of2]",
        "test_ids.py::test_two[shard2of2]",
        "test_ids.py::test_default_runs[fork-7-shard1of3]",
        "test_ids.py::test_default_runs[fork-7-shard2of3]",
        "test_ids.py::test_default_runs[fork-7-shard3of3]",
        "test_ids.py::test_one",
        "test_ids.py::test_plain",
    ]


@pytest.mark.parametrize(
    ("args", "ini", "message"),
    [
        (("--ipc-shards=0",), "", "--ipc-shards=0: expected a positive whole number, got '0'"),
        (("--ipc-shards=-2",), "", "--ipc-shards=-2: expected a positive whole number, got '-2'"),
        (("--ipc-shards=two",), "", "--ipc-shards=two: expected a positive whole number, got 'two'"),
        (("--ipc-shards=1.5",), "", "--ipc-shards=1.5: expected a positive whole number, got '1.5'"),
        (("--ipc-shards=10001",), "", "--ipc-shards=10001: '10001' is more than the limit of 10000"),
        ((), "ipc_shards = 0", "ini key ipc_shards = '0' in pytest.ini: expected a positive whole number, got '0'"),
    ],
)
def test_bad_shards_is_a_usage_error(pytester: pytest.Pytester, args: tuple[str, ...], ini: str, message: str) -> None:
    """A bad --ipc-shards or ipc_shards stops the session with exit code 4 and names the value."""
    pytester.makefile(".ini", pytest=f"[pytest]\n{ini}\n")
    pytester.makepyfile("def test_nothing():\n    pass\n")
    result = pytester.runpytest(*args)
    assert result.ret == USAGE_ERROR
    output = pytest.LineMatcher(result.stdout.lines + result.stderr.lines)
    output.fnmatch_lines([f"ERROR: pytest-ipc: {message}"])
    output.no_fnmatch_line("*Traceback*")

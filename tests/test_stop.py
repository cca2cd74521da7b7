"""The stop rule: a racing ``ipc_race`` test stops once its verdict is certain.

The verdict is certain once a run fails (a race if another passes, else a
plain failure), two runs' outcomes differ, or an outcome falls outside
``expect``.  After the proof at most a few more runs start (for the
histogram), so ``runs`` is the most runs a failing test makes and the exact
number a passing one makes; ``all_runs`` (marker
keyword, ``--ipc-all-runs``, ini ``ipc_all_runs``) makes every run.

The scenarios record their outcomes with ``ipc_outcome`` from a counter of
calls, so when each one disagrees is known in advance and no test here
depends on a real race showing, except the tutorial's counter at the end.
"""

from __future__ import annotations

import re

import pytest
from sessions import copy_bodies, race_section, report_line, report_tests, run

from pytest_ipc.race.runner import HISTOGRAM_RUNS

SCENARIOS = """
import pytest

calls = {}

def call(name):
    calls[name] = calls.get(name, 0) + 1
    return calls[name]

@pytest.mark.ipc_race(runs=20)
def test_flip(ipc_outcome):
    ipc_outcome.record(call("flip") % 2)            # runs 0 and 1 disagree

@pytest.mark.ipc_race(runs=20)
def test_fail_then_pass():
    assert call("fail_then_pass") > 1, "only the first run fails"

@pytest.mark.ipc_race(runs=20, expect=1)
def test_unexpected(ipc_outcome):
    ipc_outcome.record(2)                            # outside expect from run 0

@pytest.mark.ipc_race(runs=20)
def test_late(ipc_outcome):
    ipc_outcome.record(call("late") >= 15)          # run 14 is the first to differ

@pytest.mark.ipc_race(runs=20)
def test_steady(ipc_outcome):
    ipc_outcome.record(7)

@pytest.mark.ipc_race(runs=20)
def test_always_fails():
    assert False, "a plain bug, not a race"
"""

# Each scenario's runs are a few milliseconds, far below the histogram's time
# allowance, so the run count only falls short of proof + HISTOGRAM_RUNS if
# the machine stalls for a quarter of a second: the tests accept anything from the
# proof to that bound.
ALLOWANCE = HISTOGRAM_RUNS


def proven_after(pytester: pytest.Pytester, *args: str) -> dict[str, dict[str, object]]:
    pytester.makepyfile(test_scenarios=SCENARIOS)
    result = run(pytester, "--ipc-report=report.json", *args)
    result.assert_outcomes(failed=5, passed=1)
    return report_tests(pytester)


def test_a_racing_test_stops_soon_after_the_proof_and_says_why(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_scenarios=SCENARIOS)
    result = run(pytester, "--ipc-report=report.json", "-rf")
    result.assert_outcomes(failed=5, passed=1)
    tests = report_tests(pytester)
    assert tests["test_scenarios.py::test_fail_then_pass"]["verdict"] == "race"
    assert tests["test_scenarios.py::test_always_fails"]["verdict"] == "failed"
    proofs = {
        "test_scenarios.py::test_flip": (2, "runs 0 and 1 disagree (1 and 0)"),
        "test_scenarios.py::test_fail_then_pass": (1, "run 0 failed (AssertionError)"),
        "test_scenarios.py::test_always_fails": (1, "run 0 failed (AssertionError)"),
        "test_scenarios.py::test_unexpected": (1, "the outcome 2 of run 0 is not the expected one"),
        "test_scenarios.py::test_late": (15, "runs 0 and 14 disagree (False and True)"),
    }
    section = race_section(result)
    for nodeid, (proof, reason) in proofs.items():
        entry = tests[nodeid]
        assert proof <= entry["runs"] <= proof + ALLOWANCE, entry
        assert (entry["max_runs"], entry["stopped_early"]) == (20, reason), entry
        assert sum(n for _, n in entry["histogram"]) == entry["runs"]
        assert entry["verdict"] in ("race", "unexpected", "failed"), entry
        note = f"stopped after {entry['runs']} of at most 20 runs, as the verdict was certain: {reason}"
        # In the failure message, and under the test's line of the race report.
        failures = result.stdout.str().split("ipc race report", 1)[0]
        assert f"{note}; all_runs=True or --ipc-all-runs makes every run" in failures, (note, failures)
        line = report_line(result, nodeid)
        assert line.group(1) == str(entry["runs"])
        assert re.search(rf"^{re.escape(line.group(0))}\n  {re.escape(note)}", section, re.MULTILINE), section


def test_a_race_free_test_makes_every_run(pytester: pytest.Pytester) -> None:
    entry = proven_after(pytester)["test_scenarios.py::test_steady"]
    assert (entry["runs"], entry["max_runs"], entry["stopped_early"], entry["verdict"]) == (20, 20, None, "passed")


@pytest.mark.parametrize(
    ("args", "ini"),
    [
        (("--ipc-all-runs",), ""),
        ((), "ipc_all_runs = true"),
        ((), "ipc_all_runs = yes"),
    ],
    ids=["option", "ini-true", "ini-yes"],
)
def test_all_runs_from_the_option_or_ini_makes_every_run(
    pytester: pytest.Pytester, args: tuple[str, ...], ini: str
) -> None:
    if ini:
        pytester.makeini(f"[pytest]\n{ini}\n")
    tests = proven_after(pytester, *args)
    assert {(t["runs"], t["max_runs"], t["stopped_early"]) for t in tests.values()} == {(20, 20, None)}
    assert tests["test_scenarios.py::test_flip"]["histogram"] == [["0", 10], ["1", 10]]


def test_the_marker_keyword_overrides_the_session(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_keyword="""
        import pytest

        calls = {"keep": 0, "stop": 0}

        @pytest.mark.ipc_race(runs=12, all_runs=True)
        def test_keep(ipc_outcome):
            calls["keep"] += 1
            ipc_outcome.record(calls["keep"] % 3)

        @pytest.mark.ipc_race(runs=12, all_runs=False)
        def test_stop(ipc_outcome):
            calls["stop"] += 1
            ipc_outcome.record(calls["stop"] % 3)
        """
    )
    pytester.makeini("[pytest]\nipc_all_runs = true\n")
    result = run(pytester, "--ipc-report=report.json")
    result.assert_outcomes(failed=2)
    tests = report_tests(pytester)
    keep, stop = tests["test_keyword.py::test_keep"], tests["test_keyword.py::test_stop"]
    assert (keep["runs"], keep["stopped_early"], keep["histogram"]) == (12, None, [["0", 4], ["1", 4], ["2", 4]])
    assert 2 <= stop["runs"] <= 2 + ALLOWANCE and stop["stopped_early"] == "runs 0 and 1 disagree (1 and 2)", stop


@pytest.mark.parametrize(
    ("where", "value", "message"),
    [
        ("marker", '"yes"', ["test_bad.py::test_it: ", "all_runs must be True or False, got 'yes'"]),
        (
            "ini",
            "maybe",
            ["pytest-ipc: ini key ipc_all_runs = 'maybe' in tox.ini: expected true or false, got 'maybe'"],
        ),
    ],
)
def test_bad_all_runs_is_a_clear_error(pytester: pytest.Pytester, where: str, value: str, message: list[str]) -> None:
    keyword = f", all_runs={value}" if where == "marker" else ""
    pytester.makepyfile(
        test_bad=f"""
        import pytest

        @pytest.mark.ipc_race(runs=2{keyword})
        def test_it():
            pass
        """
    )
    if where == "ini":
        pytester.makeini(f"[pytest]\nipc_all_runs = {value}\n")
    result = run(pytester)
    text = result.stdout.str() + result.stderr.str()
    assert all(part in text for part in message), text
    assert "INTERNALERROR" not in text
    assert result.ret != 0


def test_a_budget_still_bounds_a_race_free_test_and_the_stop_rule_a_racing_one(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_budget="""
        import pytest

        calls = {"flip": 0}

        @pytest.mark.ipc_race(runs=1000, budget=60)
        def test_flip(ipc_outcome):
            calls["flip"] += 1
            ipc_outcome.record(calls["flip"] % 2)

        @pytest.mark.ipc_race(runs=100000, budget=0.5)
        def test_steady(ipc_outcome):
            ipc_outcome.record(1)
        """
    )
    result = run(pytester, "--ipc-report=report.json")
    result.assert_outcomes(failed=1, passed=1)
    tests = report_tests(pytester)
    flip, steady = tests["test_budget.py::test_flip"], tests["test_budget.py::test_steady"]
    assert 2 <= flip["runs"] <= 2 + ALLOWANCE and flip["max_runs"] == 1000, flip
    # The budget stopped it, not a proof: it is not "stopped early".
    assert 1 <= steady["runs"] < 100000 and steady["stopped_early"] is None, steady


def test_shards_each_stop_and_merge_to_one_verdict(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_scenarios=SCENARIOS)
    result = run(pytester, "--ipc-report=report.json", "--ipc-shards=2", "-k", "flip or steady")
    tests = report_tests(pytester)
    flip, steady = tests["test_scenarios.py::test_flip"], tests["test_scenarios.py::test_steady"]
    # Each shard of test_flip sees its own calls flip, so each stops after its proof.
    assert (flip["verdict"], flip["shards"], flip["max_runs"]) == ("race", 2, 20), flip
    assert 2 * 2 <= flip["runs"] <= 2 * (2 + ALLOWANCE) and flip["stopped_early"], flip
    assert (steady["verdict"], steady["runs"], steady["max_runs"], steady["stopped_early"]) == ("passed", 20, 20, None)
    assert report_line(result, "test_scenarios.py::test_flip").group(1) == str(flip["runs"])


def test_the_tutorial_counter_stops_long_before_its_last_run(pytester: pytest.Pytester) -> None:
    # Not flaky: 9 workers x 50 unlocked increments under fork lost updates in
    # 200 of 200 measured runs with 89 distinct totals (see test_race.COUNTER),
    # so two of the first runs disagree; making 190 of 200 runs would need the
    # first 187 totals to agree.
    copy_bodies(pytester)
    pytester.makepyfile(
        test_counter="""
        import pytest

        from bodies import add

        @pytest.mark.ipc_race(runs=200)
        def test_counter(shared_value, ipc_workers):
            ipc_workers.start(add, args=(shared_value, 50), count=9)
            ipc_workers.join()
        """
    )
    result = run(pytester, "--ipc-report=report.json", "--ipc-start-method=fork")
    result.assert_outcomes(failed=1)
    entry = report_tests(pytester)["test_counter.py::test_counter"]
    assert entry["verdict"] == "race" and 2 <= entry["runs"] < 190, entry
    assert entry["stopped_early"].startswith("runs ") and "disagree" in entry["stopped_early"], entry


def test_only_the_first_failed_runs_traceback_is_formatted(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A later run's failure keeps its exception type, not a traceback nobody is shown (it costs ~20 ms a run)."""
    pytester.makepyfile(
        test_formatted="""
        import os

        import pytest

        class Loud(Exception):
            def __str__(self):
                # pytest calls it while it formats the traceback of a failed call.
                with open(os.environ["FORMATTED"], "a") as f:
                    f.write(".")
                return "loud"

        @pytest.mark.ipc_race(runs=6, all_runs=True)
        def test_fails(ipc_outcome):
            raise Loud()
        """
    )
    formatted = pytester.path / "formatted.txt"
    monkeypatch.setenv("FORMATTED", str(formatted))
    result = run(pytester, "--ipc-report=report.json")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["RunsFailed: failed in 6 of 6 runs *", "*failed (Loud)      6", "E       *Loud: loud"])
    entry = report_tests(pytester)["test_formatted.py::test_fails"]
    assert (entry["runs"], entry["failed_runs"], entry["histogram"]) == (6, 6, [["failed (Loud)", 6]])
    # Run 0's traceback only (pytest may ask the exception for its text more than once).
    assert 1 <= len(formatted.read_text()) <= 2, formatted.read_text()

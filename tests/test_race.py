"""The ``ipc_race`` marker: many runs, one verdict, a histogram and a seed to replay.

Every test writes a small test module and runs a real pytest session on it
(in a subprocess: the race runner starts worker processes).
"""

from __future__ import annotations

import multiprocessing
import re
import shlex

import pytest
from sessions import copy_bodies, load_report, report_line, run, session_seed

# The start method of a session that names none, which these tests accept:
# the platform's default (on Linux fork before Python 3.14, forkserver from 3.14).
DEFAULT_METHOD = multiprocessing.get_start_method()

# The seed's counter, unlocked and locked, as users write it.  The worker
# targets are bodies.py's (copy_bodies puts it beside the module), so the
# scenario is the same under every start method.
COUNTER = """
import pytest

from bodies import add, add_locked

# Not flaky: with the default amplification (jitter low) and the start
# barrier of ipc_workers, 9 workers x 50 unlocked increments under fork lost
# updates in 200 of 200 measured runs (89 distinct totals, the most common one
# in 7 of 200 runs, none of them 450).  The test only needs two of its 20 runs
# to disagree; the chance that all 20 agree is below 0.035 ** 19 < 1e-27
# (tests that use COUNTER_10 run 10: below 0.035 ** 9 < 1e-13).
@pytest.mark.ipc_race(runs=20)
def test_counter(shared_value, ipc_workers):
    ipc_workers.start(add, args=(shared_value, 50), count=9)
    ipc_workers.join()

@pytest.mark.ipc_race(runs=20)
def test_locked(shared_value, ipc_workers):
    ipc_workers.start(add_locked, args=(shared_value, 50), count=9)
    ipc_workers.join()
"""

COUNTER_10 = COUNTER.replace("runs=20", "runs=10")

# Race tests without processes: the outcome comes from ipc_outcome, so the
# verdict is known in advance and the session is fast.
RECORDED = """
import pytest

calls = {"steady": 0, "flip": 0, "broken": 0}

@pytest.mark.ipc_race(runs=4)
def test_steady(ipc_outcome):
    calls["steady"] += 1
    ipc_outcome.record((1, "one"))

@pytest.mark.ipc_race(runs=4)
def test_flip(ipc_outcome):
    calls["flip"] += 1
    ipc_outcome.record(calls["flip"] % 2)

@pytest.mark.ipc_race(runs=3)
def test_broken():
    assert 1 == 2, "always"

@pytest.mark.ipc_race(runs=3, expect=2)
def test_wrong(ipc_outcome):
    ipc_outcome.record(3)

@pytest.mark.ipc_race(runs=3)
def test_unhashable(ipc_outcome):
    ipc_outcome.record([1, 2])

def test_plain():
    pass
"""

RERUN_RE = re.compile(r"^rerun: (pytest .*)$", re.MULTILINE)
FIRST_FAILURE_RE = re.compile(r"^first failure \(run (\d+), seed (\d+)\):$", re.MULTILINE)


def histogram_after(lines: list[str], headline: str) -> list[tuple[str, int]]:
    """The histogram rows printed after the line starting with ``headline``."""
    start = next(i for i, line in enumerate(lines) if line.startswith(headline))
    assert re.fullmatch(r"\s+(total|outcome)   runs", lines[start + 1]), lines[start + 1]
    rows = []
    for line in lines[start + 2 :]:
        match = re.fullmatch(r"\s+(\S.*?)\s+(\d+)", line)
        if not match:
            break
        rows.append((match.group(1), int(match.group(2))))
    return rows


# -- verdicts -----------------------------------------------------------------


def test_seed_counter_races_and_locked_counter_passes(pytester: pytest.Pytester) -> None:
    """The unlocked counter fails with RaceDetected and a most-common-first histogram; the locked one passes."""
    copy_bodies(pytester)
    pytester.makepyfile(test_counter=COUNTER)
    # Every run, for a histogram of 20 (tests/test_stop.py: without it the race stops early).
    result = run(pytester, "-v", "--ipc-all-runs")
    result.assert_outcomes(failed=1, passed=1)
    seed = session_seed(result)
    result.stdout.fnmatch_lines(
        [
            f"RaceDetected: totals differ across 20 runs (start method {DEFAULT_METHOD}, seed {seed}, jitter low)",
            "  total   runs",
            f'rerun: pytest -p pytest_ipc "test_counter.py::test_counter" --ipc-seed={seed}*',
        ]
    )
    rows = histogram_after(result.outlines, "RaceDetected: totals differ")
    counts = [n for _, n in rows]
    assert len(rows) > 1
    assert sum(counts) == 20
    assert counts == sorted(counts, reverse=True)
    assert all(label.isdigit() and int(label) <= 450 for label, _ in rows)
    assert report_line(result, "test_counter.py::test_counter").groups()[::2] == ("20", "RACE")
    assert report_line(result, "test_counter.py::test_locked").groups() == ("20", "1", "passed")
    result.stdout.fnmatch_lines(
        ["*ipc race report*", "test_counter.py::test_locked*", "    total   runs", "      450     20"]
    )
    result.stdout.fnmatch_lines(["FAILED test_counter.py::test_counter - pytest_ipc.RaceDetected: totals differ*"])


def test_function_fixtures_are_fresh_each_run(pytester: pytest.Pytester) -> None:
    """Function-scoped fixtures (tmp_path too) are set up once per run, module-scoped ones once."""
    pytester.makepyfile(
        test_fixtures="""
        import pytest

        counts = {"function setup": 0, "function teardown": 0, "module setup": 0, "module teardown": 0}
        paths = []

        @pytest.fixture(scope="module")
        def once():
            counts["module setup"] += 1
            yield
            counts["module teardown"] += 1

        @pytest.fixture
        def each():
            counts["function setup"] += 1
            yield
            counts["function teardown"] += 1

        @pytest.mark.ipc_race(runs=7)
        def test_race(once, each, tmp_path, ipc_outcome):
            assert not (tmp_path / "left-by-an-earlier-run").exists()
            (tmp_path / "left-by-an-earlier-run").write_text("x")
            paths.append(tmp_path)
            ipc_outcome.record("same")

        def test_counts(once):
            assert counts == {"function setup": 7, "function teardown": 7,
                              "module setup": 1, "module teardown": 0}
            assert len(set(paths)) == 7
        """
    )
    result = run(pytester, "-v")
    result.assert_outcomes(passed=2)
    assert report_line(result, "test_fixtures.py::test_race").groups() == ("7", "1", "passed")


EXPECT_CASES = [  # (expect=, recorded outcome, passes)
    ("450", "450", True),
    ("450", "449", False),
    ("[449, 450]", "449", True),
    ("{(1, 'a'), (2, 'b')}", "(2, 'b')", True),
    ("{(1, 'a'), (2, 'b')}", "(3, 'c')", False),
]


def test_expect(pytester: pytest.Pytester) -> None:
    """Agreeing runs pass when the outcome is (one of) ``expect``, else UnexpectedOutcome; a race comes first."""
    source = ["import pytest", "calls = [0]"]
    for i, (expect, recorded, _) in enumerate(EXPECT_CASES):
        source += [
            f"@pytest.mark.ipc_race(runs=3, expect={expect})",
            f"def test_case{i}(ipc_outcome):",
            f"    ipc_outcome.record({recorded})",
        ]
    source += [
        "@pytest.mark.ipc_race(runs=4, expect=[0, 1])",
        "def test_flip(ipc_outcome):",
        "    calls[0] += 1",
        "    ipc_outcome.record(calls[0] % 2)",
    ]
    pytester.makepyfile(test_expect="\n".join(source))
    result = run(pytester, "-v")
    result.assert_outcomes(passed=3, failed=3)
    for i, (expect, recorded, passes) in enumerate(EXPECT_CASES):
        result.stdout.fnmatch_lines([f"test_expect.py::test_case{i} {'PASSED' if passes else 'FAILED'}*"])
        if not passes:
            result.stdout.fnmatch_lines(
                [
                    f"*_ test_case{i} _*",
                    # A set's repr has no fixed order.
                    f"UnexpectedOutcome: outcome {recorded} of all 3 runs is not the expected "
                    f"{'{*}' if expect.startswith('{') else expect} (start method *",
                    "*outcome   runs",
                    f"*{recorded}      3",
                ]
            )
    # Runs that disagree fail as a race even when every outcome is acceptable.
    result.stdout.fnmatch_lines(
        [
            "*_ test_flip _*",
            "RaceDetected: outcomes differ across 4 runs *",
            "  outcome   runs",
            "        0      2",
            "        1      2",
        ]
    )


def test_budget_stops_new_runs(pytester: pytest.Pytester) -> None:
    """No run starts after the budget; at least one always runs; fewer runs than asked."""
    pytester.makepyfile(
        test_budget="""
        import time
        import pytest

        # The sleeps make each run last 0.2 s; they synchronise nothing.
        @pytest.mark.ipc_race(budget=0.5)
        def test_some(ipc_outcome):
            time.sleep(0.2)
            ipc_outcome.record(1)

        @pytest.mark.ipc_race(runs=10, budget=0.05)
        def test_one(ipc_outcome):
            time.sleep(0.2)
            ipc_outcome.record(1)
        """
    )
    result = run(pytester, "--ipc-runs=50", "--ipc-report=report.json")
    result.assert_outcomes(passed=2)
    runs = {t["nodeid"]: t["runs"] for t in load_report(pytester)["tests"]}
    # Run k starts at 0.2 * k s at the earliest, and only before 0.5 s: k <= 2.
    assert 1 <= runs["test_budget.py::test_some"] <= 3
    assert runs["test_budget.py::test_one"] == 1


# -- xfail, outcomes, failing runs ------------------------------------------


def test_xfail_strict_race_detected(pytester: pytest.Pytester) -> None:
    """xfail(strict, raises=RaceDetected): xfailed on a race, XPASS(strict) failure without one."""
    copy_bodies(pytester)
    pytester.makepyfile(
        test_xfail=COUNTER_10.replace(
            "@pytest.mark.ipc_race(runs=10)",
            "@pytest.mark.xfail(strict=True, raises=pytest_ipc.RaceDetected, reason='known race')\n"
            "@pytest.mark.ipc_race(runs=10)",
        ).replace("import pytest", "import pytest\nimport pytest_ipc", 1)
    )
    result = run(pytester, "-rxX")
    result.assert_outcomes(xfailed=1, failed=1)
    result.stdout.fnmatch_lines(["*[[]XPASS(strict)] known race*"])
    result.stdout.fnmatch_lines(["XFAIL test_xfail.py::test_counter - known race"])
    assert report_line(result, "test_xfail.py::test_counter").group(3) == "RACE (xfail)"
    assert report_line(result, "test_xfail.py::test_locked").group(3) == "XPASS(strict)"


def test_recorded_outcomes_and_verdicts(pytester: pytest.Pytester) -> None:
    """ipc_outcome tuples, a race, all runs failing, an unhashable outcome: one result line each."""
    pytester.makepyfile(test_recorded=RECORDED)
    result = run(pytester, "-v")
    result.assert_outcomes(passed=2, failed=4)
    out = result.stdout.str()
    for name, outcome in [
        ("steady", "PASSED"),
        ("flip", "FAILED"),
        ("broken", "FAILED"),
        ("wrong", "FAILED"),
        ("unhashable", "FAILED"),
        ("plain", "PASSED"),
    ]:
        lines = re.findall(rf"^test_recorded.py::test_{name} \w+", out, re.MULTILINE)
        assert lines == [f"test_recorded.py::test_{name} {outcome}"]
    # Recorded outcomes take the place of the automatic total, tuples included.
    assert histogram_after(result.outlines, "RaceDetected: outcomes differ across 4 runs") == [("0", 2), ("1", 2)]
    result.stdout.fnmatch_lines(
        ["test_recorded.py::test_steady *4 runs*passed*", "       outcome   runs", "    (1, 'one')      4"]
    )
    # Every run failing is a plain bug: RunsFailed, not RaceDetected.
    result.stdout.fnmatch_lines(
        [
            "*_ test_broken _*",
            "RunsFailed: failed in 3 of 3 runs *",
            "  failed (AssertionError)      3",
            "first failure (run 0, seed *):",
            "E       AssertionError: always",
        ]
    )
    result.stdout.fnmatch_lines(
        [
            "*_ test_unhashable _*",
            "RunsFailed: failed in 3 of 3 runs *",
            "*failed (UnhashableOutcome)      3",
            "*outcome must be hashable*got list [[]1, 2]*tuple instead of a list*",
        ]
    )
    result.stdout.fnmatch_lines(["FAILED test_recorded.py::test_broken - pytest_ipc.RunsFailed: *"])
    assert report_line(result, "test_recorded.py::test_broken").group(3) == "FAILED"
    result.stdout.no_fnmatch_line("*INTERNALERROR*")


def test_some_runs_failing_is_a_race(pytester: pytest.Pytester) -> None:
    """A test failing in its third run only: "failed in 1 of N runs" with that run's traceback."""
    pytester.makepyfile(
        test_third="""
        import pytest

        calls = [0]

        @pytest.mark.ipc_race(runs=5)
        def test_third_run_fails(ipc_outcome):
            calls[0] += 1
            print("this is run", calls[0])
            assert calls[0] != 3, "the third run"
            ipc_outcome.record("fine")
        """
    )
    result = run(pytester)
    result.assert_outcomes(failed=1)
    seed = session_seed(result)
    result.stdout.fnmatch_lines(
        [
            f"RaceDetected: failed in 1 of 5 runs (start method {DEFAULT_METHOD}, seed {seed}, jitter low)",
            "                  outcome   runs",
            "                   'fine'      4",
            "  failed (AssertionError)      1",
            "first failure (run 2, seed *):",
            "    @pytest.mark.ipc_race(runs=5)",
            "    def test_third_run_fails(ipc_outcome):",
            '>       assert calls[0] != 3, "the third run"',
            "E       AssertionError: the third run",
            "test_third.py:9: AssertionError",
            'rerun: pytest -p pytest_ipc "test_third.py::test_third_run_fails" *',
            # The captured output is that of the run whose traceback is shown.
            "*Captured stdout call*",
            "this is run 3",
        ]
    )
    result.stdout.no_fnmatch_line("this is run [1245]")


def test_race_under_spawn(pytester: pytest.Pytester) -> None:
    """Under a parametrized start method the verdict names it and the rerun line is the test id alone."""
    copy_bodies(pytester)  # a pytest-free target module: each spawn worker imports it
    pytester.makepyfile(
        test_spawn="""
        import pytest
        from bodies import add_locked

        @pytest.mark.ipc_start_methods("spawn")
        @pytest.mark.ipc_race(runs=2, expect=99)
        def test_locked(shared_value, ipc_workers):
            ipc_workers.start(add_locked, args=(shared_value, 50), count=2)
            ipc_workers.join()
        """,
    )
    result = run(pytester)
    result.assert_outcomes(failed=1)
    seed = session_seed(result)
    result.stdout.fnmatch_lines(
        [
            f"UnexpectedOutcome: outcome 100 of all 2 runs is not the expected 99 (start method spawn, seed {seed}, *",
            "  total   runs",
            "    100      2",
            f'rerun: pytest -p pytest_ipc "test_spawn.py::test_locked[[]spawn]" --ipc-seed={seed}',
        ]
    )
    assert report_line(result, "test_spawn.py::test_locked[spawn]").groups() == ("2", "1", "UNEXPECTED")


# -- report, JSON, seeds, xdist --------------------------------------------------


def test_json_report(pytester: pytest.Pytester) -> None:
    """--ipc-report writes the schema, the seed and one entry per marked test with its facts."""
    pytester.makepyfile(test_recorded=RECORDED)
    result = run(pytester, "--ipc-report=out/report.json")
    result.assert_outcomes(passed=2, failed=4)
    report = load_report(pytester, "out/report.json")
    assert report["schema"] == 4
    assert report["seed"] == session_seed(result)
    assert report["exitstatus"] == 1
    tests = {t["nodeid"]: t for t in report["tests"]}
    assert sorted(tests) == [f"test_recorded.py::test_{n}" for n in ("broken", "flip", "steady", "unhashable", "wrong")]
    facts = {n: (t["runs"], t["distinct"], t["histogram"], t["verdict"]) for n, t in tests.items()}
    assert facts == {
        "test_recorded.py::test_steady": (4, 1, [["(1, 'one')", 4]], "passed"),
        "test_recorded.py::test_flip": (4, 2, [["0", 2], ["1", 2]], "race"),
        "test_recorded.py::test_broken": (3, 1, [["failed (AssertionError)", 3]], "failed"),
        "test_recorded.py::test_wrong": (3, 1, [["3", 3]], "unexpected"),
        "test_recorded.py::test_unhashable": (3, 1, [["failed (UnhashableOutcome)", 3]], "failed"),
    }
    assert all(t["seed"] == report["seed"] and t["start_method"] == DEFAULT_METHOD for t in tests.values())
    assert not list(pytester.path.glob("out/*.tmp"))


def test_rerun_line_replays_the_seeds(pytester: pytest.Pytester) -> None:
    """The seed is in the header and the rerun line; rerunning that line gives every run the same seed."""
    pytester.makepyfile(
        test_replay="""
        import pytest

        calls = [0]

        @pytest.mark.ipc_race
        def test_second_run_fails(ipc_outcome):
            calls[0] += 1
            assert calls[0] != 2
            ipc_outcome.record(0)
        """
    )
    first = run(pytester, "--ipc-runs=3")
    first.assert_outcomes(failed=1)
    seed = session_seed(first)
    run_index, run_seed = FIRST_FAILURE_RE.search(first.stdout.str()).groups()  # type: ignore[union-attr]
    assert run_index == "1"
    rerun = RERUN_RE.search(first.stdout.str())
    assert rerun, first.stdout.str()
    argv = shlex.split(rerun.group(1))
    assert f"--ipc-seed={seed}" in argv
    assert "--ipc-runs=3" in argv  # a rerun with fewer runs could miss the failing one

    again = pytester.runpytest_subprocess(*argv[1:], timeout=120)
    again.assert_outcomes(failed=1)
    assert session_seed(again) == seed
    assert FIRST_FAILURE_RE.search(again.stdout.str()).groups() == (run_index, run_seed)  # type: ignore[union-attr]

    other = run(pytester, "--ipc-runs=3", f"--ipc-seed={(seed + 1) % 100_000}")
    assert FIRST_FAILURE_RE.search(other.stdout.str()).group(2) != run_seed  # type: ignore[union-attr]


def test_xdist_controller_reports_once(pytester: pytest.Pytester) -> None:
    """Under -n 2 the controller prints the race report once and writes the JSON; workers share its seed."""
    copy_bodies(pytester)
    pytester.makepyfile(test_counter=COUNTER_10, test_recorded=RECORDED.replace("def test_plain", "def _plain"))
    result = run(
        pytester, "-n", "2", "-v", "--ipc-report=report.json", "-k", "not broken and not wrong and not unhashable"
    )
    result.assert_outcomes(passed=2, failed=2)
    seed = session_seed(result)
    out = result.stdout.str()
    assert out.count("ipc race report") == 1
    assert {"[gw0]", "[gw1]"} <= set(re.findall(r"\[gw\d\]", out))
    result.stdout.fnmatch_lines(
        [f"RaceDetected: totals differ across * runs (start method {DEFAULT_METHOD}, seed {seed}, *"]
    )
    for nodeid, verdict in [
        ("test_counter.py::test_counter", "RACE"),
        ("test_counter.py::test_locked", "passed"),
        ("test_recorded.py::test_flip", "RACE"),
        ("test_recorded.py::test_steady", "passed"),
    ]:
        assert report_line(result, nodeid).group(3) == verdict
    result.stdout.fnmatch_lines(["test_counter.py::test_locked *", "    total   runs", "      450     10"])
    report = load_report(pytester)
    assert report["seed"] == seed
    # Only the controller sees the tests of both workers.
    assert len(report["tests"]) == 4
    assert {t["seed"] for t in report["tests"]} == {seed}


# -- pytest's own options --------------------------------------------------------


def test_exitfirst_stops_after_first_failing_race_test(pytester: pytest.Pytester) -> None:
    """-x stops the session after the first race test that fails."""
    pytester.makepyfile(test_recorded=RECORDED)
    result = run(pytester, "-x")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*stopping after 1 failures*"])
    assert "test_recorded.py::test_broken" not in result.stdout.str()


def test_last_failed_reruns_only_the_failed_race_test(pytester: pytest.Pytester) -> None:
    """--lf reruns only the race test that failed, as a race test again."""
    pytester.makepyfile(test_recorded=RECORDED)
    run(pytester, "-k", "steady or flip").assert_outcomes(passed=1, failed=1, deselected=4)
    result = run(pytester, "--lf", "-v")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["run-last-failure: rerun previous 1 failure*", "test_recorded.py::test_flip FAILED*"])
    assert report_line(result, "test_recorded.py::test_flip").groups() == ("4", "2", "RACE")
    result.stdout.no_fnmatch_line("*test_steady*")


def test_count_repeats_are_separate_race_tests(pytester: pytest.Pytester) -> None:
    """--count=3 (pytest-repeat) gives three race tests, each with its own runs and result line."""
    pytester.makepyfile(
        test_repeat="""
        import pytest

        setups = [0]

        @pytest.fixture
        def counted():
            setups[0] += 1

        @pytest.mark.ipc_race(runs=4)
        def test_race(counted, ipc_outcome):
            ipc_outcome.record("same")

        def test_setups():
            assert setups[0] == 3 * 4
        """
    )
    result = run(pytester, "--count=3", "-v", "-p", "no:randomly")
    result.assert_outcomes(passed=6)
    for i in (1, 2, 3):
        nodeid = f"test_repeat.py::test_race[{i}-3]"
        assert len(re.findall(rf"^{re.escape(nodeid)} PASSED", result.stdout.str(), re.MULTILINE)) == 1
        assert report_line(result, nodeid).groups() == ("4", "1", "passed")


# -- bad input ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("marker", "message"),
    [
        ("runs=0", "runs: expected a positive whole number, got 0"),
        ("runs='many'", "runs: expected a positive whole number, got 'many'"),
        ("budget=-1", "budget: expected a positive number of seconds, got -1"),
        ("rnus=5", "got an unexpected keyword argument 'rnus' (it takes: runs, budget, expect, jitter, all_runs)"),
    ],
)
def test_bad_marker_arguments(pytester: pytest.Pytester, marker: str, message: str) -> None:
    """A bad ipc_race argument is a collection error naming the test, the marker and the value."""
    pytester.makepyfile(
        test_bad=f"""
        import pytest

        @pytest.mark.ipc_race({marker})
        def test_marked():
            pass
        """
    )
    result = pytester.runpytest()
    result.assert_outcomes(errors=1)
    assert result.ret == pytest.ExitCode.INTERRUPTED
    result.stdout.fnmatch_lines([f"*test_bad.py::test_marked: @pytest.mark.ipc_race({marker}): {message}"])
    result.stdout.no_fnmatch_line("*INTERNALERROR*")
    # One clean message, not the same error twice through an exception chain.
    result.stdout.no_fnmatch_line("*During handling of the above exception*")


def test_bad_runs_option(pytester: pytest.Pytester) -> None:
    """--ipc-runs=abc is a usage error naming the option and the value."""
    pytester.makepyfile(test_one="def test_one(): pass")
    result = pytester.runpytest("--ipc-runs=abc")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: pytest-ipc: --ipc-runs=abc: expected a positive whole number, got 'abc'"])
    result.stderr.no_fnmatch_line("*INTERNALERROR*")

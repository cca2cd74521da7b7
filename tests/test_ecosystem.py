"""pytest-ipc next to the plugins its users run with it: real pytest-rerunfailures,
pytest-timeout, pytest-repeat and pytest-xdist sessions, and JUnit XML parsed back.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

import pytest
from sessions import report_line, run

# Verdicts known in advance and no processes: the runs record their outcome.
RACES = """
import pytest

calls = {"race": 0, "flaky_race": 0, "steady": 0, "flaky": 0}

# Runs 1..4 record 1, 2, 2, 2: a race.  A rerun (runs 5..8: 2, 2, 2, 2) would pass.
@pytest.mark.ipc_race(runs=4)
def test_race(ipc_outcome):
    calls["race"] += 1
    ipc_outcome.record(min(calls["race"], 2))

@pytest.mark.flaky(reruns=3)
@pytest.mark.ipc_race(runs=4)
def test_flaky_marked_race(ipc_outcome):
    calls["flaky_race"] += 1
    ipc_outcome.record(min(calls["flaky_race"], 2))

@pytest.mark.ipc_race(runs=3)
def test_steady(ipc_outcome):
    calls["steady"] += 1
    ipc_outcome.record("same")

def test_flaky_plain():
    calls["flaky"] += 1
    assert calls["flaky"] > 1, "fails the first time only"
"""


# -- pytest-rerunfailures -----------------------------------------------------


def test_reruns_do_not_rerun_or_hide_a_race(pytester: pytest.Pytester) -> None:
    """With --reruns 2 a RaceDetected is final (no rerun), while a plain flaky test still reruns."""
    pytest.importorskip("pytest_rerunfailures")
    pytester.makepyfile(test_races=RACES)
    result = run(pytester, "--reruns", "2", "-rAR")
    outcomes = result.parseoutcomes()
    assert outcomes == {"failed": 2, "passed": 2, "rerun": 1}, outcomes
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines_random(
        [
            "FAILED test_races.py::test_race - *RaceDetected*",
            "FAILED test_races.py::test_flaky_marked_race - *RaceDetected*",
            "RERUN test_races.py::test_flaky_plain*",
            "PASSED test_races.py::test_flaky_plain*",
            "PASSED test_races.py::test_steady*",
        ]
    )
    result.stdout.no_fnmatch_line("RERUN test_races.py::test_*race*")
    for nodeid in ("test_races.py::test_race", "test_races.py::test_flaky_marked_race"):
        assert report_line(result, nodeid).groups() == ("4", "2", "RACE")


# -- pytest-timeout -----------------------------------------------------------


def test_ipc_timeout_fires_before_pytest_timeout_with_worker_stacks(pytester: pytest.Pytester) -> None:
    """--timeout=30 and ipc_timeout(2): the hung worker fails through WorkerTimeout with its stack."""
    pytest.importorskip("pytest_timeout")
    pytester.makepyfile(
        helpers="""
        import time

        def hang():
            time.sleep(600)  # HANG-LINE
        """,
        test_hang="""
        import time
        import pytest
        import helpers

        @pytest.mark.ipc_timeout(2)
        def test_hung_worker(ipc_workers):
            ipc_workers.start(helpers.hang, name="stuck")
            started = time.monotonic()
            try:
                ipc_workers.join()
            finally:
                print(f"join took {time.monotonic() - started:.2f}s")
        """,
    )
    result = run(pytester, "--timeout=30", "--ipc-start-method=fork")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "E * pytest_ipc.WorkerTimeout: worker 'stuck-0' (pid *) still running after the 2s timeout; ended them.",
            "E * --- stack of worker 'stuck-0' (pid *) ---",
            '*helpers.py", line * in hang',
        ]
    )
    result.stdout.no_fnmatch_line("*Timeout*+++*")  # pytest-timeout's banner
    joined = float(re.search(r"join took ([\d.]+)s", result.stdout.str()).group(1))  # type: ignore[union-attr]
    assert joined < 15, joined


def test_pytest_timeout_still_ends_a_test_hung_in_the_test_process(pytester: pytest.Pytester) -> None:
    """A test that hangs in the test process itself (not in a worker) is still ended by pytest-timeout."""
    pytest.importorskip("pytest_timeout")
    pytester.makepyfile(
        """
        import threading
        import pytest

        @pytest.mark.ipc_timeout(60)
        def test_hangs_here(pipe_pair):
            threading.Event().wait()  # HANG-HERE
        """
    )
    result = run(pytester, "--timeout=3", "--timeout-method=thread")
    # The thread method dumps the stacks and ends the whole session process.
    assert result.ret != 0
    combined = result.stdout.str() + result.stderr.str()
    assert re.search(r"\+{3,} Timeout \+{3,}", combined), combined
    assert "test_hangs_here" in combined, combined


# -- JUnit XML ------------------------------------------------------------------


@pytest.mark.parametrize("xdist", [False, True], ids=["serial", "xdist"])
def test_junitxml_carries_race_properties(pytester: pytest.Pytester, xdist: bool) -> None:
    """Each ipc_race testcase in --junitxml has ipc_runs, ipc_distinct_outcomes, ipc_seed and ipc_verdict."""
    if xdist:
        pytest.importorskip("xdist")
    pytester.makepyfile(test_races=RACES)
    args = ["--junitxml=out.xml", "--ipc-seed=1234", "-p", "no:rerunfailures"]
    result = run(pytester, *args, *(["-n", "2"] if xdist else []))
    result.assert_outcomes(failed=3, passed=1)
    cases = {c.get("name"): c for c in ET.parse(pytester.path / "out.xml").getroot().iter("testcase")}
    assert set(cases) == {"test_race", "test_flaky_marked_race", "test_steady", "test_flaky_plain"}

    def props(name: str) -> dict[str, str]:
        return {p.get("name"): p.get("value") for p in cases[name].iter("property")}  # type: ignore[misc]

    race = {"ipc_runs": "4", "ipc_distinct_outcomes": "2", "ipc_seed": "1234", "ipc_verdict": "race"}
    assert props("test_race") == race
    assert props("test_flaky_marked_race") == race
    assert props("test_steady") == {
        "ipc_runs": "3",
        "ipc_distinct_outcomes": "1",
        "ipc_seed": "1234",
        "ipc_verdict": "passed",
    }
    assert props("test_flaky_plain") == {}


# -- pytest-repeat ----------------------------------------------------------------


def test_repeat_count_makes_each_copy_its_own_race_test(pytester: pytest.Pytester) -> None:
    """--count=2 gives two ipc_race items, each with its own result line and its own runs."""
    pytest.importorskip("pytest_repeat")
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.ipc_race(runs=3)
        def test_steady(ipc_outcome):
            ipc_outcome.record("same")
        """
    )
    result = run(pytester, "--count=2", "-v")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(
        [
            "*test_repeat_count_makes_each_copy_its_own_race_test.py::test_steady[[]1-2[]] PASSED*",
            "*test_repeat_count_makes_each_copy_its_own_race_test.py::test_steady[[]2-2[]] PASSED*",
        ]
    )
    for copy in ("1-2", "2-2"):
        line = report_line(result, f"test_repeat_count_makes_each_copy_its_own_race_test.py::test_steady[{copy}]")
        assert line.groups() == ("3", "1", "passed"), line.group(0)

"""Load (issue #7): many race tests of many runs, many workers per run, flat memory, nothing left.

The short versions of ``bench/load.py``.  Each test runs a real pytest
session in a subprocess on a generated module and checks that it passed
with every run, and that nothing of it outlived it: every worker writes its
pid to a file, every process of the session inherits a marker in its
environment and is looked for afterwards (fork server, resource tracker,
xdist workers included), its named semaphores carry a private prefix in
/dev/shm, and no worker group directory is left under its basetemp.

Memory is measured inside the inner session, between two runs of one test
(run 20 and run 200): with tracemalloc for the bytes a run leaves behind,
and by counting pytest's request objects, which pile up when something
keeps each run's fixture requests alive.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from leftovers import kill, processes_marked
from sessions import SEMPREFIX_CONFTEST, copy_bodies, isolate, run

# Every worker runs bodies.record_then_add_locked: it records its pid first.
# Six race tests of 60 runs, each run two workers adding 1 under the lock 50 times.
MANY_RUNS = """
import pytest

from bodies import record_then_add_locked


@pytest.mark.parametrize("case", range(6))
@pytest.mark.ipc_race(runs=60)
def test_many(case, shared_value, ipc_workers):
    ipc_workers.start(record_then_add_locked, args=(shared_value, 50), count=2)
    ipc_workers.join()
"""

# 64 workers in every run.  The timeout is generous: 64 spawn workers take
# about 4 s to start on an idle 2-core machine, and the suite shares it.
MANY_WORKERS = """
import pytest

from bodies import record_then_add_locked


@pytest.mark.ipc_timeout(120)
@pytest.mark.ipc_race(runs=3)
def test_wide(shared_value, ipc_workers):
    ipc_workers.start(record_then_add_locked, args=(shared_value, 50), count=64)
    ipc_workers.join()
"""

# One race test of 200 runs measuring itself: tracemalloc starts at run 10,
# so that the snapshots at run 20 and at run 200 both hold what was
# allocated since run 10 and is still alive, each with one run's live
# objects in it; the difference is what 180 runs left behind.  Every run
# prints 2 KiB (captured output that must not be kept per run), records a
# property, and gets ipc_workers and tmp_path (function fixtures over a
# session one, tmp_path_factory) through request.getfixturevalue() in a
# helper fixture, as a user's may: then the session fixture is not among
# those the test names.
MEMORY = """
import gc
import json
import os
import tracemalloc

import pytest

from bodies import record_then_add_locked

FIRST, LAST = 20, 200
calls = [0]
seen = {}
# Allocations of tracemalloc itself and of this module's measuring are not the runs'.
MINE = [tracemalloc.Filter(False, tracemalloc.__file__), tracemalloc.Filter(False, __file__)]


def measure():
    gc.collect()
    # By the class's MRO, not isinstance(): FixtureRequest is an ABC, and
    # isinstance() on every object would fill its caches, allocating as it counts.
    requests = sum(pytest.FixtureRequest in type(o).__mro__ for o in gc.get_objects())
    return tracemalloc.take_snapshot().filter_traces(MINE), requests


@pytest.fixture
def ipc_workers_at_run_time(request):
    request.getfixturevalue("tmp_path")
    return request.getfixturevalue("ipc_workers")


@pytest.mark.ipc_race(runs=LAST)
def test_memory(shared_value, ipc_workers_at_run_time, record_property):
    ipc_workers = ipc_workers_at_run_time
    calls[0] += 1
    print("x" * 2047)
    record_property("run", calls[0])
    ipc_workers.start(record_then_add_locked, args=(shared_value, 5), count=2)
    ipc_workers.join()
    if calls[0] == 10:
        tracemalloc.start()
    elif calls[0] == FIRST:
        seen["first"] = measure()
    elif calls[0] == LAST:
        snapshot, requests = measure()
        tracemalloc.stop()
        first_snapshot, first_requests = seen.pop("first")
        diff = snapshot.compare_to(first_snapshot, "lineno")
        # What runs keep piles up block by block at the lines that allocate
        # it, one block a run or more.  A line that gained a few blocks is
        # not that: a one-off, such as a cache or an interpreter table
        # resized in between (a 939 KiB block at one line of pathlib, in one measurement: the
        # table of interned strings growing).
        piling = [stat for stat in diff if stat.count_diff >= (LAST - FIRST) // 2]
        with open(os.environ["IPC_TEST_MEMORY"], "w") as f:
            json.dump({"bytes": sum(stat.size_diff for stat in piling), "runs": LAST - FIRST,
                       "all_bytes": sum(stat.size_diff for stat in diff),
                       "requests": requests - first_requests, "top": [str(stat) for stat in diff[:8]]}, f)
"""

REPORT_LINE = re.compile(r"^(\S+::\S+)\s+(\d+) runs\s+(\d+) outcomes?\s+(\S+)", re.MULTILINE)


@dataclass
class Run:
    """One inner session, with what it left behind already checked."""

    result: pytest.RunResult
    report: dict[str, Any]
    pids: list[int]  # one per worker started, all runs

    def report_lines(self) -> list[tuple[str, int, int, str]]:
        """(node id, runs, distinct outcomes, verdict) of each line of the ``ipc race report`` section."""
        section = self.result.stdout.str().split("ipc race report", 1)[1]
        return [(n, int(r), int(d), v) for n, r, d, v in REPORT_LINE.findall(section)]


@pytest.fixture
def inner(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Callable[..., Run]]:
    """Runs the session written in ``pytester`` and checks that nothing of it is left."""
    # Only pytest-ipc and xdist (-p xdist.plugin where it is needed).
    isolation = isolate(monkeypatch, tmp_path)
    basetemp = tmp_path / "basetemp"
    copy_bodies(pytester)
    pytester.makeconftest(SEMPREFIX_CONFTEST)

    def run_inner(*args: str, timeout: float = 120) -> Run:
        xdist = ["-p", "xdist.plugin"] if "-n" in args else []
        result = run(
            pytester, *xdist, "--ipc-report=report.json", f"--basetemp={basetemp}", *args, timeout=timeout, cache=False
        )
        pids = isolation.pids()
        isolation.check_nothing_left(pids)
        assert not list(basetemp.glob("ipc-workers-*")), "a worker group directory was left behind"
        result.stdout.no_fnmatch_line("*INTERNALERROR*")
        result.stderr.no_fnmatch_line("*leaked*")  # the resource tracker's complaint
        report = json.loads((pytester.path / "report.json").read_text())
        return Run(result, report, pids)

    yield run_inner
    kill(processes_marked(isolation.marker))  # a run that raised before its own checks


def test_many_race_tests_under_xdist_run_every_run_and_leave_nothing(
    inner: Callable[..., Run], pytester: pytest.Pytester
) -> None:
    """6 race tests x 60 runs under -n 2: all pass with all their runs, each run totals 100, nothing is left."""
    pytest.importorskip("xdist")
    pytester.makepyfile(test_many=MANY_RUNS)
    run = inner("test_many.py", "-n", "2", "--ipc-start-method=fork")
    assert run.result.ret == pytest.ExitCode.OK, run.result.stdout.str()
    run.result.assert_outcomes(passed=6)
    expected = {f"test_many.py::test_many[{i}]" for i in range(6)}
    lines = run.report_lines()
    assert {line[0] for line in lines} == expected and len(lines) == 6, lines
    assert all(line[1:] == (60, 1, "passed") for line in lines), lines
    tests = run.report["tests"]
    assert {t["nodeid"] for t in tests} == expected
    assert all((t["runs"], t["verdict"], t["histogram"]) == (60, "passed", [["100", 60]]) for t in tests), tests
    assert len(run.pids) == 6 * 60 * 2  # every worker of every run ran


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_64_workers_per_run_complete_and_leave_nothing(
    inner: Callable[..., Run], pytester: pytest.Pytester, method: str
) -> None:
    """One race test starting 64 workers in each of 3 runs: every run totals 64 x 50, nothing is left."""
    pytester.makepyfile(test_wide=MANY_WORKERS)
    run = inner("test_wide.py", f"--ipc-start-method={method}")
    assert run.result.ret == pytest.ExitCode.OK, run.result.stdout.str()
    assert run.report_lines() == [("test_wide.py::test_wide", 3, 1, "passed")]
    (test,) = run.report["tests"]
    assert test["histogram"] == [["3200", 3]]
    assert len(run.pids) == 64 * 3


@pytest.fixture
def memory(
    inner: Callable[..., Run], pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> dict[str, Any]:
    """What 180 runs of one race test left behind, measured inside the session (see MEMORY)."""
    out = tmp_path / "memory.json"
    monkeypatch.setenv("IPC_TEST_MEMORY", str(out))
    pytester.makepyfile(test_memory=MEMORY)
    run = inner("test_memory.py", "--ipc-start-method=fork", "--ipc-jitter=off")
    assert run.result.ret == pytest.ExitCode.OK, run.result.stdout.str()
    assert run.report_lines() == [("test_memory.py::test_memory", 200, 1, "passed")]
    return json.loads(out.read_text())  # type: ignore[no-any-return]


def test_runs_do_not_keep_their_output_and_reports(memory: dict[str, Any]) -> None:
    """The bytes that 180 more runs left allocated stay far below what keeping every run would cost.

    Counted at the lines that gained a block every other run or more (see
    MEMORY).  Measured with this session on the project's machine (Python
    3.11, pytest 9), bytes left per run: about 8,900 when every run's reports
    and captured output were kept (its 2 KiB of output is held at least
    twice: in the run's sections and in its reports); about 1,600 with those
    dropped but pytest's request objects of every run still held (three a
    run here, see the next test); about 300 without them: the verdict's
    record of each run (outcome, seed, index).  Two identical measurements
    agreed to the byte.  4 KiB per run is more than twice the second figure
    and less than half the first.
    """
    per_run = memory["bytes"] / memory["runs"]
    assert per_run < 4096, f"{per_run:.0f} bytes left per run; the lines that grew most:\n" + "\n".join(memory["top"])


def test_runs_do_not_keep_pytest_request_objects(memory: dict[str, Any]) -> None:
    """pytest's fixture request objects of finished runs are freed, not kept one or more per run.

    A function-scoped fixture that depends on a higher-scoped one (ipc_workers
    and tmp_path on tmp_path_factory) adds a finalizer to that fixture each
    time it is set up, and pytest keeps it until the higher-scoped fixture is
    torn down (pytest issue #4871).  Across ordinary tests that is one per
    test; under ``ipc_race`` it is one per run, and each holds the run's
    SubRequest and TopRequest: 3 objects and about 1,300 bytes a run here.
    A leak makes the count at least 180; a few stray objects are not one.
    """
    assert memory["requests"] < 20, (
        f"{memory['requests']} more pytest FixtureRequest objects alive after 180 runs; "
        "the lines that grew most:\n" + "\n".join(memory["top"])
    )

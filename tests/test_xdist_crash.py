"""An xdist worker that dies in the middle of a sharded campaign (issue #7).

Each test runs a real ``pytest -n 2 --ipc-shards=2`` session in a
subprocess in which the xdist worker running one shard kills itself
(SIGKILL, or a real segmentation fault) in the middle of a run, while
``ipc_workers`` children it started are blocked on a pipe nobody will
write.  The session must end soon, fail, name the crash, and report the
crashed shard as missing: the merged race entry of the test is never a pass
with fewer runs, on the terminal or in the JSON report.  Afterwards nothing
of the run may be alive (every process the inner session starts inherits a
marker in its environment and is looked for), no named semaphore of the
inner session may be left in /dev/shm (it uses a private name prefix), and
the controller may not hold a file descriptor it did not hold at the start.

Reports that carry no race data for other reasons (a shard that cannot set
up) are checked without xdist, in the same way.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from leftovers import gone, kill, processes_marked
from sessions import SEMPREFIX_CONFTEST, copy_bodies, isolate, run

from pytest_ipc.race.shards import shard_of_nodeid

METHODS = ["fork", "spawn", "forkserver"]

# The inner session's timeout of every IPC wait (ipc_timeout), in seconds.
TIMEOUT = 10

# The workers' target, in a module that does not import pytest, so that
# spawn workers start fast.  It records its pid first.  Its own: it counts,
# then blocks where the crash finds it.
HELPERS = '''
import os

from bodies import record_pid as record


def count_then_wait(counter, up, down, keep):
    """Add 1 to ``counter``, say so on ``up``, then wait for a word on ``down``.

    The worker holds ``keep``, the write end of its own ``down`` pipe, as well:
    the death of the process that started it never ends the wait with EOF.
    """
    record()
    with counter.get_lock():
        counter.value += 1
    up.send(os.getpid())
    down.recv()  # WAIT-LINE
'''

# A private semaphore prefix (sessions.SEMPREFIX_CONFTEST), and the file
# descriptors of the controller (the process without ``workerinput``) at the
# start and at the end of the session.
CONFTEST = (
    SEMPREFIX_CONFTEST
    + """
import json


def _open_fds():
    fds = {}
    for fd in os.listdir("/proc/self/fd"):
        try:
            fds[fd] = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:  # the directory's own fd, closed by now
            pass
    return fds


def pytest_sessionstart(session):
    if not hasattr(session.config, "workerinput"):
        session.config.ipc_test_fds = _open_fds()


def pytest_sessionfinish(session):
    if not hasattr(session.config, "workerinput"):
        now = _open_fds()
        new = {fd: target for fd, target in now.items() if session.config.ipc_test_fds.get(fd) != target}
        with open(os.environ["IPC_TEST_FDFILE"], "w") as f:
            json.dump(new, f)
"""
)

# Shard 1 of 2 runs the runs 0 and 2 and dies in run 2, its second, after
# run 0 completed; shard 2 runs 1 and 3.  Each run starts two workers that
# add 1 under the lock: every completed run totals 2.
CAMPAIGN = """
import ctypes
import os
import resource
import signal
import time

import pytest

import helpers
from pytest_ipc import stash as state

CRASH_RUNS = {crash_runs}
TIMEOUT = {timeout}


def crash(how):
    with open(os.environ["IPC_TEST_CRASHFILE"], "w") as f:
        f.write(f"{{os.getpid()}} {{time.time()}}\\n")
    if how == "segfault":
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # no core file in the test directory
        ctypes.string_at(0)
    else:
        os.kill(os.getpid(), signal.SIGKILL)
    raise AssertionError(f"still alive after the {{how}}")


@pytest.mark.ipc_race(runs=4)
@pytest.mark.ipc_timeout(TIMEOUT)
def test_campaign(ipc_workers, ipc_context, shared_value, request):
    run = state.current_run(request.node)
    up_r, up_w = ipc_context.Pipe(duplex=False)
    downs = []
    for _ in range(2):
        # One pipe each: two readers of one pipe could read parts of each other's message.
        down_r, down_w = ipc_context.Pipe(duplex=False)
        ipc_workers.start(helpers.count_then_wait, args=(shared_value, up_w, down_r, down_w))
        downs.append(down_w)
    for _ in downs:
        assert up_r.poll(TIMEOUT), "a worker did not check in"
        up_r.recv()
    if run.index in CRASH_RUNS:
        crash("{how}")  # both workers are blocked in down.recv()
    for down in downs:
        down.send("go")
    ipc_workers.join()
"""


@dataclass
class Outcome:
    """One inner session: its result, its JSON report and what it recorded."""

    result: pytest.RunResult
    report: dict[str, Any]
    pids: list[int]  # the ipc_workers children, all runs
    crash: tuple[int, float] | None  # (pid, time.time()) of the xdist worker that crashed (the last one)
    ended: float  # time.time() when the session had ended

    def entry(self, nodeid: str) -> dict[str, Any]:
        """The JSON report's entry for ``nodeid``: exactly one."""
        found = [t for t in self.report["tests"] if t["nodeid"] == nodeid]
        assert len(found) == 1, self.report
        return found[0]


def glob_escape(text: str) -> str:
    """``text`` as a literal in an fnmatch pattern: node ids have brackets."""
    return re.sub(r"[\[\]*?]", lambda m: f"[{m.group()}]", text)


@pytest.fixture
def campaign(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> Iterator[Callable[..., Outcome]]:
    """Runs a sharded campaign under xdist and checks that nothing of it is left."""
    # Only pytest-ipc and xdist (-p xdist.plugin).
    isolation = isolate(monkeypatch, tmp_path)
    crashfile, fdfile = tmp_path / "crash.txt", tmp_path / "fds.json"
    monkeypatch.setenv("IPC_TEST_CRASHFILE", str(crashfile))
    monkeypatch.setenv("IPC_TEST_FDFILE", str(fdfile))
    copy_bodies(pytester)
    pytester.makepyfile(helpers=HELPERS)
    pytester.makeconftest(CONFTEST)

    def run_campaign(method: str, how: str, crash_runs: tuple[int, ...] = (2,)) -> Outcome:
        pytester.makepyfile(test_campaign=CAMPAIGN.format(crash_runs=crash_runs, timeout=TIMEOUT, how=how))
        result = run(
            pytester,
            "-p",
            "xdist.plugin",
            "-n",
            "2",
            "--ipc-shards=2",
            f"--ipc-start-method={method}",
            "--ipc-report=report.json",
            f"--basetemp={tmp_path / 'basetemp'}",
            timeout=60,
            cache=False,
        )
        ended = time.time()
        pids = isolation.pids()
        crash = None
        if crashfile.exists():
            pid, when = crashfile.read_text().split()
            crash = (int(pid), float(when))

        # Nothing of the run is alive: the crashed worker, its orphaned
        # children, its fork server and resource tracker; the other processes.
        isolation.check_nothing_left(pids)
        new_fds = json.loads(fdfile.read_text())
        assert not new_fds, f"the controller holds file descriptors it did not hold at the start: {new_fds}"
        result.stdout.no_fnmatch_line("*INTERNALERROR*")
        report = json.loads((pytester.path / "report.json").read_text())
        return Outcome(result, report, pids, crash, ended)

    yield run_campaign
    # A failed check above already killed what it found; this covers a run that raised earlier.
    kill(processes_marked(isolation.marker))


@pytest.mark.parametrize("how", ["sigkill", "segfault"])
@pytest.mark.parametrize("method", METHODS)
def test_crashed_shard_is_reported_missing_and_leaves_nothing(
    campaign: Callable[..., Outcome], method: str, how: str
) -> None:
    """A shard's xdist worker dies mid-campaign: the session fails, names it, and the merged entry is incomplete."""
    out = campaign(method, how)
    result = out.result
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    # The crashed shard fails with xdist's message; the other shard ran its two runs.
    result.assert_outcomes(failed=1, passed=1)
    crashed = "test_campaign.py::test_campaign[shard1of2]"
    result.stdout.fnmatch_lines([f"*worker 'gw*' crashed while running '{glob_escape(crashed)}'*"])

    # The ipc race report: the runs that reported, and the shard that did not.
    section = result.stdout.str().split("ipc race report", 1)[1]
    line = r"^test_campaign\.py::test_campaign\s+(\d+) runs\s+(\d+) outcomes?\s+(\S+)\s+[\d.]+s  (\d+) shards$"
    lines = re.findall(line, section, re.MULTILINE)
    assert lines == [("2", "1", "INCOMPLETE", "1")], section
    result.stdout.fnmatch_lines(
        [
            "test_campaign.py::test_campaign *INCOMPLETE*",
            f"  shard 1 of 2 sent no result: worker 'gw*' crashed while running '{glob_escape(crashed)}'",
        ]
    )

    entry = out.entry("test_campaign.py::test_campaign")
    assert out.report["exitstatus"] == 1
    assert (entry["verdict"], entry["outcome"], entry["runs"], entry["shards"]) == ("incomplete", "failed", 2, 1)
    assert entry["histogram"] == [["2", 2]]  # shard 2's runs 1 and 3, merged as usual
    [missing] = entry["missing_shards"]
    assert (missing["shard"], missing["of"], missing["nodeid"]) == (1, 2, crashed)
    assert re.fullmatch(rf"worker 'gw\d+' crashed while running '{re.escape(crashed)}'", missing["reason"])

    # The crash came in the second run of shard 1, with both of its workers started.
    assert out.crash is not None
    worker_pid, crashed_at = out.crash
    assert gone(worker_pid)
    # Shard 1: run 0 and the crashed run 2; shard 2: runs 1 and 3.  Two workers each.
    assert len(out.pids) == 8
    # The segfault is a real one: the xdist worker's faulthandler reports it.
    segfaults = result.stderr.str().count("Fatal Python error: Segmentation fault")
    assert segfaults == (1 if how == "segfault" else 0), result.stderr.str()
    # It ended soon after the crash: nothing waited for a timeout.
    print(f"the session ended {out.ended - crashed_at:.2f}s after the crash")
    assert out.ended - crashed_at < TIMEOUT + 5


def test_every_shard_crashing_still_gives_an_entry(campaign: Callable[..., Outcome]) -> None:
    """Both shards' workers die in their first run: an entry with no runs, both shards missing."""
    out = campaign("fork", "sigkill", crash_runs=(0, 1))
    out.result.assert_outcomes(failed=2)
    assert out.result.ret == pytest.ExitCode.TESTS_FAILED
    out.result.stdout.fnmatch_lines(
        [
            "test_campaign.py::test_campaign       0 runs     0 outcomes  INCOMPLETE  0.00s  0 shards",
        ]
    )
    entry = out.entry("test_campaign.py::test_campaign")
    assert (entry["verdict"], entry["outcome"], entry["runs"], entry["shards"]) == ("incomplete", "failed", 0, 0)
    assert entry["histogram"] == []
    assert [(m["shard"], m["of"]) for m in entry["missing_shards"]] == [(1, 2), (2, 2)]
    assert all("crashed while running" in m["reason"] for m in entry["missing_shards"])
    assert len(out.pids) == 4


# Without xdist: a shard that cannot set up sends no race data either.
SETUP_ERROR = """
import pytest
from pytest_ipc import stash as state

@pytest.fixture
def broken_in_shard_3(request):
    if request.node.nodeid.endswith("[shard3of3]"):
        raise RuntimeError("no database in shard 3")

@pytest.mark.ipc_race(runs=9)
def test_steady(ipc_outcome, broken_in_shard_3):
    ipc_outcome.record("same")

# Shard 1 runs 0, 3, 6 and records 0; shard 2 runs 1, 4, 7 and records 1.
@pytest.mark.ipc_race(runs=9)
def test_split(ipc_outcome, broken_in_shard_3, request):
    ipc_outcome.record(state.current_run(request.node).index % 3)
"""


def test_shard_that_cannot_set_up_is_reported_missing(pytester: pytest.Pytester) -> None:
    """A set-up error in one shard makes an agreeing test INCOMPLETE; a race the others show stays a RACE."""
    pytester.makepyfile(test_setup=SETUP_ERROR)
    result = run(pytester, "--ipc-shards=3", "--ipc-report=report.json", timeout=60, cache=False)
    result.assert_outcomes(passed=4, errors=2)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(
        [
            "*ipc race report*",
            "test_setup.py::test_steady       6 runs     1 outcome   INCOMPLETE  *s  2 shards",
            "  shard 3 of 3 sent no result: error in setup: RuntimeError: no database in shard 3",
            "test_setup.py::test_split        6 runs     2 outcomes  RACE        *s  2 shards",
            "  shard 3 of 3 sent no result: error in setup: RuntimeError: no database in shard 3",
            "seed *",
            "",
            "test_setup.py::test_split: the shards that reported passed, but together they disagree",
            "RaceDetected: outcomes differ across 6 runs of 2 shards *",
        ]
    )
    tests = {t["nodeid"]: t for t in json.loads((pytester.path / "report.json").read_text())["tests"]}
    steady, split = tests["test_setup.py::test_steady"], tests["test_setup.py::test_split"]
    assert (steady["verdict"], steady["outcome"], steady["histogram"]) == ("incomplete", "failed", [["'same'", 6]])
    assert (split["verdict"], split["outcome"], split["histogram"]) == ("race", "failed", [["0", 3], ["1", 3]])
    for entry in (steady, split):
        assert entry["missing_shards"] == [
            {
                "shard": 3,
                "of": 3,
                "nodeid": entry["nodeid"] + "[shard3of3]",
                "reason": "error in setup: RuntimeError: no database in shard 3",
            }
        ]


def test_complete_campaign_has_no_missing_shards(pytester: pytest.Pytester) -> None:
    """Every shard reported: passed, all merged, an empty missing_shards."""
    pytester.makepyfile(
        test_steady="""
        import pytest

        @pytest.mark.ipc_race(runs=9)
        def test_steady(ipc_outcome):
            ipc_outcome.record("same")
        """
    )
    result = run(pytester, "--ipc-shards=3", "--ipc-report=report.json", timeout=60, cache=False)
    result.assert_outcomes(passed=3)
    result.stdout.no_fnmatch_line("*sent no result*")
    [entry] = json.loads((pytester.path / "report.json").read_text())["tests"]
    assert (entry["verdict"], entry["outcome"], entry["shards"], entry["missing_shards"]) == ("passed", "passed", 3, [])


@pytest.mark.parametrize(
    ("nodeid", "shards", "expected"),
    [
        ("t.py::test_x[shard1of4]", 4, ("t.py::test_x", 1, 4)),
        ("t.py::test_x[fork-shard3of4]", 8, ("t.py::test_x[fork]", 3, 4)),
        # pytest-repeat parametrizes after pytest-ipc: the shard is in the middle.
        ("t.py::test_x[shard2of2-1-3]", 2, ("t.py::test_x[1-3]", 2, 2)),
        ("t.py::test_x[shard1of4]", 1, None),  # no --ipc-shards: never a shard
        ("t.py::test_x[shard1of4]", 3, None),  # more shards than the session makes
        ("t.py::test_x[shard5of4]", 4, None),
        ("t.py::test_x[myshard1of2]", 2, None),  # only a whole part of the id
        ("t.py::test_shard1of2", 2, None),  # the name, not a parameter
        ("t.py::test_x", 4, None),
    ],
)
def test_shard_of_nodeid(nodeid: str, shards: int, expected: tuple[str, int, int] | None) -> None:
    """The controller knows a crashed shard by its node id alone: which test, which shard, of how many."""
    assert shard_of_nodeid(nodeid, shards) == expected

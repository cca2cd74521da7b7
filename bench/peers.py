"""pytest-ipc beside what a user would do without it: pytest-repeat over plain multiprocessing.

Both run for real, in one invocation of this script, one pytest subprocess
per measurement, the two in alternating order each round so that a change of
machine load hits both.  Per start method it prints:

1. Time to the verdict on the tutorial's counter (9 workers x 50 unlocked
   ``counter.value += 1``), racing:
   - pytest-repeat: the tutorial's code in a plain test, ``assert
     counter.value == 450``, run with ``pytest -x --count=N``: the time until
     the first failure (or N runs without one);
   - pytest-ipc: the same body with the ``shared_value`` and ``ipc_workers``
     fixtures in an ``@pytest.mark.ipc_race(runs=N)`` test, two ways: the
     plain ``assert`` (the verdict is certain once a run fails), and no
     assert at all (the runs' totals are compared: it needs two runs).
2. Per run on race-free code (the locked counter): pytest-repeat's time per
   item, pytest-ipc's per run with ``--ipc-jitter=off`` and ``low``, and the
   physical floor: making the Value and starting and joining the same nine
   workers in a loop inside one plain pytest test, nothing else done.
3. What a spawn worker of ``ipc_workers`` imports beyond a bare
   ``multiprocessing`` spawn child (``-X importtime`` in both children).

Times are pytest's own (the JUnit XML's per-test times: set-up, call and
teardown), so interpreter start-up and collection count for neither side.
Medians over the rounds, with the range in brackets.

    python bench/peers.py                      # fork 7 rounds, forkserver 5, spawn 3
    python bench/peers.py --methods fork --rounds 9
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

from machine import machine  # bench/ is on sys.path when a script of it runs
from sessions import environment, pytest_command, run, write_files

ROUNDS = {"fork": 7, "forkserver": 5, "spawn": 3}
MAX_RUNS = {"fork": 200, "forkserver": 100, "spawn": 40}  # pytest-repeat's --count, pytest-ipc's runs
FREE_RUNS = {"fork": 30, "forkserver": 20, "spawn": 10}
TARGETS = {"fork": 3, "forkserver": 5, "spawn": 5}  # the verdict within 1/k of pytest-repeat's median

PLAIN = """
import json
import multiprocessing
import os
import time

from scenarios import inc_value, inc_value_locked

METHOD = os.environ["PEERS_METHOD"]


def nine(target):
    ctx = multiprocessing.get_context(METHOD)
    counter = ctx.Value("i", 0)
    procs = [ctx.Process(target=target, args=(counter, 50)) for _ in range(9)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    return counter.value


def test_counter():
    assert nine(inc_value) == 450


def test_locked():
    assert nine(inc_value_locked) == 450


def test_floor():
    times = []
    for _ in range(int(os.environ["PEERS_RUNS"])):
        started = time.perf_counter()
        nine(inc_value_locked)
        times.append(time.perf_counter() - started)
    with open(os.environ["PEERS_OUT"], "w") as f:
        json.dump(times, f)
"""

IPC = """
import os

import pytest

from scenarios import inc_value, inc_value_locked

RUNS = int(os.environ["PEERS_RUNS"])


@pytest.mark.ipc_race(runs=RUNS)
def test_counter_assert(shared_value, ipc_workers):
    ipc_workers.start(inc_value, args=(shared_value, 50), count=9)
    ipc_workers.join()
    assert shared_value.value == 450


@pytest.mark.ipc_race(runs=RUNS)
def test_counter(shared_value, ipc_workers):
    ipc_workers.start(inc_value, args=(shared_value, 50), count=9)
    ipc_workers.join()


@pytest.mark.ipc_race(runs=RUNS)
def test_locked(shared_value, ipc_workers):
    ipc_workers.start(inc_value_locked, args=(shared_value, 50), count=9)
    ipc_workers.join()
"""

# The children re-import this script as __mp_main__: everything but the
# imports is under the __main__ guard, as in any spawn-safe script.
CHILD_IMPORTS = """
import multiprocessing
import os
import sys
from multiprocessing import resource_tracker

import scenarios

if __name__ == "__main__":
    ctx = multiprocessing.get_context("spawn")
    resource_tracker.ensure_running()  # started now, so its imports are not counted
    if sys.argv[1] == "ipc":
        from pytest_ipc.workers import IpcWorkers

        workers = IpcWorkers(ctx, 60.0, jitter=0.05)
        os.environ["PYTHONPROFILEIMPORTTIME"] = "1"  # only the child starts after this
        workers.start(scenarios.noop)
        workers.join()
        workers.close()
    else:
        os.environ["PYTHONPROFILEIMPORTTIME"] = "1"
        p = ctx.Process(target=scenarios.noop)
        p.start()
        p.join()
"""


def pytest_run(
    workdir: Path, method: str, runs: int, args: list[str], env_extra: dict[str, str] | None = None
) -> dict[str, float]:
    """One pytest subprocess; the time of each test case (JUnit XML), by name, and how many ran."""
    xml = workdir / "junit.xml"
    env = environment(("PYTHONDONTWRITEBYTECODE",), PEERS_METHOD=method, PEERS_RUNS=str(runs), **(env_extra or {}))
    run(pytest_command(workdir, f"--junitxml={xml}", *args, plugins=()), workdir, env, timeout=1800)
    times: dict[str, float] = {}
    counts: dict[str, float] = {}
    failed_at: dict[str, float] = {}
    for case in ET.parse(xml).iter("testcase"):
        name = case.get("name", "").split("[")[0]
        times[name] = times.get(name, 0.0) + float(case.get("time", 0))
        counts[name] = counts.get(name, 0) + 1
        if case.find("failure") is not None:
            failed_at[name] = counts[name]
    return {**times, **{f"{k}#n": v for k, v in counts.items()}, **{f"{k}#failed": v for k, v in failed_at.items()}}


def repeat_args(test: str, runs: int) -> list[str]:
    return ["-p", "no:pytest_ipc", "-x", f"--count={runs}", f"test_plain.py::{test}"]  # pytest-repeat autoloads


def ipc_args(method: str, tests: list[str], jitter: str, report: Path) -> list[str]:
    ids = [f"test_ipc.py::{t}" for t in tests]
    return [
        "-p",
        "pytest_ipc",
        f"--ipc-start-method={method}",
        f"--ipc-jitter={jitter}",
        f"--ipc-report={report}",
        *ids,
    ]


def fmt(values: list[float], scale: float = 1.0, digits: int = 2) -> str:
    if not values:
        return "-"
    v = sorted(x * scale for x in values)
    return f"{statistics.median(v):.{digits}f} ({v[0]:.{digits}f}-{v[-1]:.{digits}f})"


def _child_modules(script: Path, mode: str) -> dict[str, int]:
    """Microseconds of import (self time) per module in one spawn child's ``-X importtime`` output."""
    out = run([sys.executable, str(script), mode], script.parent, environment(), timeout=120)
    modules: dict[str, int] = {}
    for line in out.stderr.splitlines():
        if not line.startswith("import time:") or "[us]" in line:
            continue
        self_us, _cumulative, name = line[len("import time:") :].split("|")
        modules[name.strip()] = modules.get(name.strip(), 0) + int(self_us)
    return modules


def child_imports(workdir: Path, rounds: int = 5) -> tuple[list[float], list[tuple[str, float]]]:
    """Milliseconds of imports an ipc_workers spawn child makes beyond a bare spawn child (per round), the biggest."""
    script = workdir / "child_imports.py"
    script.write_text(CHILD_IMPORTS)
    totals, last = [], {}
    for _ in range(rounds):
        plain, ipc = _child_modules(script, "plain"), _child_modules(script, "ipc")
        last = {name: us for name, us in ipc.items() if name not in plain}
        totals.append(sum(last.values()) / 1000)
    top = sorted(last.items(), key=lambda kv: -kv[1])[:6]
    return totals, [(name, us / 1000) for name, us in top]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default="fork,forkserver,spawn")
    parser.add_argument("--rounds", type=int, default=None, help="rounds per start method (default 7/5/3)")
    opts = parser.parse_args()
    methods = [m.strip() for m in opts.methods.split(",") if m.strip()]
    print(machine(), flush=True)
    with tempfile.TemporaryDirectory(prefix="ipc-peers-") as tmp:
        workdir = Path(tmp)
        write_files(workdir, {"test_plain.py": PLAIN, "test_ipc.py": IPC})
        verdict_rows, cost_rows = [], []
        for method in methods:
            rounds = opts.rounds or ROUNDS[method]
            most, free = MAX_RUNS[method], FREE_RUNS[method]
            repeat_t, repeat_n, assert_t, assert_n, record_t, record_n = [], [], [], [], [], []
            repeat_free, off_free, low_free, floor = [], [], [], []
            missed = 0
            report = workdir / "report.json"
            for r in range(rounds):
                sides = ["repeat", "ipc"] if r % 2 == 0 else ["ipc", "repeat"]
                for side in sides:
                    if side == "repeat":
                        got = pytest_run(workdir, method, most, repeat_args("test_counter", most))
                        if "test_counter#failed" in got:
                            repeat_t.append(got["test_counter"])
                            repeat_n.append(got["test_counter#failed"])
                        else:
                            missed += 1
                        got = pytest_run(workdir, method, free, repeat_args("test_locked", free))
                        repeat_free.append(got["test_locked"] / got["test_locked#n"])
                        out = workdir / "floor.json"
                        pytest_run(
                            workdir,
                            method,
                            free,
                            ["-p", "no:pytest_ipc", "test_plain.py::test_floor"],
                            {"PEERS_OUT": str(out)},
                        )
                        floor.append(statistics.median(json.loads(out.read_text())))
                    else:
                        got = pytest_run(
                            workdir,
                            method,
                            most,
                            ipc_args(method, ["test_counter_assert", "test_counter"], "low", report),
                        )
                        runs = {t["nodeid"].split("::")[1]: t["runs"] for t in json.loads(report.read_text())["tests"]}
                        assert_t.append(got["test_counter_assert"])
                        assert_n.append(runs["test_counter_assert"])
                        record_t.append(got["test_counter"])
                        record_n.append(runs["test_counter"])
                        for jitter, into in (("off", off_free), ("low", low_free)):
                            got = pytest_run(workdir, method, free, ipc_args(method, ["test_locked"], jitter, report))
                            into.append(got["test_locked"] / free)
                print(f"  {method}: round {r + 1} of {rounds} done", file=sys.stderr, flush=True)
            median_repeat = statistics.median(repeat_t) if repeat_t else None
            ratio = f"{median_repeat / statistics.median(assert_t):.1f}x" if median_repeat else "-"
            ratio_rec = f"{median_repeat / statistics.median(record_t):.1f}x" if median_repeat else "-"
            found = f"{len(repeat_t)} of {rounds}" + (f" (none in {most} runs: {missed})" if missed else "")
            verdict_rows.append(
                f"| {method} | {fmt(repeat_t)} | {fmt(repeat_n, digits=0)} | {found} "
                f"| {fmt(assert_t)} | {fmt(assert_n, digits=0)} | {ratio} "
                f"| {fmt(record_t)} | {fmt(record_n, digits=0)} | {ratio_rec} | 1/{TARGETS[method]} |"
            )
            cost_rows.append(
                f"| {method} | {fmt(repeat_free, 1000, 0)} | {fmt(off_free, 1000, 0)} | {fmt(low_free, 1000, 0)} "
                f"| {fmt(floor, 1000, 0)} |"
            )
        print(
            "\n### Time to the verdict on the tutorial's counter (seconds inside pytest; runs made)\n\n"
            "| start method | pytest-repeat -x | its runs | rounds it found the race | pytest-ipc, `assert` | its runs "
            "| speed-up | pytest-ipc, totals compared | its runs | speed-up | target |\n"
            "|---|---|---|---|---|---|---|---|---|---|---|"
        )
        print("\n".join(verdict_rows))
        print(
            "\n### Per run on race-free code, the locked counter (ms; median of the rounds, range)\n\n"
            "| start method | pytest-repeat, per item | pytest-ipc, jitter off | pytest-ipc, jitter low "
            "| floor: Value + 9 workers started and joined |\n|---|---|---|---|---|"
        )
        print("\n".join(cost_rows))
        if "spawn" in methods:
            extra, top = child_imports(workdir)
            names = ", ".join(f"{name} {ms:.1f}" for name, ms in top)
            print(
                f"\nspawn worker imports beyond a bare multiprocessing child: {fmt(extra, digits=1)} ms, "
                f"target 15 ms (largest in the last round, ms: {names})"
            )


if __name__ == "__main__":
    main()

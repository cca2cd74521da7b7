"""Where the race is: how often a failing verdict names the racing lines, and what tracing costs.

1. Naming.  Every racy scenario of bench/scenarios.py (those of the
   correctness suite and the multi-role ones) runs as an ``ipc_race`` test
   with the default stop rule, in one pytest session per round and start
   method.  Per scenario it prints the share of failing verdicts whose report
   shows a conflict (of any kind) all of whose accesses are on the
   scenario's racing lines (:data:`RACING`: both sides of the race), and the
   kinds found.  A scenario whose report names none shows what it said
   instead.
2. Cost.  The race-free locked counter (9 x 50 ``with lock: v.value += 1``)
   as an ``ipc_race(runs=N)`` test, jitter low, with this checkout and with
   ``--base`` (a git revision, checked out in a temporary worktree), in
   alternating order: the per-run time of each, medians and ranges over the
   rounds, and their ratio.  Race-free runs are never traced; what they might
   pay is the patched accessors' check for a trace.

    python bench/diagnosis.py                         # naming: fork 10 rounds, forkserver 5, spawn 3
    python bench/diagnosis.py --cost --base df39f28   # the A/B only
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import scenarios  # bench/ is on sys.path when a script of it runs
from detection import TEST_FILE
from machine import machine

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
METHODS = ("fork", "forkserver", "spawn")
ROUNDS = {"fork": 10, "forkserver": 5, "spawn": 3}

# Per racy scenario: the lines of bench/scenarios.py where it races, as
# (function, the line's text).  A report names them when every access of a
# conflict it shows is on one of them.
RACING: dict[str, list[tuple[str, str]]] = {
    "unlocked Value counter": [("inc_value", "v.value += 1")],
    "unlocked Array element": [("inc_array", "a[3] += 1")],
    "Manager dict +=": [("inc_dict", 'd["n"] += 1')],
    "unlocked RawValue counter": [("inc_value", "v.value += 1")],
    "Manager Value +=": [("inc_value", "v.value += 1")],
    "queue consumer stops at empty()": [("queue_role", "while not q.empty():"), ("queue_role", "q.put(i)")],
    "unlocked SharedMemory byte": [("inc_shm", "shm.buf[0] += 1")],
    "counter under a lock of its own": [("inc_value_own_lock", "v.value += 1")],
    "SharedMemory byte under one of two locks": [("inc_shm_locked", "shm.buf[0] += 1")],
    "per-slot sellers, check then act": [("sell", "left = sold.value < limit"), ("sell", "sold.value += 1")],
    "writer and readers apart, torn pair": [
        ("write_pair", "a.value = i"),
        ("write_pair", "b.value = i"),
        ("read_pair", "x = a.value"),
        ("read_pair", "y = b.value"),
    ],
    "producer and consumer apart, empty()": [
        ("consume_until_empty", "while not q.empty():"),
        ("produce_items", "q.put(i)"),
    ],
    "two pairs, inverted lock order": [
        ("transfer", "with first:"),
        ("transfer", "if not second.acquire(timeout=LOCK_WAIT):"),
    ],
}


def racing_lines(name: str) -> set[int]:
    lines = set()
    for func, text in RACING[name]:
        source, start = inspect.getsourcelines(getattr(scenarios, func))
        found = [start + k for k, line in enumerate(source) if line.split("  #")[0].strip() == text]
        assert found, (name, func, text)
        lines.update(found)
    return lines


def session(method: str, names: list[str], seed: int, workdir: Path, pythonpath: str = "") -> dict[str, Any]:
    """One pytest session of the named scenarios (default stop rule); its JSON report's tests by scenario."""
    (workdir / "test_bench.py").write_text(TEST_FILE)
    report = workdir / "report.json"
    report.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "pytest", "test_bench.py", "-q", "-p", "no:cacheprovider"]
    cmd += [f"--ipc-start-method={method}", "--ipc-jitter=low", f"--ipc-seed={seed}", "--ipc-timeout=30"]
    cmd += [f"--ipc-report={report}", "--ipc-budget=none"]
    env = {
        **os.environ,
        "BENCH_MODE": "jitter",
        "BENCH_LOG": str(workdir / "log.jsonl"),
        "BENCH_METHOD": method,
        "BENCH_SCENARIOS": "|".join(names),
        "PYTHONPATH": os.pathsep.join(p for p in (pythonpath, str(HERE), os.environ.get("PYTHONPATH", "")) if p),
    }
    subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True, timeout=3600)
    tests = json.loads(report.read_text())["tests"] if report.exists() else []
    return {n: t for t in tests for n in names if f"[{n}]" in t["nodeid"]}


def naming(methods: list[str], rounds: dict[str, int], seed: int) -> None:
    names = list(RACING)
    lines = {n: racing_lines(n) for n in names}
    print("## Does the report name the racing lines?")
    print()
    print("Share of failing verdicts whose report shows a conflict on the scenario's racing lines")
    print("(any kind, all of its accesses on them), per start method; and what was found.")
    print()
    for method in methods:
        failing: Counter[str] = Counter()
        named: Counter[str] = Counter()
        kinds: dict[str, Counter[str]] = {n: Counter() for n in names}
        with tempfile.TemporaryDirectory(prefix="bench-diagnosis-") as tmp:
            for r in range(rounds[method]):
                tests = session(method, names, seed + r, Path(tmp))
                for n in names:
                    t = tests.get(n)
                    if t is None or t["verdict"] == "passed":
                        continue
                    failing[n] += 1
                    conflicts = t.get("conflicts", [])
                    ok = [
                        c
                        for c in conflicts
                        if all(a["file"].endswith("scenarios.py") and a["line"] in lines[n] for a in c["accesses"])
                    ]
                    if ok:
                        named[n] += 1
                        kinds[n].update(c["kind"] for c in ok)
                    elif conflicts:
                        kinds[n]["a conflict on other lines"] += 1
                    else:
                        note = t.get("trace", {}).get("note", "not traced")
                        kinds[n][_short(note)] += 1
        print(f"### {method} ({rounds[method]} sessions)")
        print()
        print("| scenario | failing | named | share | found |")
        print("| --- | --- | --- | --- | --- |")
        for n in names:
            share = f"{named[n] / failing[n]:.0%}" if failing[n] else "-"
            found = ", ".join(f"{k} x{c}" for k, c in kinds[n].most_common())
            print(f"| {n} | {failing[n]} | {named[n]} | {share} | {found} |")
        print()


def _short(note: str) -> str:
    if note.startswith("no trace:"):
        return "no traced access"
    if note.startswith("no lost update"):
        return "accesses traced, no conflict"
    return "not traced"


COST_TEST = """
import pytest

import scenarios


@pytest.mark.ipc_race(runs={runs}, expect=scenarios.EXPECTED["locked counter"])
def test_locked(ipc_context, ipc_workers, ipc_outcome):
    outcome, _expected = scenarios.locked_counter(ipc_context, ipc_workers, {{}})
    ipc_outcome.record(outcome)
"""


def cost_once(method: str, runs: int, workdir: Path, pythonpath: str) -> float:
    """The per-run time of one session of the locked counter, from its JSON report's duration."""
    (workdir / "test_cost.py").write_text(COST_TEST.format(runs=runs))
    report = workdir / "cost.json"
    report.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "pytest", "test_cost.py", "-q", "-p", "no:cacheprovider", "-p", "pytest_ipc"]
    cmd += [f"--ipc-start-method={method}", "--ipc-jitter=low", "--ipc-seed=1", f"--ipc-report={report}"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (pythonpath, str(HERE)) if p)}
    proc = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True, timeout=3600)
    tests = json.loads(report.read_text())["tests"] if report.exists() else []
    if not tests or tests[0]["verdict"] != "passed":
        raise SystemExit(f"the locked counter did not pass ({pythonpath or 'this checkout'}):\n{proc.stdout[-2000:]}")
    return float(tests[0]["duration"]) / int(tests[0]["runs"])


def cost(methods: list[str], base: str, rounds: int, runs: int) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-diagnosis-base-") as tree:
        subprocess.run(
            ["git", "-C", str(ROOT), "worktree", "add", "--detach", tree, base], check=True, capture_output=True
        )
        try:
            print(f"## Race-free cost: the locked counter, {runs} runs, jitter low; this checkout vs {base}")
            print()
            print("| start method | this checkout, ms/run | base, ms/run | ratio (median of pairs) |")
            print("| --- | --- | --- | --- |")
            for method in methods:
                mine, theirs, ratios = [], [], []
                with tempfile.TemporaryDirectory(prefix="bench-diagnosis-cost-") as tmp:
                    for r in range(rounds):
                        order = [("", mine), (tree, theirs)]
                        if r % 2:
                            order.reverse()
                        pair = {}
                        for path, out in order:
                            t = cost_once(method, runs, Path(tmp), path)
                            out.append(t)
                            pair[path] = t
                        ratios.append(pair[""] / pair[tree])
                print(
                    f"| {method} | {_stat(mine)} | {_stat(theirs)} | {statistics.median(ratios):.3f} "
                    f"({min(ratios):.3f}-{max(ratios):.3f}) |"
                )
            print()
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", tree], capture_output=True)


def _stat(values: list[float]) -> str:
    ms = [v * 1000 for v in values]
    return f"{statistics.median(ms):.1f} ({min(ms):.1f}-{max(ms):.1f})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument(
        "--rounds", type=int, default=0, help="sessions per start method (default: fork 10, forkserver 5, spawn 3)"
    )
    ap.add_argument("--seed", type=int, default=4242)
    ap.add_argument("--cost", action="store_true", help="only the race-free A/B against --base")
    ap.add_argument("--base", default="", help="a git revision to compare the race-free cost with")
    ap.add_argument("--cost-rounds", type=int, default=7)
    ap.add_argument("--cost-runs", type=int, default=30)
    args = ap.parse_args()
    methods = [m for m in args.methods.split(",") if m]
    print(f"# bench/diagnosis.py: {machine()}, {time.strftime('%Y-%m-%d')}")
    print()
    if not args.cost:
        rounds = {m: args.rounds or ROUNDS[m] for m in methods}
        naming(methods, rounds, args.seed)
    if args.base:
        cost(methods, args.base, args.cost_rounds, args.cost_runs)


if __name__ == "__main__":
    main()

"""What does the ``ipc_race`` marker cost per run, next to plain ``multiprocessing``?

The seed's counter scenario (9 workers, 50 unlocked ``counter.value += 1``
each) is run N times (default 200) two ways, per start method:

- ``pytest-ipc``: a real ``pytest`` subprocess on a generated test file
  marked ``@pytest.mark.ipc_race(runs=N)`` using ``shared_value`` and
  ``ipc_workers``, with ``--ipc-jitter=off`` so that only the plugin's own
  work is measured, not the amplification.  The time is the test's
  ``duration`` in the ``--ipc-report`` JSON: all N runs with their fixture
  set-ups and teardowns, without interpreter start-up and collection.
- ``plain``: a Python subprocess with no pytest that loops N times over
  "make a ``Value``, start 9 ``Process``, join them, read the value", timed
  around the loop.
- ``plain in pytest``: the same loop inside one ordinary, unmarked pytest
  test, to tell the cost of forking from a (bigger) pytest process apart
  from the cost of the plugin's fixtures and launcher.

All three use the same worker target, the pytest-free ``tests/bodies.py``'s.
Under spawn and forkserver the plain script's workers also re-run the
script as ``__mp_main__``, as any user script's would; under
``python -m pytest`` multiprocessing skips that, which is why the plain loop
can be slower than the same loop inside pytest with those methods.  Each measurement
is repeated ``--repeat`` times (the two ways alternating, so a change of
machine load hits both) and the median is reported.  The script prints a
markdown table for the README, with the machine it ran on.

    python bench/overhead.py                          # 200 runs x 3 under fork, spawn, forkserver
    python bench/overhead.py --methods fork --repeat 5
    python bench/overhead.py --methods spawn,forkserver --runs 20

The plugin's overhead per run should stay under 10% with fork.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import sys
import tempfile
from dataclasses import dataclass

from machine import machine  # bench/ is on sys.path when a script of it runs
from sessions import environment, pytest_command, run, write_files

WORKERS = 9
INCREMENTS = 50

# The worker target of all three: the unlocked counter of tests/bodies.py.
TEST = """
import pytest

from bodies import add


@pytest.mark.ipc_race(runs={runs})
def test_counter(shared_value, ipc_workers):
    ipc_workers.start(add, args=(shared_value, {increments}), count={workers})
    ipc_workers.join()
"""

LOOP = """
import json
import multiprocessing
import time

from bodies import add


def loop(method, runs):
    ctx = multiprocessing.get_context(method)
    totals = []
    started = time.monotonic()
    for _ in range(runs):
        counter = ctx.Value("i", 0)
        procs = [ctx.Process(target=add, args=(counter, {increments})) for _ in range({workers})]
        for p in procs:
            p.start()
        for p in procs:
            p.join()
        totals.append(counter.value)
    duration = time.monotonic() - started
    return json.dumps({{"duration": duration, "runs": runs, "distinct": len(set(totals))}})
"""

PLAIN = """
import sys

from bench_loop import loop

if __name__ == "__main__":
    print(loop(sys.argv[1], int(sys.argv[2])))
"""

# The same plain loop inside one ordinary (unmarked) pytest test: what forking
# from a pytest process costs by itself, without pytest-ipc's fixtures.
IN_PYTEST = """
import os

from bench_loop import loop


def test_plain_loop():
    with open(os.environ["IPC_BENCH_OUT"], "w") as f:
        f.write(loop(os.environ["IPC_BENCH_METHOD"], int(os.environ["IPC_BENCH_RUNS"])))
"""


@dataclass
class Sample:
    duration: float
    runs: int

    @property
    def rate(self) -> float:
        return self.runs / self.duration


def write_bench_files(workdir: str, runs: int) -> None:
    files = {
        "test_overhead.py": TEST.format(runs=runs, increments=INCREMENTS, workers=WORKERS),
        "bench_loop.py": LOOP.format(increments=INCREMENTS, workers=WORKERS),
        "plain_loop.py": PLAIN,
        "test_in_pytest.py": IN_PYTEST,
    }
    write_files(workdir, files)


def run_plugin(workdir: str, method: str, runs: int, timeout: float) -> Sample:
    report = os.path.join(workdir, "report.json")
    if os.path.exists(report):
        os.remove(report)
    cmd = pytest_command(
        workdir,
        "test_overhead.py",
        f"--basetemp={os.path.join(workdir, 'basetemp')}",
        f"--ipc-start-method={method}",
        "--ipc-jitter=off",
        f"--ipc-report={report}",
        plugins=(),
    )
    proc = run(cmd, workdir, environment(), timeout)
    try:
        with open(report) as f:
            (test,) = json.load(f)["tests"]
    except (OSError, ValueError) as exc:
        raise SystemExit(f"pytest wrote no usable report ({exc}):\n{proc.stdout}\n{proc.stderr}") from None
    if test["runs"] != runs:
        raise SystemExit(f"expected {runs} runs, the report says {test['runs']}:\n{proc.stdout}")
    return Sample(test["duration"], test["runs"])


def run_in_pytest(workdir: str, method: str, runs: int, timeout: float) -> Sample:
    out = os.path.join(workdir, "in_pytest.json")
    env = environment(IPC_BENCH_OUT=out, IPC_BENCH_METHOD=method, IPC_BENCH_RUNS=str(runs))
    cmd = pytest_command(workdir, "test_in_pytest.py", f"--basetemp={os.path.join(workdir, 'basetemp')}", plugins=())
    proc = run(cmd, workdir, env, timeout)
    if proc.returncode != 0:
        raise SystemExit(f"the plain loop failed inside pytest:\n{proc.stdout}\n{proc.stderr}")
    with open(out) as f:
        data = json.load(f)
    return Sample(data["duration"], data["runs"])


def run_plain(workdir: str, method: str, runs: int, timeout: float) -> Sample:
    proc = run([sys.executable, "plain_loop.py", method, str(runs)], workdir, environment(), timeout)
    proc.check_returncode()
    data = json.loads(proc.stdout.strip().splitlines()[-1])
    return Sample(data["duration"], data["runs"])


WAYS = {"pytest-ipc": run_plugin, "plain": run_plain, "plain in pytest": run_in_pytest}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=200, help="runs per measurement (default 200)")
    parser.add_argument(
        "--methods",
        default="fork,spawn,forkserver",
        help="comma-separated start methods (default fork,spawn,forkserver)",
    )
    parser.add_argument("--repeat", type=int, default=3, help="measurements per way; the median counts (default 3)")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds any one measurement may take")
    args = parser.parse_args(argv)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    available = multiprocessing.get_all_start_methods()
    for m in methods:
        if m not in available:
            parser.error(f"--methods: {m!r} is not a start method here (available: {', '.join(available)})")
    if args.runs < 1 or args.repeat < 1:
        parser.error("--runs and --repeat must be at least 1")

    header = machine()
    print(
        f"# {header}; {WORKERS} workers x {INCREMENTS} increments, {args.runs} runs, median of {args.repeat}",
        file=sys.stderr,
    )
    rows = []
    with tempfile.TemporaryDirectory(prefix="ipc-overhead-") as workdir:
        write_bench_files(workdir, args.runs)
        for method in methods:
            samples: dict[str, list[Sample]] = {name: [] for name in WAYS}
            for i in range(args.repeat):
                # Rotate which way goes first, so drift in the load favours none.
                names = list(WAYS)
                names = names[i % len(names) :] + names[: i % len(names)]
                for name in names:
                    sample = WAYS[name](workdir, method, args.runs, args.timeout)
                    samples[name].append(sample)
                    print(f"  {method:<10} {name:<16} {sample.rate:8.1f} runs/s", file=sys.stderr)
            rows.append((method, *(statistics.median(s.rate for s in samples[n]) for n in WAYS)))

    print(
        f"Machine: {header}. Seed counter scenario ({WORKERS} workers x {INCREMENTS} increments), "
        f"{args.runs} runs, jitter off, median of {args.repeat}."
    )
    print()
    print(
        "| start method | pytest-ipc runs/s | plain multiprocessing runs/s | ratio | overhead per run "
        "| plain loop inside pytest runs/s |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for method, plugin_rate, plain_rate, in_pytest_rate in rows:
        ratio = plugin_rate / plain_rate
        overhead = plain_rate / plugin_rate - 1  # extra time per run, relative to plain
        print(
            f"| {method} | {plugin_rate:.1f} | {plain_rate:.1f} | {ratio:.2f} | {overhead:+.1%} "
            f"| {in_pytest_rate:.1f} |"
        )
    print()
    print(
        "overhead per run = (time per run under the marker) / (time per run of the plain loop) - 1; "
        "the last column is the plain loop run inside an ordinary pytest test, without the "
        "plugin's fixtures: the part of the overhead that forking from a pytest process costs."
    )


if __name__ == "__main__":
    main()

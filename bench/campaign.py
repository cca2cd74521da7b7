"""How much faster does a long race campaign go on two xdist workers than on one?

One ``ipc_race`` test (the tutorial's counter under its lock: 9 workers x 50
increments, race-free, so every run completes) is run as a campaign of
``--runs`` runs split into ``--shards`` items with ``--ipc-shards``, once with
``pytest -n 1`` and once with ``pytest -n 2``, alternating, ``--repeat``
times.  The time is the wall time of the whole ``pytest`` command, start-up
included, since that is what a nightly job pays.  Prints a markdown table with
the median runs per second of each and their ratio.

    python bench/campaign.py                      # 400 runs, 4 shards, 3 repeats
    python bench/campaign.py --runs 2000 --repeat 1
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time

from sessions import bodies_source, pytest_command, run, write_files  # bench/ is on sys.path when a script of it runs

# The tutorial's locked counter written into the test module, as a user writes it.
TEST = """
import pytest

{add_locked}

@pytest.mark.ipc_race
def test_campaign(shared_value, ipc_workers):
    ipc_workers.start(add_locked, args=(shared_value, 50), count=9)
    ipc_workers.join()
"""


def run_once(workdir: str, workers: int, runs: int, shards: int) -> float:
    """Wall seconds of one campaign with ``-n workers``."""
    cmd = pytest_command(
        workdir,
        "-n",
        str(workers),
        f"--ipc-shards={shards}",
        f"--ipc-runs={runs}",
        "--ipc-budget=none",
        "--ipc-all-runs",  # a campaign's cost: every run, whatever it finds
        "test_campaign.py",
    )
    started = time.monotonic()
    proc = run(cmd, workdir, timeout=3600)
    elapsed = time.monotonic() - started
    if proc.returncode != 0:
        sys.exit(f"campaign failed (-n {workers}):\n{proc.stdout}\n{proc.stderr}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=400, help="runs in the campaign (default 400)")
    parser.add_argument("--shards", type=int, default=4, help="--ipc-shards (default 4)")
    parser.add_argument("--repeat", type=int, default=3, help="campaigns per worker count; the median counts")
    args = parser.parse_args()
    times: dict[int, list[float]] = {1: [], 2: []}
    with tempfile.TemporaryDirectory() as workdir:
        write_files(workdir, {"test_campaign.py": TEST.format(add_locked=bodies_source("add_locked"))})
        for _ in range(args.repeat):
            for workers in (1, 2):
                times[workers].append(run_once(workdir, workers, args.runs, args.shards))
                print(f"# -n {workers}: {times[workers][-1]:.1f}s", file=sys.stderr)
    rate = {n: args.runs / statistics.median(t) for n, t in times.items()}
    load = os.getloadavg()[0]
    print(
        f"Machine: {platform.system()} {platform.machine()}, nproc {os.cpu_count()}, Python "
        f"{platform.python_version()}, load average {load:.2f} at the end. {args.runs} runs in "
        f"{args.shards} shards, median of {args.repeat}, wall time of the whole pytest command.\n"
    )
    print("| xdist workers | runs/s | speed-up |")
    print("|---|---:|---:|")
    for n in (1, 2):
        print(f"| -n {n} | {rate[n]:.1f} | {rate[n] / rate[1]:.2f}x |")


if __name__ == "__main__":
    main()

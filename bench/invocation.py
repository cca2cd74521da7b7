"""How long does a whole ``pytest`` invocation take for one racy test?

The user's view of "found on the first run": the wall time of
``python -m pytest -p pytest_ipc test_counter.py`` on the tutorial's unlocked
counter (9 workers x 50 ``counter.value += 1``) under ``ipc_race`` with the
default runs and jitter, from the command to its exit: interpreter start,
plugin and collection, the runs, the report.  The test must fail with
``RaceDetected`` every time (else the script says so).  Median of
``--repeat`` invocations, per start method.

    python bench/invocation.py                     # fork, spawn, forkserver; 5 invocations each
    python bench/invocation.py --methods fork --repeat 9
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time

from machine import machine  # bench/ is on sys.path when a script of it runs
from sessions import bodies_source, pytest_command, run, write_files

# The tutorial's counter written into the test module, as a user writes it.
TEST = """
import pytest


{add}


@pytest.mark.ipc_race
def test_counter(shared_value, ipc_workers):
    ipc_workers.start(add, args=(shared_value, 50), count=9)
    ipc_workers.join()
"""


def invoke(workdir: str, method: str) -> tuple[float, str]:
    cmd = pytest_command(workdir, f"--ipc-start-method={method}", "test_counter.py")
    started = time.monotonic()
    proc = run(cmd, workdir, timeout=600)
    wall = time.monotonic() - started
    if proc.returncode != 1 or "RaceDetected" not in proc.stdout:
        raise SystemExit(f"expected the race to be reported (exit 1), got exit {proc.returncode}:\n{proc.stdout}")
    runs = next((line for line in proc.stdout.splitlines() if "RaceDetected:" in line), "")
    return wall, runs


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", default="fork,spawn,forkserver")
    parser.add_argument("--repeat", type=int, default=5, help="invocations per start method (default 5)")
    args = parser.parse_args(argv)
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    rows = []
    with tempfile.TemporaryDirectory(prefix="ipc-invocation-") as workdir:
        write_files(workdir, {"test_counter.py": TEST.format(add=bodies_source("add"))})
        for method in [m.strip() for m in args.methods.split(",") if m.strip()]:
            walls = []
            for _ in range(args.repeat):
                wall, line = invoke(workdir, method)
                walls.append(wall)
                print(f"  {method:<10} {wall:6.2f} s  {line.strip()[:90]}", file=sys.stderr)
            rows.append((method, statistics.median(walls), min(walls), max(walls)))
    print(
        f"Machine: {machine()}. Unlocked 9 x 50 counter, default runs and jitter, "
        f"{args.repeat} invocations per start method."
    )
    print()
    print("| start method | median wall time | fastest | slowest |")
    print("|---|---:|---:|---:|")
    for method, median, low, high in rows:
        print(f"| {method} | {median:.2f} s | {low:.2f} s | {high:.2f} s |")


if __name__ == "__main__":
    main()

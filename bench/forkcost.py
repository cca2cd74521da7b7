"""What does one ``os.fork()`` cost, from a bare interpreter and from pytest?

The fork start method's price is paid in the parent: ``fork()`` copies the
parent's page tables, so it costs more the more memory the parent has
mapped.  A pytest process (pytest, its plugins, hypothesis, psutil, the
collected tests) is several times the size of a small script, so every
worker it forks costs more, with or without pytest-ipc.  This prints the
median time of ``fork()`` (until it returns in the parent; the child exits
at once) three ways, each in a fresh Python:

- ``bare``: a script that imports nothing but ``os``;
- ``imports``: a script that imports what a pytest-ipc session has loaded
  (pytest, pytest_ipc, hypothesis, psutil, multiprocessing), without
  running pytest;
- ``in pytest``: inside an ordinary test of a ``pytest -p pytest_ipc``
  session.

    python bench/forkcost.py               # 500 forks each way, median of 5 rounds
    python bench/forkcost.py --forks 200 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile

from machine import machine  # bench/ is on sys.path when a script of it runs
from sessions import pytest_command, run, write_files

MEASURE = """
import json
import os
import resource
import time


def measure(forks):
    times = []
    for _ in range(forks):
        started = time.perf_counter()
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        times.append(time.perf_counter() - started)
        os.waitpid(pid, 0)
    times.sort()
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return json.dumps({"median_ms": times[len(times) // 2] * 1e3, "max_rss_mib": rss})
"""

SCRIPT = """
import sys

if sys.argv[1] == "imports":
    import multiprocessing  # noqa: F401

    import hypothesis  # noqa: F401
    import psutil  # noqa: F401
    import pytest  # noqa: F401

    import pytest_ipc  # noqa: F401

from forkcost_measure import measure

print(measure(int(sys.argv[2])))
"""

TEST = """
import os

from forkcost_measure import measure


def test_fork_cost():
    with open(os.environ["FORKCOST_OUT"], "w") as f:
        f.write(measure(int(os.environ["FORKCOST_FORKS"])))
"""


def run_way(workdir: str, way: str, forks: int) -> dict[str, float]:
    if way == "in pytest":
        out = os.path.join(workdir, "out.json")
        env = dict(os.environ, FORKCOST_OUT=out, FORKCOST_FORKS=str(forks))
        proc = run(pytest_command(workdir, "test_forkcost.py"), workdir, env, timeout=600)
        if proc.returncode != 0:
            raise SystemExit(f"the pytest session failed:\n{proc.stdout}\n{proc.stderr}")
        with open(out) as f:
            return json.load(f)  # type: ignore[no-any-return]
    proc = run([sys.executable, "forkcost_script.py", way, str(forks)], workdir, timeout=600)
    proc.check_returncode()
    return json.loads(proc.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--forks", type=int, default=500, help="forks per measurement (default 500)")
    parser.add_argument("--rounds", type=int, default=5, help="measurements per way; the median counts (default 5)")
    args = parser.parse_args(argv)
    if args.forks < 1 or args.rounds < 1:
        parser.error("--forks and --rounds must be at least 1")
    ways = ["bare", "imports", "in pytest"]
    results: dict[str, list[dict[str, float]]] = {w: [] for w in ways}
    with tempfile.TemporaryDirectory(prefix="ipc-forkcost-") as workdir:
        write_files(workdir, {"forkcost_measure.py": MEASURE, "forkcost_script.py": SCRIPT, "test_forkcost.py": TEST})
        for i in range(args.rounds):
            for way in ways[i % 3 :] + ways[: i % 3]:  # rotate, so drift in the load favours none
                sample = run_way(workdir, way, args.forks)
                results[way].append(sample)
                print(
                    f"  {way:<10} {sample['median_ms']:.3f} ms  (max RSS {sample['max_rss_mib']:.0f} MiB)",
                    file=sys.stderr,
                )
    bare = statistics.median(s["median_ms"] for s in results["bare"])
    print(f"Machine: {machine()}. {args.forks} forks per measurement, median of {args.rounds}.")
    print()
    print("| parent | max RSS | median os.fork() | vs bare |")
    print("|---|---:|---:|---:|")
    for way in ways:
        ms = statistics.median(s["median_ms"] for s in results[way])
        rss = statistics.median(s["max_rss_mib"] for s in results[way])
        print(f"| {way} | {rss:.0f} MiB | {ms:.3f} ms | {ms / bare:.1f}x |")


if __name__ == "__main__":
    main()

"""What an installed pytest-ipc costs a session that does not use it.

pytest-ipc autoloads wherever it is installed, so every other project's test
session pays for it: importing the plugin, its option and configure hooks,
its per-test hooks.  Two measures, each with the plugin and without it
(``-p no:pytest_ipc``), alternating, median of ``--repeat``:

- in-process: the time of a one-test ``pytester.inline_run()`` session inside
  an outer pytest session, as a plugin's own suite runs hundreds of them
  (pytester restores ``sys.modules`` after each, so whatever a session
  imports lazily it imports again in the next);
- subprocess: the wall time of ``python -m pytest -q test_one.py``.

The sessions load no other plugin (``PYTEST_DISABLE_PLUGIN_AUTOLOAD=1``):
every other installed plugin adds its own cost and its own noise, which
would hide a few milliseconds.  The arm with the plugin hands the module to
``pytest.main(plugins=[...])`` rather than ``-p pytest_ipc``, whose lookup
among the entry points (a few ms) pytest makes anyway when it autoloads.
The subprocess arm with the plugin includes importing it.

    python bench/startup.py                 # 200 in-process sessions and 30 subprocesses per arm
    python bench/startup.py --repeat 400 --subprocesses 50
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import textwrap
import time

from machine import machine  # bench/ is on sys.path when a script of it runs
from sessions import pytest_args, pytest_command, run, write_files

ONE_TEST = "def test_one():\n    assert 1 + 1 == 2\n"

# The outer session: each test runs one inner session in-process and notes its time.
OUTER = textwrap.dedent("""
    import json
    import os
    import time

    import pytest

    pytest_plugins = ["pytester"]
    REPEAT = int(os.environ["STARTUP_REPEAT"])
    import pytest_ipc.plugin

    ARMS = (("with", [pytest_ipc.plugin]), ("without", []))


    @pytest.mark.parametrize("n", range(REPEAT))
    def test_inner_session(pytester, monkeypatch, n):
        monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")
        pytester.makepyfile(test_one={one!r})
        times = {{}}
        # Alternating: each pair of sessions in the other order from the last.
        for arm, plugins in (ARMS if n % 2 else ARMS[::-1]):
            started = time.perf_counter()
            result = pytester.inline_run("-q", "-p", "no:cacheprovider", plugins=plugins)
            times[arm] = time.perf_counter() - started
            assert result.ret == 0
        with open(os.environ["STARTUP_OUT"], "a") as f:
            f.write(json.dumps(times) + "\\n")
""").format(one=ONE_TEST)


def in_process(workdir: str, repeat: int) -> dict[str, list[float]]:
    out = os.path.join(workdir, "inner.jsonl")
    write_files(workdir, {"test_outer.py": OUTER})
    # Not sessions.environment(): bench/ on sys.path would add a lookup to every import measured.
    env = dict(os.environ, STARTUP_REPEAT=str(repeat), STARTUP_OUT=out)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    proc = run(pytest_command(workdir, "test_outer.py", plugins=()), workdir, env, timeout=3600)
    if proc.returncode != 0:
        raise SystemExit(f"the outer session failed:\n{proc.stdout[-3000:]}")
    times: dict[str, list[float]] = {"with": [], "without": []}
    with open(out) as f:
        for line in f:
            for arm, t in json.loads(line).items():
                times[arm].append(t)
    return times


def subprocesses(workdir: str, repeat: int) -> dict[str, list[float]]:
    write_files(workdir, {"test_one.py": ONE_TEST})
    env = dict(os.environ, PYTEST_DISABLE_PLUGIN_AUTOLOAD="1")
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    times: dict[str, list[float]] = {"with": [], "without": []}
    args = pytest_args(workdir, "test_one.py", plugins=())
    arms = (
        ("with", f"import sys, pytest, pytest_ipc.plugin as p; sys.exit(pytest.main({args!r}, plugins=[p]))"),
        ("without", f"import sys, pytest; sys.exit(pytest.main({args!r}))"),
    )
    for n in range(repeat + 1):
        for arm, code in arms if n % 2 else arms[::-1]:
            cmd = [sys.executable, "-c", code]
            started = time.perf_counter()
            proc = run(cmd, workdir, env, timeout=120)
            elapsed = time.perf_counter() - started
            if proc.returncode != 0:
                raise SystemExit(f"{cmd} failed:\n{proc.stdout}")
            if n:  # the first pair warms the file system cache and the bytecode
                times[arm].append(elapsed)
    return times


def row(name: str, times: dict[str, list[float]]) -> str:
    with_, without = statistics.median(times["with"]), statistics.median(times["without"])
    diffs = sorted(a - b for a, b in zip(times["with"], times["without"], strict=True))
    q1, q3 = diffs[len(diffs) // 4], diffs[3 * len(diffs) // 4]
    return (
        f"| {name} | {len(times['with'])} | {without * 1000:.1f} ms | {with_ * 1000:.1f} ms | "
        f"{(with_ - without) * 1000:+.1f} ms | {statistics.median(diffs) * 1000:+.1f} ms "
        f"({q1 * 1000:+.1f} to {q3 * 1000:+.1f}) |"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=200, help="in-process sessions per arm (default 200)")
    parser.add_argument("--subprocesses", type=int, default=30, help="subprocess invocations per arm (default 30)")
    args = parser.parse_args(argv)
    print(machine())
    with tempfile.TemporaryDirectory(prefix="ipc-startup-") as workdir:
        inner_dir, sub_dir = os.path.join(workdir, "inner"), os.path.join(workdir, "sub")
        os.mkdir(inner_dir)
        os.mkdir(sub_dir)
        inner = in_process(inner_dir, args.repeat)
        sub = subprocesses(sub_dir, args.subprocesses)
    import pytest_ipc

    editable = "site-packages" not in (pytest_ipc.__file__ or "")
    print(f"pytest-ipc from {os.path.dirname(pytest_ipc.__file__ or '')}" + (" (editable install)" if editable else ""))
    print(
        "| one-test session | pairs | without pytest-ipc | with it | difference of medians | "
        "median of paired differences (quartiles) |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    print(row("in-process (pytester.inline_run)", inner))
    print(row("subprocess (python -m pytest)", sub))


if __name__ == "__main__":
    main()

"""How a benchmark runs pytest: one command line, one environment, one runner.

Every script of bench/ writes its test files into a temporary directory and
runs real pytest sessions on them in a subprocess, "pytest with the plugin
on this file" being :func:`pytest_command`.  Their worker targets are
``tests/bodies.py``'s (the tutorial's counter, as the test suite runs it) or
``bench/scenarios.py``'s (detection's scenarios): the files import them,
:func:`environment` putting both directories on the sessions' ``PYTHONPATH``,
or hold a copy as a user's test module would (:func:`bodies_source`).
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterable, Mapping
from pathlib import Path

BENCH = Path(__file__).resolve().parent
TESTS = BENCH.parent / "tests"  # bodies.py
PYTHONPATH = os.pathsep.join([str(BENCH), str(TESTS)])


def pytest_args(workdir: str | Path, *args: str, plugins: Iterable[str] = ("pytest_ipc",)) -> list[str]:
    """The arguments of ``pytest`` on ``args`` in ``workdir``: each of ``plugins`` with ``-p``, quiet, no cache.

    ``-o addopts=`` and ``--rootdir`` keep an ini file above ``workdir`` out of it.
    ``plugins=()`` names none: the installed ones load as usual (pytest-ipc too).
    """
    named = [arg for plugin in plugins for arg in ("-p", plugin)]
    return [*named, "-q", "-p", "no:cacheprovider", "-o", "addopts=", f"--rootdir={workdir}", *args]


def pytest_command(workdir: str | Path, *args: str, plugins: Iterable[str] = ("pytest_ipc",)) -> list[str]:
    """``python -m pytest`` with :func:`pytest_args`, for this Python."""
    return [sys.executable, "-m", "pytest", *pytest_args(workdir, *args, plugins=plugins)]


def environment(drop: Iterable[str] = (), **variables: str) -> dict[str, str]:
    """This process's environment with bench/ and tests/ first on ``PYTHONPATH`` and ``variables``, less ``drop``."""
    env = dict(os.environ, **variables)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (PYTHONPATH, os.environ.get("PYTHONPATH", "")) if p)
    for name in drop:
        env.pop(name, None)
    return env


def run(
    cmd: list[str], workdir: str | Path, env: Mapping[str, str] | None = None, timeout: float | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``cmd`` in ``workdir``, its output captured as text (``TimeoutExpired`` past ``timeout``)."""
    return subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True, timeout=timeout)


def write_files(workdir: str | Path, files: Mapping[str, str]) -> None:
    """Write each ``name: text`` of ``files`` into ``workdir``, dedented, without its leading blank lines."""
    for name, text in files.items():
        (Path(workdir) / name).write_text(textwrap.dedent(text).lstrip())


def bodies_source(*names: str) -> str:
    """The functions ``names`` of ``tests/bodies.py`` as source (no docstrings, no types), for a test module to hold.

    A benchmark of what a user pays writes the target into the test module,
    as users do: then a spawn or forkserver worker imports that module, and
    pytest with it, to find the target.
    """
    functions = {n.name: n for n in ast.parse((TESTS / "bodies.py").read_text()).body if isinstance(n, ast.FunctionDef)}
    sources = []
    for name in names:
        func = functions[name]
        if ast.get_docstring(func) is not None:
            func.body = func.body[1:]
        func.returns = None
        for arg in func.args.args:
            arg.annotation = None
        sources.append(ast.unparse(func))
    return "\n\n\n".join(sources)

"""The package's two sides, and its public names.

The worker side (``pytest_ipc._worker``) runs inside worker processes and
imports the standard library only; every name the documentation calls
``pytest_ipc.X`` is exported, importable and picklable.
"""

from __future__ import annotations

import json
import pickle
import re
import subprocess
import sys
from pathlib import Path

import pytest

import pytest_ipc

ROOT = Path(__file__).resolve().parent.parent


def test_the_worker_side_imports_no_pytest_and_nothing_of_the_pytest_side() -> None:
    """A fresh interpreter imports every module of pytest_ipc._worker: no pytest, no pytest-side module."""
    code = (
        "import importlib, json, pkgutil, sys\n"
        "import pytest_ipc._worker as w\n"
        "names = [m.name for m in pkgutil.walk_packages(w.__path__, w.__name__ + '.')]\n"
        "for name in names:\n"
        "    importlib.import_module(name)\n"
        "print(json.dumps({'imported': names, 'modules': sorted(sys.modules)}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    found = json.loads(out.stdout)
    assert "pytest_ipc._worker.amplify.codepoints" in found["imported"]  # the walk reached the subpackages
    pytest_side = [m for m in found["modules"] if m.startswith("pytest_ipc") and not m.startswith("pytest_ipc._worker")]
    assert pytest_side == ["pytest_ipc"]  # the package's lazy __init__ only
    assert [m for m in found["modules"] if m.split(".")[0] in ("pytest", "_pytest", "pluggy")] == []


def _documented_names() -> set[str]:
    """Every ``pytest_ipc.Name`` that README.md and docs/ mention (a capitalised name, or DONE)."""
    docs = sorted((ROOT / "docs").glob("*.md"))
    assert len(docs) > 1, "docs/*.md not found"  # the walk must not pass by reading the README alone
    texts = [ROOT / "README.md", *docs]
    names = set()
    for path in texts:
        names |= set(re.findall(r"\bpytest_ipc\.([A-Z][A-Za-z]*|DONE)\b", path.read_text()))
    return names


def test_every_documented_name_is_exported_importable_and_picklable() -> None:
    """The README's and docs' ``pytest_ipc.X`` names: in __all__, importable, and the same object after pickling."""
    names = _documented_names()
    assert {"RaceDetected", "WorkerFailed", "LeakError", "LeakWarning", "Terminated"} <= names
    assert sorted(names - set(pytest_ipc.__all__)) == []
    for name in sorted(names):
        obj = getattr(pytest_ipc, name)
        assert pickle.loads(pickle.dumps(obj)) is obj, name
        if isinstance(obj, type) and issubclass(obj, BaseException):
            # What pytest-xdist does with a warning or an error: rebuild it by module and name.
            assert obj.__module__ == "pytest_ipc"
            copy = pickle.loads(pickle.dumps(obj("message")))
            assert type(copy) is obj and str(copy) == "message"


def test_the_readme_stays_short_and_gives_the_ci_test_command() -> None:
    """README.md is what a newcomer reads first: well under 200 lines, with the command .ci/run runs."""
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) < 200
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    command = ci[ci.index(next(line for line in ci if "the README's test command" in line and "---" in line)) + 1]
    command = command.removesuffix("\\").rstrip()  # what .ci/run does if it fails goes on the next line
    assert command.startswith("python3 -m venv .venv")
    assert command in readme


LEAKY = """
import multiprocessing


def test_leaves_a_process(ipc_context):
    event = ipc_context.Event()
    process = ipc_context.Process(target=event.wait, daemon=True, name="left-behind")
    process.start()
"""


def test_a_leak_warning_under_xdist_reaches_the_controller(pytester: pytest.Pytester) -> None:
    """``-n 2 --ipc-leak-check=warn``: the LeakWarning is shown by the controller, no INTERNALERROR.

    pytest-xdist rebuilds a worker's warning on the controller by its
    module and name, so the class must be ``pytest_ipc.LeakWarning`` there.
    """
    pytester.makepyfile(test_leaky=LEAKY)
    # The test's own fork warns too, from Python 3.12, when the xdist worker
    # runs a thread (pytest-rerunfailures starts one in every xdist process).
    result = pytester.runpytest_subprocess(
        "-p",
        "pytest_ipc",
        "-n",
        "2",
        "--ipc-leak-check=warn",
        "--ipc-start-method=fork",
        "-W",
        "ignore:This process:DeprecationWarning",
        timeout=120,
    )
    result.stdout.no_fnmatch_line("*INTERNALERROR*")
    result.assert_outcomes(passed=1, warnings=1)
    result.stdout.fnmatch_lines(
        [
            "*LeakWarning: test_leaky.py::test_leaves_a_process left 1 thing(s) behind*",
            "*process never joined: left-behind*",
        ]
    )

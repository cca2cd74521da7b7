"""How the plugin is loaded: entry point, -p, pytest_plugins, -p no:, and what importing it costs.

Every session runs in a subprocess: plugin loading happens once per process
and depends on the environment (PYTEST_DISABLE_PLUGIN_AUTOLOAD).
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

USES_FIXTURE = """
def test_uses_shared_value(shared_value):
    with shared_value.get_lock():
        shared_value.value += 1
    assert shared_value.value == 1
"""

# Counts the registrations of the plugin module and shows them in the header,
# under whatever names pytest gave them.
COUNTING_CONFTEST = """
import os

pytest_plugins = [name for name in os.environ.get("IPC_TEST_PLUGINS", "").split(",") if name]


def pytest_report_header(config):
    names = sorted(
        name for name, plugin in config.pluginmanager.list_name_plugin()
        if getattr(plugin, "__name__", None) == "pytest_ipc.plugin"
    )
    return f"pytest-ipc registrations: {len(names)} {names}"
"""


def test_dash_p_loads_the_plugin(pytester: pytest.Pytester) -> None:
    """`pytest -p pytest_ipc` with the package installed gives the fixtures and the header."""
    pytester.makepyfile(USES_FIXTURE)
    result = pytester.runpytest_subprocess("-p", "pytest_ipc", timeout=60)
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["pytest-ipc: seed *, start method *, timeout 30s, *"])


def test_dash_p_loads_the_plugin_without_autoload(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    """With PYTEST_DISABLE_PLUGIN_AUTOLOAD=1 the plugin is off, and `-p pytest_ipc` turns it on."""
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")
    pytester.makepyfile(USES_FIXTURE)
    off = pytester.runpytest_subprocess(timeout=60)
    off.assert_outcomes(errors=1)
    off.stdout.fnmatch_lines(["*fixture 'shared_value' not found*"])
    on = pytester.runpytest_subprocess("-p", "pytest_ipc", timeout=60)
    on.assert_outcomes(passed=1)
    on.stdout.fnmatch_lines(["pytest-ipc: seed *"])


def test_dash_p_no_turns_the_plugin_off(pytester: pytest.Pytester) -> None:
    """`-p no:pytest_ipc` removes the fixtures, the header and the options."""
    pytester.makepyfile(USES_FIXTURE)
    result = pytester.runpytest_subprocess("-p", "no:pytest_ipc", timeout=60)
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*fixture 'shared_value' not found*"])
    result.stdout.no_fnmatch_line("pytest-ipc: seed*")
    rejected = pytester.runpytest_subprocess("-p", "no:pytest_ipc", "--ipc-timeout=5", timeout=60)
    assert rejected.ret == pytest.ExitCode.USAGE_ERROR
    rejected.stderr.fnmatch_lines(["*unrecognized arguments: --ipc-timeout=5*"])


@pytest.mark.parametrize(
    ("autoload", "args", "conftest_plugins"),
    [
        pytest.param(True, (), "", id="entry-point"),
        pytest.param(True, ("-p", "pytest_ipc"), "", id="entry-point+p"),
        pytest.param(False, ("-p", "pytest_ipc"), "", id="p"),
        pytest.param(True, (), "pytest_ipc", id="entry-point+pytest_plugins"),
        pytest.param(False, (), "pytest_ipc", id="pytest_plugins"),
        pytest.param(False, ("-p", "pytest_ipc"), "pytest_ipc", id="p+pytest_plugins"),
        pytest.param(False, ("-p", "pytest_ipc.plugin"), "", id="p-module"),
        # Both of these crashed with "Plugin already registered under a different name".
        pytest.param(True, ("-p", "pytest_ipc.plugin"), "", id="entry-point+p-module"),
        pytest.param(True, (), "pytest_ipc.plugin", id="entry-point+pytest_plugins-module"),
        pytest.param(False, ("-p", "pytest_ipc"), "pytest_ipc.plugin", id="p+pytest_plugins-module"),
        pytest.param(False, ("-p", "pytest_ipc.plugin"), "pytest_ipc", id="p-module+pytest_plugins"),
    ],
)
def test_plugin_registers_exactly_once(
    pytester: pytest.Pytester,
    monkeypatch: pytest.MonkeyPatch,
    autoload: bool,
    args: tuple[str, ...],
    conftest_plugins: str,
) -> None:
    """Whichever way (and however many ways) the plugin is named, it is registered once and works."""
    if autoload:
        monkeypatch.delenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", raising=False)
    else:
        monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")
    monkeypatch.setenv("IPC_TEST_PLUGINS", conftest_plugins)
    pytester.makeconftest(COUNTING_CONFTEST)
    pytester.makepyfile(USES_FIXTURE)
    result = pytester.runpytest_subprocess(*args, timeout=60)
    result.stdout.fnmatch_lines(["pytest-ipc registrations: 1 *"])
    result.assert_outcomes(passed=1)
    # The plugin's own hooks ran once: one header line, not two.
    assert sum(line.startswith("pytest-ipc: seed ") for line in result.outlines) == 1
    result.stdout.no_fnmatch_line("*already registered*")


HEAVY_MODULES = [
    "multiprocessing.connection",
    "multiprocessing.queues",
    "multiprocessing.synchronize",
    "multiprocessing.sharedctypes",
    "multiprocessing.managers",
    "multiprocessing.pool",
    "ctypes",
    "psutil",
    "hypothesis",
    "xdist",
    "pytest_ipc.workers",
    "pytest_ipc._worker.bootstrap",
    "pytest_ipc._worker.amplify",
    "pytest_ipc.race.runner",
    "pytest_ipc._worker.queues",
    "pytest_ipc.errors",
]


def test_importing_the_plugin_imports_nothing_heavy() -> None:
    """In a fresh interpreter, `import pytest_ipc.plugin` after `import pytest` adds no heavy module."""
    code = (
        "import json, sys, threading, pytest\n"
        "before = set(sys.modules)\n"
        "threads = threading.active_count()\n"
        "import pytest_ipc.plugin\n"
        "print(json.dumps({'added': sorted(set(sys.modules) - before),"
        " 'threads': threading.active_count() - threads}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    report = json.loads(out.stdout)
    assert "pytest_ipc.plugin" in report["added"]  # the measurement saw the import
    assert sorted(set(report["added"]) & set(HEAVY_MODULES)) == []
    assert report["threads"] == 0


# Records what the session left running, from inside it, at its very end.
SESSION_PROBE = """
import multiprocessing
import sys

import psutil


def pytest_terminal_summary(terminalreporter):
    children = psutil.Process().children(recursive=True)
    terminalreporter.write_line(f"probe: mp children {len(multiprocessing.active_children())}")
    terminalreporter.write_line(f"probe: os children {[c.pid for c in children]}")
    terminalreporter.write_line(f"probe: launcher loaded {'pytest_ipc.workers' in sys.modules}")
"""

NO_IPC_TESTS = """
import pytest


def test_passes():
    assert 1 + 1 == 2


def test_fails():
    assert 1 + 1 == 3


@pytest.mark.skip(reason="not today")
def test_skipped():
    pass


@pytest.mark.xfail(reason="known", strict=True)
def test_xfails():
    raise ValueError


@pytest.mark.parametrize("n", [1, 2])
def test_parametrized(n, tmp_path):
    assert n in (1, 2)


@pytest.fixture
def broken():
    raise RuntimeError("fixture error")


def test_errors(broken):
    pass
"""


def test_session_without_ipc_behaves_as_without_the_plugin(pytester: pytest.Pytester) -> None:
    """Tests using no ipc fixture or marker get the same outcomes, and nothing is started or loaded."""
    pytester.makeconftest(SESSION_PROBE)
    pytester.makepyfile(NO_IPC_TESTS)
    with_plugin = pytester.runpytest_subprocess("-p", "pytest_ipc", "-rA", timeout=60)
    without = pytester.runpytest_subprocess("-p", "no:pytest_ipc", "-rA", timeout=60)
    expected = {"passed": 3, "failed": 1, "skipped": 1, "xfailed": 1, "errors": 1}
    with_plugin.assert_outcomes(**expected)
    without.assert_outcomes(**expected)
    assert with_plugin.ret == without.ret == pytest.ExitCode.TESTS_FAILED

    def summary(result: pytest.RunResult) -> list[str]:
        start = next(i for i, line in enumerate(result.outlines) if "short test summary info" in line)
        return result.outlines[start + 1 : -1]

    assert summary(with_plugin) == summary(without)
    with_plugin.stdout.fnmatch_lines(["probe: mp children 0", "probe: os children []", "probe: launcher loaded False"])


# What only a test that uses the plugin needs: none of it is imported by a session without one.
RUN_TIME_MODULES = (
    "multiprocessing",
    "pytest_ipc.workers",
    "pytest_ipc.race.runner",
    "pytest_ipc.race.verdict",
    "pytest_ipc._worker.bootstrap",
    "pytest_ipc._worker.amplify",
    "pytest_ipc._worker.queues",
    "pytest_ipc._worker.shmlog",
)

MODULES_PROBE = """
import sys

RUN_TIME_MODULES = {modules!r}


def pytest_unconfigure(config):
    loaded = sorted(m for m in RUN_TIME_MODULES if m in sys.modules)
    print("probe: run-time modules", loaded)
"""

USES_IPC = """
def test_plain():
    pass


def test_uses_ipc(ipc_start_method):
    pass
"""


def test_a_session_without_ipc_tests_prints_no_header_and_imports_no_run_time_module(
    pytester: pytest.Pytester,
) -> None:
    """No ipc test collected: no pytest-ipc header line, and none of its run-time modules imported."""
    pytester.makeconftest(MODULES_PROBE.format(modules=RUN_TIME_MODULES))
    pytester.makepyfile(NO_IPC_TESTS)
    # Only this plugin, so that no other one imports multiprocessing.
    pytester._monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")
    result = pytester.runpytest_subprocess("-p", "pytest_ipc", "-s", timeout=60)
    result.assert_outcomes(passed=3, failed=1, skipped=1, xfailed=1, errors=1)
    result.stdout.no_fnmatch_line("pytest-ipc:*")
    result.stdout.fnmatch_lines(["probe: run-time modules []"])


@pytest.mark.parametrize(
    ("args", "where"),
    [
        pytest.param((), "after collection", id="a-test-uses-it"),
        pytest.param(("-v",), "at the start", id="verbose"),
        pytest.param(("--ipc-timeout=20",), "at the start", id="an-ipc-option"),
    ],
)
def test_the_header_line_comes_when_the_session_uses_the_plugin(
    pytester: pytest.Pytester, args: tuple[str, ...], where: str
) -> None:
    """The header line (with the seed) once: at the start under -v or an --ipc-* option, else after collection."""
    pytester.makepyfile(USES_IPC)
    result = pytester.runpytest_subprocess("-p", "pytest_ipc", *args, timeout=60)
    result.assert_outcomes(passed=2)
    headers = [i for i, line in enumerate(result.outlines) if line.startswith("pytest-ipc: seed ")]
    assert len(headers) == 1, result.outlines
    collected = next(i for i, line in enumerate(result.outlines) if "collected " in line)
    assert (headers[0] > collected) is (where == "after collection"), result.outlines


def test_no_header_line_when_a_session_without_ipc_tests_is_verbose_only_then(pytester: pytest.Pytester) -> None:
    """A session whose tests use none of it prints the header line under -v only."""
    pytester.makepyfile("def test_plain():\n    pass\n")
    quiet = pytester.runpytest_subprocess("-p", "pytest_ipc", timeout=60)
    quiet.stdout.no_fnmatch_line("pytest-ipc:*")
    verbose = pytester.runpytest_subprocess("-p", "pytest_ipc", "-v", timeout=60)
    verbose.stdout.fnmatch_lines(["pytest-ipc: seed *"])

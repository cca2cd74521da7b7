"""pytest-ipc's pytest plugin: options, markers and the hooks that tie them together.

Loaded by the ``pytest11`` entry point or by ``pytest -p pytest_ipc``.
Everything heavy is imported lazily by the fixtures and the race runner.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
import threading
import warnings
from typing import Any, Callable, Generator

import pytest

from pytest_ipc import fixtures as fixtures_mod
from pytest_ipc import settings as settings_mod
from pytest_ipc import state
from pytest_ipc.leaks import _ipc_leak_check  # noqa: F401  (the autouse leak check fixture)
from pytest_ipc.fixtures import (  # noqa: F401  (fixtures are found on the plugin module)
    fanin_queue,
    ipc_context,
    ipc_manager,
    ipc_outcome,
    ipc_start_method,
    ipc_workers,
    pipe_pair,
    shared_array,
    shared_value,
)

MARKERS = (
    "ipc_start_methods(*methods): run the test under each of the named start methods "
    "(fork, spawn, forkserver, or all); ids [fork], [spawn], [forkserver].",
    "ipc_timeout(seconds): the timeout of every blocking call of the test's IPC fixtures.",
    "ipc_race(runs=None, budget=None, expect=None, jitter=None): run the test many times with fresh "
    "fixtures and fail when the runs disagree (pytest_ipc.RaceDetected).",
)


# The names this module can be registered under: the entry point's (autoload,
# -p pytest_ipc) and its module path (-p pytest_ipc.plugin, pytest_plugins).
_PLUGIN_NAMES = ("pytest_ipc", __name__)


def pytest_plugin_registered(plugin: Any, manager: pytest.PytestPluginManager) -> None:
    # pluggy refuses one module under two names, and loading it by the other
    # name later (entry point autoload after -p pytest_ipc.plugin, or the
    # reverse through pytest_plugins) would crash the session with "Plugin
    # already registered under a different name".  Blocking the other name
    # makes that second load a no-op, so the plugin registers exactly once.
    if plugin is not sys.modules[__name__]:
        return
    registered_as = manager.get_name(plugin)
    for name in _PLUGIN_NAMES:
        if name != registered_as and manager.get_plugin(name) is None:
            manager.set_blocked(name)


# The ini keys that take numbers.  pytest 9's [tool.pytest] table keeps TOML's
# types and checks them against the declared type: from pytest 9.2 a union
# lets `ipc_runs = 200` be a number there (an ini file still gives the text,
# as str comes first), and the settings module checks either.  Before 9.2 only
# one type can be declared, and it stays text: write `ipc_runs = "200"` there.
NUMBER_OR_TEXT: Any = (str | int | float) if pytest.version_tuple >= (9, 2) else None


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("ipc", "pytest-ipc: multiprocessing fixtures and race detection")
    group.addoption("--ipc-start-method", dest="ipc_start_method", default=None, metavar="METHOD",
                    help="start method of the IPC fixtures: fork, spawn, forkserver or all "
                         "(all runs each test under every available method). Default: the platform's.")
    group.addoption("--ipc-timeout", dest="ipc_timeout", default=None, metavar="SECONDS",
                    help=f"timeout of every blocking call of the IPC fixtures (default {settings_mod.DEFAULT_TIMEOUT:g}).")
    group.addoption("--ipc-runs", dest="ipc_runs", default=None, metavar="N",
                    help=f"runs of an ipc_race test whose marker sets none (default {settings_mod.DEFAULT_RUNS}).")
    group.addoption("--ipc-budget", dest="ipc_budget", default=None, metavar="SECONDS",
                    help="no new run of an ipc_race test starts after this many seconds, unless its marker "
                         f"sets runs= (default {settings_mod.DEFAULT_BUDGET:g}; 'none' for no limit).")
    group.addoption("--ipc-seed", dest="ipc_seed", default=None, metavar="N",
                    help="session seed from which every run's seed is derived (default: random, printed in the header).")
    group.addoption("--ipc-jitter", dest="ipc_jitter", default=None, metavar="LEVEL",
                    help="race amplification in ipc_race runs: off, low, high or a probability (default low).")
    group.addoption("--ipc-report", dest="ipc_report", default=None, metavar="PATH",
                    help="write the race report of the session as JSON to PATH.")
    group.addoption("--ipc-shards", dest="ipc_shards", default=None, metavar="K",
                    help="split the runs of every ipc_race test into K test items [shard1ofK] ... that "
                         "pytest-xdist spreads over its workers; the verdicts are merged per test (default 1).")
    group.addoption("--ipc-leak-check", dest="ipc_leak_check", default=None, metavar="MODE",
                    help="what a process, SharedMemory segment, Pipe or Manager that a pytest-ipc test "
                         "leaves behind does: fail the test, warn, or off (default fail).")
    parser.addini("ipc_start_method", "default start method of the IPC fixtures", default="")
    parser.addini("ipc_timeout", "default timeout in seconds of the IPC fixtures", NUMBER_OR_TEXT, default="")
    parser.addini("ipc_runs", "default number of runs of an ipc_race test", NUMBER_OR_TEXT, default="")
    parser.addini("ipc_budget", "default time budget in seconds of an ipc_race test", NUMBER_OR_TEXT, default="")
    parser.addini("ipc_seed", "session seed of pytest-ipc", NUMBER_OR_TEXT, default="")
    parser.addini("ipc_jitter", "race amplification level: off, low, high or a probability", NUMBER_OR_TEXT,
                  default="")
    parser.addini("ipc_leak_check", "leak check after pytest-ipc tests: off, warn or fail", default="")
    parser.addini("ipc_shards", "number of test items each ipc_race test's runs are split into", NUMBER_OR_TEXT,
                  default="")


def pytest_configure(config: pytest.Config) -> None:
    for line in MARKERS:
        config.addinivalue_line("markers", line)
    workerinput = getattr(config, "workerinput", None)
    cfg = settings_mod.from_config(config)
    if workerinput is not None and "ipc_seed" in workerinput:
        # Every xdist worker uses the controller's seed, so runs replay anywhere.
        cfg = settings_mod.Settings(**{**cfg.__dict__, "seed": workerinput["ipc_seed"]})
    config.stash[state.settings_key] = cfg
    if workerinput is None:
        from pytest_ipc.report import RaceReporter

        config.pluginmanager.register(RaceReporter(config, cfg.seed, cfg.report_path), "pytest_ipc.report")
    # "xdist.plugin" when loaded with -p xdist.plugin and plugin autoload off.
    if config.pluginmanager.hasplugin("xdist") or config.pluginmanager.hasplugin("xdist.plugin"):
        config.pluginmanager.register(XdistHooks(), "pytest_ipc.xdist")
    if hasattr(signal, "SIGTERM") and threading.current_thread() is threading.main_thread():
        config.pluginmanager.register(SigtermHooks(), "pytest_ipc.sigterm")
    if "forkserver" in multiprocessing.get_all_start_methods():
        fixtures_mod.preload_in_fork_server()  # before any fork server starts


class XdistHooks:
    """Hooks that only exist when pytest-xdist is installed."""

    @pytest.hookimpl
    def pytest_configure_node(self, node: Any) -> None:
        node.workerinput["ipc_seed"] = state.settings(node.config).seed


def pytest_report_header(config: pytest.Config) -> str:
    cfg = state.settings(config)
    method = cfg.start_method or f"{multiprocessing.get_all_start_methods()[0]} (platform default)"
    shards = f", shards {cfg.shards}" if cfg.shards > 1 else ""
    return (
        f"pytest-ipc: seed {cfg.seed}, start method {method}, timeout {cfg.timeout:g}s, "
        f"runs {cfg.runs}, jitter {cfg.jitter:g}{shards}"
    )


@pytest.hookimpl(wrapper=True)
def pytest_generate_tests(metafunc: pytest.Metafunc) -> Generator[None, None, None]:
    _fail_on_setting_error(_parametrize_start_methods, metafunc)
    # Runs after pytest applied the test's @pytest.mark.parametrize marks.
    result = yield
    _fail_on_setting_error(_validate_indirect_params, metafunc)
    # Last, after every other plugin's parametrization, so the shard is the last part of the id.
    _parametrize_shards(metafunc)
    return result


def _parametrize_shards(metafunc: pytest.Metafunc) -> None:
    """With --ipc-shards=K, split an ipc_race test into K items ``[shard1ofK]`` ... ``[shardKofK]``."""
    cfg = state.settings(metafunc.config)
    mark = metafunc.definition.get_closest_marker("ipc_race")
    if cfg.shards < 2 or mark is None:
        return
    from pytest_ipc.race import SHARD_ARG, shard_params

    # Validated by _parametrize_start_methods; a bad marker never gets here.
    spec = settings_mod.race_spec(mark, metafunc.definition.nodeid)
    params = shard_params(cfg.shards, spec.runs or cfg.runs)
    if params:
        # A hidden argument, as pytest-repeat does: the test function does not take it.
        metafunc.fixturenames.append(SHARD_ARG)
        metafunc.parametrize(SHARD_ARG, params)


def _fail_on_setting_error(check: Callable[[pytest.Metafunc], None], metafunc: pytest.Metafunc) -> None:
    """Turn a SettingError of ``check`` into a collection error naming the test."""
    __tracebackhide__ = True
    try:
        check(metafunc)
    except settings_mod.SettingError as exc:
        problem = str(exc)
    else:
        return
    # Failing outside the except block keeps "During handling of the above
    # exception" and the SettingError out of the collection error.
    pytest.fail(f"pytest-ipc: {problem}", pytrace=False)


def _parametrize_start_methods(metafunc: pytest.Metafunc) -> None:
    _validate_marks(metafunc.definition)
    methods = _methods_to_parametrize(metafunc)
    if methods:
        available = multiprocessing.get_all_start_methods()
        params = [
            pytest.param(m, id=m, marks=() if m in available else pytest.mark.skip(
                reason=f"start method {m!r} is not available on this platform"))
            for m in methods
        ]
        metafunc.parametrize("ipc_start_method", params)


# Fixtures configured by indirect parametrization, checked at collection.
_PARAMETRIZED_FIXTURES = ("shared_value", "shared_array", "pipe_pair")


def _validate_indirect_params(metafunc: pytest.Metafunc) -> None:
    # Metafunc keeps its parametrizations and fixture definitions in private
    # attributes; without them the fixtures still check their parameter at set-up.
    for callspec in getattr(metafunc, "_calls", ()):
        params = getattr(callspec, "params", {})
        for name in _PARAMETRIZED_FIXTURES:
            if name in params and _is_our_fixture(metafunc, name):
                problem = fixtures_mod.param_problem(name, params[name])
                if problem is not None:
                    raise settings_mod.SettingError(
                        f"{metafunc.definition.nodeid}: indirect parameter {params[name]!r} "
                        f"of {name}: {problem}"
                    )


def _is_our_fixture(metafunc: pytest.Metafunc, name: str) -> bool:
    """False when the name is parametrized directly or the user overrides the fixture."""
    defs = getattr(metafunc, "_arg2fixturedefs", {}).get(name) or ()
    return bool(defs) and getattr(getattr(defs[-1], "func", None), "__module__", None) == fixtures_mod.__name__


def _validate_marks(node: pytest.Item) -> None:
    race = node.get_closest_marker("ipc_race")
    if race is not None:
        settings_mod.race_spec(race, node.nodeid)
    timeout = node.get_closest_marker("ipc_timeout")
    if timeout is not None:
        settings_mod.timeout_mark(timeout, node.nodeid)


def _methods_to_parametrize(metafunc: pytest.Metafunc) -> tuple[str, ...]:
    node = metafunc.definition
    mark = node.get_closest_marker("ipc_start_methods")
    uses_ipc = "ipc_start_method" in metafunc.fixturenames
    if mark is not None:
        methods = settings_mod.start_methods_mark(mark, node.nodeid)
        if not uses_ipc:
            raise settings_mod.SettingError(
                f"{node.nodeid}: @pytest.mark.ipc_start_methods needs the test to use a pytest-ipc "
                "fixture (ipc_context, shared_value, ipc_workers, ...)"
            )
        return methods
    if uses_ipc and state.settings(metafunc.config).start_method == "all":
        return settings_mod.START_METHODS
    return ()


def _is_race(item: pytest.Item) -> bool:
    return item.get_closest_marker("ipc_race") is not None


# The fixtures by which a test uses pytest-ipc (every other one of ours depends on ipc_start_method).
_OUR_FIXTURES = frozenset({"ipc_start_method", "ipc_outcome"})


def uses_plugin(item: pytest.Item) -> bool:
    """Whether ``item`` uses pytest-ipc: a pytest-ipc fixture or the ipc_race marker."""
    names = getattr(item, "fixturenames", ())
    return _is_race(item) or any(name in _OUR_FIXTURES for name in names)


class SigtermHooks:
    """While a pytest-ipc test runs, SIGTERM stops pytest as Ctrl-C does.

    By default SIGTERM kills pytest on the spot: no fixture teardown, so
    workers, Managers and shared memory are left behind.  Only the default
    disposition is replaced, and only around tests that use the plugin, so a
    handler of the user's or of another plugin is left alone.
    """

    def __init__(self) -> None:
        import pytest_ipc.errors  # noqa: F401  (not inside the signal handler)

        self._fork_before: Any = None
        if _real_fork is not None and hasattr(signal, "pthread_sigmask") and os.fork is _real_fork:
            self._fork_before = os.fork
            os.fork = _fork_keeping_sigterm

    def pytest_unconfigure(self) -> None:
        if self._fork_before is not None and os.fork is _fork_keeping_sigterm:
            os.fork = self._fork_before

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_protocol(self, item: pytest.Item, nextitem: pytest.Item | None) -> Generator[None, Any, Any]:
        if not uses_plugin(item) or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
            return (yield)
        signal.signal(signal.SIGTERM, _raise_terminated)
        try:
            return (yield)
        finally:
            if signal.getsignal(signal.SIGTERM) is _raise_terminated:
                signal.signal(signal.SIGTERM, signal.SIG_DFL)


_PYTEST_PID = os.getpid()
# True while this process forks with SIGTERM blocked (see _fork_keeping_sigterm),
# and whether a SIGTERM came meanwhile.
_forking = False
_deferred = False
_real_fork = getattr(os, "fork", None)


def _fork_keeping_sigterm() -> int:
    """``os.fork``, while pytest-ipc's SIGTERM handler is installed.

    SIGTERM and SIGINT are blocked across the fork.  The child restores
    SIGTERM's default disposition before unblocking: a child that inherits a
    Python-level handler can lose a SIGTERM sent right after the fork, before
    its interpreter is ready to run handlers, and ``Process.terminate()``
    just after ``start()`` would not end it (tests/test_interrupt.py shows
    it).  The parent unblocks them once the fork has returned, so that a
    Ctrl-C or SIGTERM that came meanwhile is raised here, and not inside
    ``os.fork()``'s callbacks (logging's among them), which print and drop
    exceptions: the interrupt would be lost.
    """
    global _forking, _deferred
    assert _real_fork is not None
    if signal.getsignal(signal.SIGTERM) is not _raise_terminated or threading.current_thread() is not threading.main_thread():
        return _real_fork()
    interrupts = {signal.SIGTERM, signal.SIGINT}
    _forking = True
    try:
        signal.pthread_sigmask(signal.SIG_BLOCK, interrupts)
        pid = _fork_warning_at_caller()
        if pid == 0:
            _forking = _deferred = False
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
        _forking = False  # a pending SIGINT raises KeyboardInterrupt right here, as it should
        signal.pthread_sigmask(signal.SIG_UNBLOCK, interrupts)
    finally:
        _forking = False
    if _deferred:
        _deferred = False
        _raise_terminated(signal.SIGTERM, None)
    return pid


def _fork_warning_at_caller() -> int:
    """Fork; a warning of the fork's (Python 3.12+: forking a multi-threaded
    process) points at the code that called ``os.fork``, as without the wrapper."""
    assert _real_fork is not None
    if sys.version_info < (3, 12):
        return _real_fork()  # no warning to move; catch_warnings would cost every fork
    caller = sys._getframe(2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pid = _real_fork()
    if pid != 0:
        for w in caught:
            warnings.warn_explicit(
                w.message, w.category, caller.f_code.co_filename, caller.f_lineno,
                module=caller.f_globals.get("__name__"),
                registry=caller.f_globals.setdefault("__warningregistry__", {}),
            )
    return pid


def _raise_terminated(signum: int, frame: Any) -> None:
    global _deferred
    if _forking:
        # Mid-fork, maybe inside os.fork()'s callbacks, where an exception is
        # dropped: _fork_keeping_sigterm raises it once the fork has returned.
        _deferred = True
        return
    # A second SIGTERM, while the first one's clean-up runs, kills at once.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if os.getpid() != _PYTEST_PID:
        # A fork child inherited the handler: end as it would have without us.
        os.kill(os.getpid(), signal.SIGTERM)
        return
    from pytest_ipc.errors import Terminated  # imported already, by SigtermHooks

    raise Terminated("pytest received SIGTERM: stopping as on Ctrl-C, with teardown")


@pytest.hookimpl(tryfirst=True)
def pytest_fixture_setup(fixturedef: Any, request: pytest.FixtureRequest) -> None:
    """Note each fixture of a wider scope than function, for what race runs leave on them."""
    if fixturedef.scope != "function":
        request.config.stash.setdefault(state.scoped_fixturedefs_key, set()).add(fixturedef)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> bool | None:
    if not _is_race(item) or item.config.getoption("setuponly") or item.config.getoption("setupplan"):
        return None
    from pytest_ipc.race import run_race

    run_race(item, nextitem)
    return True


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, None, None]:
    run = item.stash.get(state.run_key, None)
    if run is None or not _is_race(item):
        return (yield)
    amplify = None
    if run.jitter > 0:
        from pytest_ipc import _amplify as amplify

        # Processes the test starts itself, not through ipc_workers, are amplified too.
        amplify.hand_on(run.seed, run.jitter)
    try:
        result = yield
    finally:
        if amplify is not None:
            amplify.deactivate()
    run.auto_total = _auto_total(item)
    return result


def _auto_total(item: pytest.Item) -> Any:
    """The automatic outcome of a run: the shared value's or array's contents."""
    funcargs = getattr(item, "funcargs", None) or {}
    if "shared_value" in funcargs:
        return funcargs["shared_value"].value
    if "shared_array" in funcargs:
        return tuple(funcargs["shared_array"][:])
    return None


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, Any]:
    report = yield
    if call.when == "call":
        item.stash[state.call_failed_key] = call.excinfo is not None
    race = item.stash.get(state.race_key, None)
    if race is not None and not race.finalizing:
        race.phase_excinfo[call.when] = call.excinfo
    return report

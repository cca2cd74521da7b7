"""pytest-ipc's pytest plugin: options, ini keys and markers; ``pytest_configure`` registers the rest.

Loaded by the ``pytest11`` entry point or by ``pytest -p pytest_ipc``.  The
fixtures (:mod:`.fixtures`) and the leak check (:mod:`.leaks`) are found on
this module; collection lives in :mod:`.collection`, the race marker's hooks
in :mod:`.race.hooks`, SIGTERM handling in :mod:`.sigterm`, the report in
:mod:`.race.report`.  Nothing here imports ``multiprocessing``: a session
whose tests use none of this costs next to nothing.
"""

from __future__ import annotations

import sys
from collections.abc import Generator
from typing import Any

import pytest

from pytest_ipc import collection
from pytest_ipc import config as config_mod
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
from pytest_ipc.leaks import _ipc_leak_check  # noqa: F401  (the autouse leak check fixture)

# What pytest_configure registers, imported with this module rather than in
# the hook: a suite of in-process pytester sessions (which drop the modules
# each session imported) would otherwise import them again in every session.
from pytest_ipc.race.hooks import RaceHooks
from pytest_ipc.race.report import RaceReporter
from pytest_ipc.sigterm import SigtermHooks

MARKERS = (
    "ipc_start_methods(*methods): run the test under each of the named start methods "
    "(fork, spawn, forkserver, or all); ids [fork], [spawn], [forkserver].",
    "ipc_timeout(seconds): the timeout of every blocking call of the test's IPC fixtures.",
    "ipc_race(runs=None, budget=None, expect=None, jitter=None, all_runs=None): run the test up to `runs` "
    "times with fresh fixtures and fail when the runs disagree (pytest_ipc.RaceDetected); all_runs=True "
    "makes every run even once a race is proven.",
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
# as str comes first), and the config module checks either.  Before 9.2 only
# one type can be declared, and it stays text: write `ipc_runs = "200"` there.
NUMBER_OR_TEXT: Any = (str | int | float) if pytest.version_tuple >= (9, 2) else None
BOOL_OR_TEXT: Any = (str | bool) if pytest.version_tuple >= (9, 2) else None


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("ipc", "pytest-ipc: multiprocessing fixtures and race detection")
    group.addoption(
        "--ipc-start-method",
        dest="ipc_start_method",
        default=None,
        metavar="METHOD",
        help="start method of the IPC fixtures: fork, spawn, forkserver or all "
        "(all runs each test under every available method). Default: the platform's.",
    )
    group.addoption(
        "--ipc-timeout",
        dest="ipc_timeout",
        default=None,
        metavar="SECONDS",
        help=f"timeout of every blocking call of the IPC fixtures (default {config_mod.DEFAULT_TIMEOUT:g}).",
    )
    group.addoption(
        "--ipc-runs",
        dest="ipc_runs",
        default=None,
        metavar="N",
        help=f"runs of an ipc_race test whose marker sets none (default {config_mod.DEFAULT_RUNS}).",
    )
    group.addoption(
        "--ipc-budget",
        dest="ipc_budget",
        default=None,
        metavar="SECONDS",
        help="no new run of an ipc_race test starts after this many seconds, unless its marker "
        f"sets runs= (default {config_mod.DEFAULT_BUDGET:g}; 'none' for no limit).",
    )
    group.addoption(
        "--ipc-seed",
        dest="ipc_seed",
        default=None,
        metavar="N",
        help="session seed from which every run's seed is derived (default: random, printed in the header).",
    )
    group.addoption(
        "--ipc-jitter",
        dest="ipc_jitter",
        default=None,
        metavar="LEVEL",
        help="race amplification in ipc_race runs: off, low, high or a probability (default low).",
    )
    group.addoption(
        "--ipc-report",
        dest="ipc_report",
        default=None,
        metavar="PATH",
        help="write the race report of the session as JSON to PATH.",
    )
    group.addoption(
        "--ipc-shards",
        dest="ipc_shards",
        default=None,
        metavar="K",
        help="split the runs of every ipc_race test into K test items [shard1ofK] ... that "
        "pytest-xdist spreads over its workers; the verdicts are merged per test (default 1).",
    )
    group.addoption(
        "--ipc-leak-check",
        dest="ipc_leak_check",
        default=None,
        metavar="MODE",
        help="what a process, SharedMemory segment, Pipe or Manager that a pytest-ipc test "
        "leaves behind does: fail the test, warn, or off (default fail).",
    )
    group.addoption(
        "--ipc-all-runs",
        dest="ipc_all_runs",
        action="store_const",
        const=True,
        default=None,
        help="make every run of an ipc_race test, also once a race is proven (by default a racing "
        "test stops a few runs after the proof, and runs is the most it makes).",
    )
    parser.addini("ipc_start_method", "default start method of the IPC fixtures", default="")
    parser.addini("ipc_timeout", "default timeout in seconds of the IPC fixtures", NUMBER_OR_TEXT, default="")
    parser.addini("ipc_runs", "default number of runs of an ipc_race test", NUMBER_OR_TEXT, default="")
    parser.addini("ipc_budget", "default time budget in seconds of an ipc_race test", NUMBER_OR_TEXT, default="")
    parser.addini("ipc_seed", "session seed of pytest-ipc", NUMBER_OR_TEXT, default="")
    parser.addini("ipc_jitter", "race amplification level: off, low, high or a probability", NUMBER_OR_TEXT, default="")
    parser.addini("ipc_leak_check", "leak check after pytest-ipc tests: off, warn or fail", default="")
    parser.addini(
        "ipc_shards", "number of test items each ipc_race test's runs are split into", NUMBER_OR_TEXT, default=""
    )
    group.addoption(
        "--ipc-job-shard",
        dest="ipc_job_shard",
        metavar="I/K",
        default=None,
        help="this CI job's share of every ipc_race test's runs: I of K jobs (runs I-1, I-1+K, ...); "
        "python -m pytest_ipc.merge merges the jobs' --ipc-report files into one verdict.",
    )
    parser.addini(
        "ipc_job_shard", "this job's share I/K of every ipc_race test's runs (usually set per job)", default=""
    )
    parser.addini(
        "ipc_all_runs",
        "every run of an ipc_race test, also once a race is proven: true or false",
        BOOL_OR_TEXT,
        default="",
    )


def pytest_configure(config: pytest.Config) -> None:
    for line in MARKERS:
        config.addinivalue_line("markers", line)
    workerinput = getattr(config, "workerinput", None)
    cfg = config_mod.from_config(config)
    if workerinput is not None and "ipc_seed" in workerinput:
        # Every xdist worker uses the controller's seed, so runs replay anywhere.
        cfg = cfg._replace(seed=workerinput["ipc_seed"])
    config.stash[config_mod.settings_key] = cfg

    if workerinput is None:
        config.pluginmanager.register(RaceReporter(config, cfg.seed, cfg.report_path), "pytest_ipc.report")
        if cfg.shards > 1:
            from pytest_ipc.race.progress import CampaignTotal

            config.pluginmanager.register(CampaignTotal(config), "pytest_ipc.campaign_total")
    # "xdist.plugin" when loaded with -p xdist.plugin and plugin autoload off.
    if config.pluginmanager.hasplugin("xdist") or config.pluginmanager.hasplugin("xdist.plugin"):
        config.pluginmanager.register(XdistHooks(), "pytest_ipc.xdist")


class XdistHooks:
    """Hooks that only exist when pytest-xdist is installed."""

    @pytest.hookimpl
    def pytest_configure_node(self, node: Any) -> None:
        node.workerinput["ipc_seed"] = config_mod.settings(node.config).seed


# Whether the session's header line was printed, and whether a collected test uses the plugin.
_header_printed = pytest.StashKey[bool]()
_session_uses_plugin = pytest.StashKey[bool]()


def pytest_report_header(config: pytest.Config) -> str | None:
    """The header line, at the start, when an --ipc-* option was given or under -v.

    Otherwise it comes after collection, and only when a collected test uses
    the plugin (see pytest_report_collectionfinish): a session that does not
    use it prints nothing of it.
    """
    if config.get_verbosity() <= 0 and not config_mod.options_given(config):
        return None
    config.stash[_header_printed] = True
    return _header(config)


@pytest.hookimpl(trylast=True)  # after other plugins have deselected what will not run
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    used = any(collection.uses_plugin(item) for item in items)
    config.stash[_session_uses_plugin] = used
    if used and not config.pluginmanager.has_plugin("pytest_ipc.race"):
        # Only a session that runs an ipc test needs the hooks that run them.
        config.pluginmanager.register(RaceHooks(), "pytest_ipc.race")
        config.pluginmanager.register(SigtermHooks(), "pytest_ipc.sigterm")
        from pytest_ipc.fixtures import preload_in_fork_server

        preload_in_fork_server()  # before any fixture can start a fork server


def pytest_report_collectionfinish(config: pytest.Config) -> str | None:
    if config.stash.get(_header_printed, False) or not config.stash.get(_session_uses_plugin, False):
        return None
    return _header(config)


def _header(config: pytest.Config) -> str:
    from pytest_ipc.fixtures import platform_default_start_method

    cfg = config_mod.settings(config)
    method = cfg.start_method or f"{platform_default_start_method()} (platform default)"
    shards = f", shards {cfg.shards}" if cfg.shards > 1 else ""
    if cfg.job_shard is not None:
        shards += f", job shard {cfg.job_shard[0]}/{cfg.job_shard[1]}"
    return (
        f"pytest-ipc: seed {cfg.seed}, start method {method}, timeout {cfg.timeout:g}s, "
        f"runs {cfg.runs}, jitter {cfg.jitter:g}{shards}"
    )


@pytest.hookimpl(wrapper=True)
def pytest_generate_tests(metafunc: pytest.Metafunc) -> Generator[None, None, None]:
    collection.before_parametrize(metafunc)
    # Runs after pytest applied the test's @pytest.mark.parametrize marks.
    result = yield
    collection.after_parametrize(metafunc)
    return result

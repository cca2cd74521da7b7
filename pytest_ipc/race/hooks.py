"""The hooks through which ``ipc_race`` tests run: registered by the plugin as :class:`RaceHooks`.

The runner, the verdict and amplification are imported when the first
marked test runs, not before: an installed plugin that no test uses costs a
session next to nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import Any

import pytest

from pytest_ipc import stash


def is_race(item: pytest.Item) -> bool:
    return item.get_closest_marker("ipc_race") is not None


class RaceHooks:
    @pytest.hookimpl(tryfirst=True)
    def pytest_fixture_setup(self, fixturedef: Any, request: pytest.FixtureRequest) -> None:
        """Note each fixture of a wider scope than function, for what race runs leave on them."""
        if fixturedef.scope != "function":
            request.config.stash.setdefault(stash.scoped_fixturedefs_key, set()).add(fixturedef)

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_protocol(self, item: pytest.Item, nextitem: pytest.Item | None) -> bool | None:
        if not is_race(item) or item.config.getoption("setuponly") or item.config.getoption("setupplan"):
            return None
        from pytest_ipc.race.runner import run_race

        run_race(item, nextitem)
        return True

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_call(self, item: pytest.Item) -> Generator[None, None, None]:
        __tracebackhide__ = True  # a run's failure is the test's: show its frames, not this hook's
        run = item.stash.get(stash.run_key, None)
        if run is None or not is_race(item):
            return (yield)
        deactivate: Callable[[], None] | None = None
        if run.jitter > 0 or run.trace_dir:
            from pytest_ipc._worker import amplify

            # Processes the test starts itself, not through ipc_workers, are amplified (and traced) too.
            amplify.hand_on(run.seed, run.jitter, run.trace_dir)
            deactivate = amplify.deactivate
        try:
            result = yield
        finally:
            if deactivate is not None:
                deactivate()
            if run.trace_dir:
                from pytest_ipc.race import conflicts

                run.trace_names = conflicts.names(item)  # while the fixtures' objects live
        run.auto_total = _auto_total(item)
        return result

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_makereport(self, item: pytest.Item, call: pytest.CallInfo[None]) -> pytest.TestReport | None:
        """A later run's failed call: its report without the traceback pytest would format.

        Only the first failed run's traceback is shown (the verdict's detail),
        and formatting one costs about 20 ms; the run's exception type, which
        the verdict compares, is kept.  Wrappers (xfail, ours) still see it.
        """
        race = item.stash.get(stash.race_key, None)
        excinfo = call.excinfo
        if (
            race is None
            or race.finalizing
            or not race.call_failed_before
            or call.when != "call"
            or excinfo is None
            or isinstance(excinfo.value, pytest.skip.Exception)
        ):
            return None
        run = item.stash.get(stash.run_key, None)
        return pytest.TestReport(
            item.nodeid,
            item.location,
            {name: 1 for name in item.keywords},
            "failed",
            f"{excinfo.typename} in run {run.index if run else '?'} (only the first failed run's traceback is kept)",
            "call",
            [],
            call.duration,
            call.start,
            call.stop,
            list(item.user_properties),
        )

    @pytest.hookimpl(wrapper=True, tryfirst=True, specname="pytest_runtest_makereport")
    def pytest_runtest_makereport_phase(
        self, item: pytest.Item, call: pytest.CallInfo[None]
    ) -> Generator[None, Any, Any]:
        report = yield
        if call.when == "call":
            item.stash[stash.call_failed_key] = call.excinfo is not None
        race = item.stash.get(stash.race_key, None)
        if race is not None and not race.finalizing:
            race.phase_excinfo[call.when] = call.excinfo
        return report


def _auto_total(item: pytest.Item) -> Any:
    """The automatic outcome of a run: the shared value's or array's contents."""
    funcargs = getattr(item, "funcargs", None) or {}
    if "shared_value" in funcargs:
        return funcargs["shared_value"].value
    if "shared_array" in funcargs:
        return tuple(funcargs["shared_array"][:])
    return None

"""Collection: markers checked, start methods and shards parametrized, and which tests use the plugin.

A bad marker or indirect parameter is a collection error that names the test
and the value, never an error in the middle of a run.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from pytest_ipc import _compat
from pytest_ipc.config import (
    START_METHODS,
    SettingError,
    race_plan,
    settings,
    start_methods_mark,
    timeout_mark,
)

# The fixtures by which a test uses pytest-ipc (every other one of ours depends on ipc_start_method).
_OUR_FIXTURES = frozenset({"ipc_start_method", "ipc_outcome"})

# Fixtures configured by indirect parametrization, checked at collection.
_PARAMETRIZED_FIXTURES = ("shared_value", "shared_array", "pipe_pair")


def uses_plugin(item: pytest.Item) -> bool:
    """Whether ``item`` uses pytest-ipc: a pytest-ipc fixture or the ipc_race marker."""
    if item.get_closest_marker("ipc_race") is not None:
        return True
    return any(name in _OUR_FIXTURES for name in getattr(item, "fixturenames", ()))


def before_parametrize(metafunc: pytest.Metafunc) -> None:
    """Before pytest applies the test's own parametrize marks: markers checked, start methods."""
    _fail_on_setting_error(_parametrize_start_methods, metafunc)


def after_parametrize(metafunc: pytest.Metafunc) -> None:
    """After every parametrization but ours: indirect parameters checked, then shards (last in the id)."""
    _fail_on_setting_error(_validate_indirect_params, metafunc)
    _parametrize_shards(metafunc)


def _fail_on_setting_error(check: Callable[[pytest.Metafunc], None], metafunc: pytest.Metafunc) -> None:
    """Turn a SettingError of ``check`` into a collection error naming the test."""
    __tracebackhide__ = True
    try:
        check(metafunc)
    except SettingError as exc:
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
        import multiprocessing

        available = multiprocessing.get_all_start_methods()
        params = [
            pytest.param(
                m,
                id=m,
                marks=()
                if m in available
                else pytest.mark.skip(reason=f"start method {m!r} is not available on this platform"),
            )
            for m in methods
        ]
        metafunc.parametrize("ipc_start_method", params)


def _validate_marks(node: pytest.Item) -> None:
    race_plan(node)  # resolved here once, and kept on the node
    timeout = node.get_closest_marker("ipc_timeout")
    if timeout is not None:
        timeout_mark(timeout, node.nodeid)


def _methods_to_parametrize(metafunc: pytest.Metafunc) -> tuple[str, ...]:
    node = metafunc.definition
    mark = node.get_closest_marker("ipc_start_methods")
    uses_ipc = "ipc_start_method" in metafunc.fixturenames
    if mark is not None:
        methods = start_methods_mark(mark, node.nodeid)
        if not uses_ipc:
            raise SettingError(
                f"{node.nodeid}: @pytest.mark.ipc_start_methods needs the test to use a pytest-ipc "
                "fixture (ipc_context, shared_value, ipc_workers, ...)"
            )
        return methods
    if uses_ipc and settings(metafunc.config).start_method == "all":
        return START_METHODS
    return ()


def _validate_indirect_params(metafunc: pytest.Metafunc) -> None:
    # Without these checks the fixtures still check their parameter at set-up.
    from pytest_ipc import fixtures

    for callspec in _compat.metafunc_calls(metafunc):
        params = getattr(callspec, "params", {})
        for name in _PARAMETRIZED_FIXTURES:
            # Not when the name is parametrized directly or the user overrides the fixture.
            if name in params and _compat.fixture_module(metafunc, name) == fixtures.__name__:
                problem = fixtures.param_problem(name, params[name])
                if problem is not None:
                    raise SettingError(
                        f"{metafunc.definition.nodeid}: indirect parameter {params[name]!r} of {name}: {problem}"
                    )


def _parametrize_shards(metafunc: pytest.Metafunc) -> None:
    """With --ipc-shards=K, split an ipc_race test into K items ``[shard1ofK]`` ... ``[shardKofK]``."""
    shards = settings(metafunc.config).shards
    if shards < 2:
        return
    plan = race_plan(metafunc.definition)  # checked by _validate_marks: a bad marker never gets here
    if plan is None:
        return
    from pytest_ipc.race.shards import SHARD_ARG, job_runs, shard_params

    params = shard_params(shards, len(job_runs(plan.runs, settings(metafunc.config).job_shard)))
    if params:
        # A hidden argument, as pytest-repeat does: the test function does not take it.
        metafunc.fixturenames.append(SHARD_ARG)
        metafunc.parametrize(SHARD_ARG, params)

"""The private pytest names pytest-ipc needs, in one place, each with why.

pytest has no public API for running an item's protocol more than once
(pytest-rerunfailures and pytest-repeat use the same private functions), nor
for the parametrization of a test at collection.  Each use is here, so that
a pytest release that moves one breaks one module, and the suite's
``pytest-oldest`` and ``pytest-newest`` tox envs show it.
"""

from __future__ import annotations

from typing import Any

import pytest
from _pytest._io import TerminalWriter as TerminalWriter  # how pytest prints a report's longrepr
from _pytest.runner import runtestprotocol as runtestprotocol  # one run of an item, reports not logged


def teardown_exact(item: pytest.Item, nextitem: pytest.Item | None) -> None:
    """Tear down what ``nextitem`` does not need (all of it for None), as pytest does after a test."""
    item.session._setupstate.teardown_exact(nextitem)


def report_sections(item: pytest.Item) -> list[tuple[str, str, str]]:
    """The captured output pytest adds to the item's reports, for this run."""
    return item._report_sections


def set_report_sections(item: pytest.Item, sections: list[tuple[str, str, str]]) -> None:
    item._report_sections = sections


def fixture_finalizers(fixturedef: Any) -> list[Any] | None:
    """What a set-up fixture will run at its teardown (pytest issue #4871: they pile up)."""
    return getattr(fixturedef, "_finalizers", None)


def metafunc_calls(metafunc: pytest.Metafunc) -> list[Any]:
    """The parametrizations made so far of a test being collected (each with ``.params``)."""
    return list(getattr(metafunc, "_calls", ()))


def fixture_module(metafunc: pytest.Metafunc, name: str) -> str | None:
    """The module of the fixture ``name`` resolves to for this test (the closest definition)."""
    defs = getattr(metafunc, "_arg2fixturedefs", {}).get(name) or ()
    return getattr(getattr(defs[-1], "func", None), "__module__", None) if defs else None

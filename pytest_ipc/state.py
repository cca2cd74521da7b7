"""Per-session and per-item state, kept in pytest's stashes."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import pytest

from pytest_ipc.settings import Settings, safe_repr, timeout_mark

settings_key = pytest.StashKey[Settings]()
run_key = pytest.StashKey["RunState"]()
call_failed_key = pytest.StashKey[bool]()
timeout_key = pytest.StashKey[float]()
race_key = pytest.StashKey[Any]()  # a race.RaceRun while an ipc_race test runs
# Race data (race.race_data) of the ipc_race test that Ctrl-C or SIGTERM cut short.
interrupted_key = pytest.StashKey[list]()
# Every fixture of a wider scope than function set up in the session (see
# race._forget_finished_finalizers).
scoped_fixturedefs_key = pytest.StashKey[set]()


def settings(config: pytest.Config) -> Settings:
    return config.stash[settings_key]


def derive_seed(session_seed: int, nodeid: str, run: int) -> int:
    """The seed of run ``run`` of test ``nodeid``: the same in every process and Python."""
    digest = hashlib.blake2b(f"{session_seed}\0{nodeid}\0{run}".encode(), digest_size=4).digest()
    return int.from_bytes(digest, "big")


class UnhashableOutcome(TypeError):
    pass


@dataclass
class Outcome:
    """What one run of an ``ipc_race`` test recorded as its result."""

    recorded: bool = False
    value: Any = None

    def record(self, value: Any) -> None:
        """Record ``value`` (hashable: a number, string, tuple...) as this run's outcome."""
        __tracebackhide__ = True
        try:
            hash(value)
        except TypeError:
            raise UnhashableOutcome(
                f"ipc_outcome.record(): the outcome must be hashable so that runs can be compared; "
                f"got {type(value).__name__} {safe_repr(value)} (record a tuple instead of a list, "
                "a frozenset instead of a set)"
            ) from None
        except Exception as exc:  # a __hash__ that raises something else
            raise UnhashableOutcome(
                f"ipc_outcome.record(): the outcome must be hashable so that runs can be compared; "
                f"hashing {type(value).__name__} {safe_repr(value)} raised {safe_repr(exc)}"
            ) from None
        self.value = value
        self.recorded = True


@dataclass
class RunState:
    """One run of a test: its index, seed, amplification and recorded outcome."""

    index: int
    seed: int
    jitter: float
    outcome: Outcome = field(default_factory=Outcome)
    auto_total: Any = None  # shared_value / shared_array contents after the call


def current_run(item: pytest.Item) -> RunState:
    run = item.stash.get(run_key, None)
    if run is None:
        # Not an ipc_race test: one run, seeded like run 0, no amplification.
        run = RunState(0, derive_seed(settings(item.config).seed, item.nodeid, 0), 0.0)
        item.stash[run_key] = run
    return run


def item_timeout(item: pytest.Item) -> float:
    cached = item.stash.get(timeout_key, None)
    if cached is None:
        mark = item.get_closest_marker("ipc_timeout")
        cached = timeout_mark(mark, item.nodeid) if mark else settings(item.config).timeout
        item.stash[timeout_key] = cached
    return cached


def call_passed(item: pytest.Item) -> bool:
    """Whether the test's call phase ran to the end without an exception.

    False as well when it never reported: interrupted (Ctrl-C) or not run.
    """
    return item.stash.get(call_failed_key, True) is False

"""Per-run and per-item state, in pytest's stashes, beside the keys that hold it.

(The session's settings and an item's race plan are kept by
:mod:`pytest_ipc.config`, beside their own keys.)
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any

import pytest

from pytest_ipc.config import safe_repr, settings

if TYPE_CHECKING:
    from pytest_ipc.race.runner import RaceRun
    from pytest_ipc.race.schema import RaceEntry


def derive_seed(session_seed: int, nodeid: str, run: int) -> int:
    """The seed of run ``run`` of test ``nodeid``: the same in every process and Python."""
    digest = hashlib.blake2b(f"{session_seed}\0{nodeid}\0{run}".encode(), digest_size=4).digest()
    return int.from_bytes(digest, "big")


class UnhashableOutcome(TypeError):
    pass


class Outcome:
    """What one run of an ``ipc_race`` test recorded as its result (the ``ipc_outcome`` fixture)."""

    def __init__(self) -> None:
        self.recorded = False
        self.value: Any = None

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


class RunState:
    """One run of a test: its index, seed, amplification and recorded outcome."""

    def __init__(self, index: int, seed: int, jitter: float) -> None:
        self.index = index
        self.seed = seed
        self.jitter = jitter
        self.outcome = Outcome()
        self.auto_total: Any = None  # shared_value / shared_array contents after the call
        # A diagnostic run's trace directory (see race.conflicts); None: not traced.
        self.trace_dir: str | None = None
        # In a traced run: the names of the shared objects the test knows (see race.conflicts.names).
        self.trace_names: dict[str, tuple[str, str]] = {}


run_key = pytest.StashKey[RunState]()


def current_run(item: pytest.Item) -> RunState:
    """The run of ``item`` that is set up now; a test without ``ipc_race`` has one, like run 0."""
    run = item.stash.get(run_key, None)
    if run is None:
        # Not an ipc_race test: one run, seeded like run 0, no amplification.
        run = RunState(0, derive_seed(settings(item.config).seed, item.nodeid, 0), 0.0)
        item.stash[run_key] = run
    return run


call_failed_key = pytest.StashKey[bool]()


def call_passed(item: pytest.Item) -> bool:
    """Whether the test's call phase ran to the end without an exception.

    False as well when it never reported: interrupted (Ctrl-C) or not run.
    """
    return item.stash.get(call_failed_key, True) is False


# What the makereport hook needs to know while an ipc_race test runs.
race_key: pytest.StashKey[RaceRun] = pytest.StashKey()
# The race entry of the ipc_race test that Ctrl-C or SIGTERM cut short.
interrupted_key: pytest.StashKey[list[RaceEntry]] = pytest.StashKey()
# Every fixture of a wider scope than function set up in the session (see
# race.runner.forget_finished_finalizers).
scoped_fixturedefs_key: pytest.StashKey[set[Any]] = pytest.StashKey()

"""The one schema of an ``ipc_race`` test's facts: on its call report, in the JSON report.

A :class:`RaceEntry` is a dict of plain values, so that it travels on the
report from a pytest-xdist worker to the controller (pytest ships a report's
``__dict__``, and objects of ours would crash xdist) and is written into the
``--ipc-report`` file as it is.  docs/report.md describes every field.
"""

from __future__ import annotations

from typing import Any, TypedDict

# 2: verdict "incomplete" with "missing_shards", and "interrupted" entries.
# 3: "max_runs" and "stopped_early", as a racing test stops once its verdict is certain.
# 4: "conflicts" and "trace": where the race is, from runs traced after the verdict.
SCHEMA_VERSION = 4


class ConflictAccess(TypedDict):
    worker: str  # the process's name
    op: str  # "read" or "write"
    value: str  # the value read or written, as repr shows it (shortened)
    file: str  # the user's file, relative to the rootdir when it is under it
    line: int
    function: str
    source: str  # the line's text


class Conflict(TypedDict):
    kind: str  # "lost update" or "check-then-act"
    object: str  # how the report names it: "shared_value (Value('i'), created by the shared_value fixture)"
    type: str  # "Value('i')", "Array('d', 4)", "Namespace proxy"...
    created: str  # "created by the X fixture", "created at f.py:3", or ""
    key: str | None  # the element of an Array, the key of a dict or attribute of a namespace, as repr shows it
    run: int  # the traced run it happened in, and that run's seed
    seed: int
    order: str  # "lock": ordered by the object's own lock (exact); "time": by the monotonic clock
    accesses: list[ConflictAccess]  # in that order
    note: str  # what the last access did wrong
    writes_between: int  # the writes among the shown accesses' span, besides the last access (at most 4 are shown)


class TraceSummary(TypedDict):
    traced_runs: int  # runs traced after the verdict became certain
    found: bool  # whether one showed a conflict
    note: str  # when none did: why, and what the traced runs touched


class MissingShard(TypedDict):
    shard: int  # from 1
    of: int
    nodeid: str
    reason: str


class RaceEntry(TypedDict, total=False):
    # What every entry has.
    nodeid: str
    runs: int
    failed_runs: int
    distinct: int
    histogram: list[list[str | int]]  # [label, runs], most common first
    label: str  # "total" for shared_value/shared_array totals, else "outcome"
    verdict: str  # passed, race, failed, unexpected, incomplete (see verdict.Kind)
    start_method: str | None
    seed: int
    jitter: float | None
    duration: float
    max_runs: int  # the most runs the test could make (runs, or its shard's share)
    job_shard: list[int]  # [i, k] under --ipc-job-shard=i/k: this CI job's share of the runs
    stopped_early: str | None  # why it made fewer: the verdict was certain; None when it did not stop
    # A failing verdict's diagnosis (see race.conflicts): the conflicts found, and the trace's summary.
    conflicts: list[Conflict]
    trace: TraceSummary
    # A run's hang that was a deadlock: WorkerTimeout.deadlock, one dict per worker of the cycle.
    deadlock: list[dict[str, Any]]
    # Added by the reporter (not sent by the runner).
    outcome: str  # pytest's: passed, failed, skipped (xfail), or interrupted
    xfail: bool
    # Merged shards (--ipc-shards).
    shards: int
    missing_shards: list[MissingShard]
    # Merged CI jobs (--ipc-job-shard, python -m pytest_ipc.merge).
    jobs: int
    missing_jobs: list[str]  # the shares "i/k" that sent no runs
    # A test cut short by Ctrl-C or SIGTERM.
    interrupted: bool
    # Sent by a shard for the merge, dropped from the merged entry.
    base_nodeid: str
    shard: int  # from 1
    shard_count: int
    rerun: str
    expected: str  # the marker's expect=, as the message prints it


# The fields of a shard's entry that the merged entry does not keep.
SHARD_ONLY = ("base_nodeid", "shard", "shard_count", "rerun", "expected")

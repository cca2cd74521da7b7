"""The one schema of an ``ipc_race`` test's facts: on its call report, in the JSON report.

A :class:`RaceEntry` is a dict of plain values, so that it travels on the
report from a pytest-xdist worker to the controller (pytest ships a report's
``__dict__``, and objects of ours would crash xdist) and is written into the
``--ipc-report`` file as it is.  docs/report.md describes every field.
"""

from __future__ import annotations

from typing import TypedDict

# 2: verdict "incomplete" with "missing_shards", and "interrupted" entries.
# 3: "max_runs" and "stopped_early", as a racing test stops once its verdict is certain.
SCHEMA_VERSION = 3


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

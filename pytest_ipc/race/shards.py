"""Shards: ``--ipc-shards=K`` splits each ``ipc_race`` test's runs into K items.

Shard i (from 0) runs the run numbers i, i + K, i + 2K, ..., each with the
seed it has unsharded, so that pytest-xdist can spread one campaign over its
workers and the controller merge the shards' histograms into one verdict
(:func:`pytest_ipc.race.verdict.merge`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import pytest

# The hidden argument that --ipc-shards parametrizes; the test function never sees it.
SHARD_ARG = "_ipc_shard"


@dataclass(frozen=True)
class Shard:
    """Item ``index`` (from 0) of ``count``: it runs the runs index, index + count, ..."""

    index: int
    count: int

    @property
    def id(self) -> str:
        return f"shard{self.index + 1}of{self.count}"

    def indices(self, runs: range) -> range:
        return runs[self.index :: self.count]


def job_runs(runs: int, job: tuple[int, int] | None) -> range:
    """The run numbers of a test that this CI job makes (``--ipc-job-shard=I/K``): I-1, I-1+K, ..."""
    every = range(runs)
    return every if job is None else every[job[0] - 1 :: job[1]]


def shard_params(shards: int, runs: int) -> list[Any]:
    """The parameters of a sharded test: no more shards than runs, none for one shard."""
    count = min(shards, runs)
    if count < 2:
        return []
    return [pytest.param(Shard(i, count), id=Shard(i, count).id) for i in range(count)]


def shard_of(item: pytest.Item) -> Shard | None:
    callspec = getattr(item, "callspec", None)
    shard = callspec.params.get(SHARD_ARG) if callspec is not None else None
    return shard if isinstance(shard, Shard) else None


def base_nodeid(nodeid: str, shard: Shard) -> str:
    """The node id the test has without --ipc-shards: ``t.py::test[fork-shard1of4]`` -> ``t.py::test[fork]``."""
    token = shard.id
    if nodeid.endswith(f"[{token}]"):
        return nodeid[: -len(token) - 2]
    if nodeid.endswith(f"-{token}]"):
        return nodeid[: -len(token) - 2] + "]"
    # Another plugin parametrized after us: drop the shard from the middle of the id.
    return nodeid.replace(f"-{token}", "", 1).replace(f"{token}-", "", 1)


# A shard's part of a node id, between the id's brackets or dashes: ``shard2of4``.
_SHARD_TOKEN = re.compile(r"(?<=[\[-])shard(\d+)of(\d+)(?=[\]-])")


def shard_of_nodeid(nodeid: str, shards: int) -> tuple[str, int, int] | None:
    """The base node id, shard number (from 1) and shard count of a shard's node id, or None.

    The controller of pytest-xdist has no items, only node ids: a crashed
    shard is known by its id alone.  ``shards`` is the session's
    ``--ipc-shards``; a test is never split into more.
    """
    if shards < 2 or "[" not in nodeid:
        return None
    params = nodeid[nodeid.index("[") :]
    found = list(_SHARD_TOKEN.finditer(params))
    if not found:
        return None
    number, count = int(found[-1].group(1)), int(found[-1].group(2))
    if not 2 <= count <= shards or not 1 <= number <= count:
        return None
    return base_nodeid(nodeid, Shard(number - 1, count)), number, count

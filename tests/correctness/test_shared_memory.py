"""shared_memory: attaching by name, racing on a byte, and who unlinks the segment."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from multiprocessing import shared_memory
from typing import Any

import pytest

import pytest_ipc

from . import targets

ALL = pytest.mark.ipc_start_methods("fork", "spawn", "forkserver")


def _exists(name: str) -> bool:
    return os.path.exists(os.path.join("/dev/shm", name.lstrip("/")))


@pytest.fixture
def segment() -> Iterator[shared_memory.SharedMemory]:
    """A 64-byte zeroed segment, closed and unlinked at teardown, and checked gone from /dev/shm."""
    shm = shared_memory.SharedMemory(create=True, size=64)
    shm.buf[:] = bytes(64)
    try:
        yield shm
    finally:
        shm.close()
        shm.unlink()
    assert not _exists(shm.name), f"{shm.name} is still in /dev/shm after unlink()"


@ALL
def test_child_attaches_by_name_and_reads_and_writes(segment: shared_memory.SharedMemory, ipc_workers: Any) -> None:
    """A worker attaches by name, sees what the parent wrote and writes what the parent then sees."""
    segment.buf[:5] = b"hello"
    ipc_workers.start(targets.shm_write, args=(segment.name, b"world", 5))
    assert ipc_workers.join() == [b"hello"]
    assert bytes(segment.buf[:10]) == b"helloworld"


def test_unlink_removes_the_segment_from_dev_shm() -> None:
    """A segment is a file in /dev/shm until unlink(), and only until then."""
    shm = shared_memory.SharedMemory(create=True, size=16)
    try:
        assert _exists(shm.name)
    finally:
        shm.close()
        shm.unlink()
    assert not _exists(shm.name)
    with pytest.raises(FileNotFoundError):
        shared_memory.SharedMemory(name=shm.name)


# Each of 2 workers does buf[0] = (buf[0] + 1) % 256 a thousand times,
# fetching shm.buf for the read and again for the write (each fetch is a
# preemption point, and so is the store itself on 3.12+ or when coverage.py
# is not tracing).  Measured at the default jitter on 2
# loaded cores: 20 spawn runs gave the most common final byte twice; 8 runs
# per start method gave 8 distinct bytes under each.  8 runs: a miss is under
# 0.1 ** 7 = 1e-7.
@ALL
@pytest.mark.xfail(strict=True, raises=pytest_ipc.RaceDetected, reason="a byte read-modify-write is not atomic")
@pytest.mark.ipc_race(runs=8)
def test_unlocked_byte_increment_races(segment: shared_memory.SharedMemory, ipc_workers: Any, ipc_outcome: Any) -> None:
    """Unlocked read-modify-write of one byte from two workers: the byte differs across runs."""
    ipc_workers.start(targets.shm_increment, args=(segment.name, 1000), count=2)
    ipc_workers.join()
    ipc_outcome.record(segment.buf[0])


@ALL
@pytest.mark.ipc_race(runs=3, expect=2000 % 256)
def test_locked_byte_increment_is_exact(
    segment: shared_memory.SharedMemory, ipc_workers: Any, ipc_outcome: Any, ipc_context: Any
) -> None:
    """The same increments under one Lock: every run ends at 2000 mod 256."""
    ipc_workers.start(targets.shm_increment, args=(segment.name, 1000, ipc_context.Lock()), count=2)
    ipc_workers.join()
    ipc_outcome.record(segment.buf[0])


@ALL
def test_multiprocessing_child_attaching_leaves_the_segment(
    segment: shared_memory.SharedMemory, ipc_workers: Any
) -> None:
    """A worker of ours that attaches and exits does not unlink: it shares our resource tracker."""
    ipc_workers.start(targets.shm_attach_and_exit, args=(segment.name,))
    assert ipc_workers.join() == [segment.size]
    assert _exists(segment.name)


ATTACH = """
import sys
from multiprocessing import shared_memory
kwargs = {"track": False} if sys.argv[2] == "untracked" else {}
shm = shared_memory.SharedMemory(name=sys.argv[1], **kwargs)
shm.close()
"""


def _attach_from_another_program(name: str, mode: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", ATTACH, name, mode], capture_output=True, text=True, timeout=60)


def test_resource_tracker_of_an_unrelated_attacher_unlinks_the_segment() -> None:
    """A separate program that only attaches and closes still unlinks the segment at its exit.

    Python 3.10-3.13, default ``track=True``: its own resource tracker
    registered the segment on attach and "cleans up" what it calls a leak, so
    the creator's segment is gone (observed on 3.10.13, 3.11.7, 3.12.1 and
    3.13.0).  Python 3.13 added ``track=False`` to attach without that.
    """
    shm = shared_memory.SharedMemory(create=True, size=16)
    name = shm.name
    try:
        result = _attach_from_another_program(name, "tracked")
        assert result.returncode == 0, result.stderr
        assert not _exists(name)
        assert "leaked shared_memory objects to clean up at shutdown" in result.stderr
    finally:
        shm.close()
        # Recreate the name and unlink it properly, so that our own resource
        # tracker, which still holds it, has nothing left to warn about.
        if not _exists(name):
            shm = shared_memory.SharedMemory(name=name, create=True, size=16)
            shm.close()
        shm.unlink()
    assert not _exists(name)


@pytest.mark.skipif(sys.version_info < (3, 13), reason="track= is new in Python 3.13")
def test_untracked_attacher_leaves_the_segment() -> None:
    """On 3.13+, ``SharedMemory(name=..., track=False)`` in another program leaves the segment alone."""
    shm = shared_memory.SharedMemory(create=True, size=16)
    try:
        result = _attach_from_another_program(shm.name, "untracked")
        assert result.returncode == 0, result.stderr
        assert _exists(shm.name)
        assert "leaked" not in result.stderr
    finally:
        shm.close()
        shm.unlink()


@pytest.mark.skipif(sys.version_info >= (3, 13), reason="track= exists from Python 3.13")
def test_track_parameter_does_not_exist_before_3_13() -> None:
    """Before 3.13 there is no way to attach untracked: ``track=`` is a TypeError."""
    shm = shared_memory.SharedMemory(create=True, size=16)
    try:
        with pytest.raises(TypeError, match="track"):
            shared_memory.SharedMemory(name=shm.name, track=False)  # type: ignore[call-arg]
    finally:
        shm.close()
        shm.unlink()

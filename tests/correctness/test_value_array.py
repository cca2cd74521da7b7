"""Value and Array: what the tutorial's shared counter can and cannot rely on."""

from __future__ import annotations

import ctypes
from typing import Any

import bodies
import pytest

import pytest_ipc

from . import targets

ALL = pytest.mark.ipc_start_methods("fork", "spawn", "forkserver")


# The tutorial's program under fork (nine workers adding 50 each); spawn and
# forkserver start two workers adding 500 each, which costs a tenth of the
# process starts and overlaps them for longer.
def counter_shape(method: str) -> tuple[int, int]:
    return (9, 50) if method == "fork" else (2, 500)


# Runs of the unlocked-counter test.  Measured at the default jitter (low) on
# 2 loaded cores: the most common total (often the exact one, or exactly half
# when the two workers alternate in lockstep) came up in at most 4 of 12 runs
# under forkserver, 4 of 20 under spawn and 2 of 12 under fork; the rest were
# all different.  16 runs: a miss needs every run to agree, under
# 0.34 ** 15 = 1e-7.
COUNTER_RUNS = 16


@ALL
@pytest.mark.xfail(strict=True, raises=pytest_ipc.RaceDetected, reason="v.value += 1 is a read then a write")
@pytest.mark.ipc_race(runs=COUNTER_RUNS)
def test_unlocked_value_loses_updates(shared_value: Any, ipc_workers: Any, ipc_start_method: str) -> None:
    """The tutorial's counter, as written: totals differ across runs."""
    count, n = counter_shape(ipc_start_method)
    ipc_workers.start(bodies.add, args=(shared_value, n), count=count)
    ipc_workers.join()


@ALL
@pytest.mark.ipc_race(runs=4)
def test_locked_value_totals_exactly(shared_value: Any, ipc_workers: Any, ipc_start_method: str) -> None:
    """With get_lock() held around ``+=`` every run totals count * n."""
    count, n = counter_shape(ipc_start_method)
    ipc_workers.start(bodies.add_locked, args=(shared_value, n), count=count)
    ipc_workers.join()
    assert shared_value.value == count * n


@ALL
@pytest.mark.parametrize("shared_value", [{"typecode": "i", "value": 0, "lock": False}], indirect=True)
def test_lock_false_gives_a_raw_value(shared_value: Any, ipc_context: Any) -> None:
    """``Value(..., lock=False)`` and ``RawValue`` are bare ctypes objects with no lock."""
    raw = ipc_context.RawValue("i", 0)
    for value in (shared_value, raw):
        assert isinstance(value, ctypes.c_int)
        assert not hasattr(value, "get_lock")
    locked = ipc_context.Value("i", 0)
    assert callable(locked.get_lock)


# No preemption points here: RawValue has no Python-level hook, so the race
# shows only when the two workers' 50,000 increments really overlap.
# Measured: 37 distinct totals in 40 fork runs, 15 in 15 spawn runs (the most
# common total: 3 of 40).  8 runs: a miss is under 0.1 ** 7 = 1e-7.
@ALL
@pytest.mark.xfail(strict=True, raises=pytest_ipc.RaceDetected, reason="a raw value has no lock at all")
@pytest.mark.parametrize("shared_value", [{"lock": False}], indirect=True)
@pytest.mark.ipc_race(runs=8)
def test_raw_value_loses_updates(shared_value: Any, ipc_workers: Any) -> None:
    """``+=`` on a lock-free Value races exactly like on a locked one."""
    ipc_workers.start(bodies.add, args=(shared_value, 50_000), count=2)
    ipc_workers.join()


@ALL
@pytest.mark.parametrize(
    ("shared_value", "item"),
    [(("i", 0), -7), (("d", 0.0), 2.5), (("c", b"a"), b"z")],
    indirect=["shared_value"],
    ids=["i", "d", "c"],
)
def test_typecodes_round_trip(shared_value: Any, item: Any, ipc_workers: Any) -> None:
    """'i', 'd' and 'c' values written in a worker are what the parent reads."""
    ipc_workers.start(targets.store, args=(shared_value, item))
    assert ipc_workers.join() == [item]
    assert shared_value.value == item


@ALL
def test_document_typecodes_that_fail(ipc_context: Any) -> None:
    """``Value('s', ...)`` does not exist and 'c' takes bytes, not the tutorial's str."""
    # CPython's wording: up to 3.14, then from 3.15 ('s'); up to 3.13, then from 3.14 ('c').
    with pytest.raises(TypeError, match=r"this type has no size|bad typecode \(must be a ctypes type or one of c, "):
        ipc_context.Value("s", "some str")
    with pytest.raises(
        TypeError, match=r"one character bytes, bytearray,? or (an )?integer (in range\(256\) )?expected"
    ):
        ipc_context.Value("c", "a")
    assert ipc_context.Value("c", b"a").value == b"a"


@ALL
@pytest.mark.parametrize("shared_array", [("i", range(50))], indirect=True)
def test_array_from_range(shared_array: Any, ipc_workers: Any) -> None:
    """``Array('i', range(50))`` holds 0..49, in the parent and in a worker."""
    assert shared_array[:] == list(range(50))
    ipc_workers.start(targets.read_all, args=(shared_array,))
    assert ipc_workers.join() == [list(range(50))]


# Each worker adds 1 to each of the 50 elements, 10 times.  Measured at the
# default jitter: 16 distinct outcomes in 40 fork runs and 13 in 15 spawn
# runs, the most common one in at most 13% of runs.  8 runs: a miss is under
# 0.13 ** 7 = 7e-7.
@ALL
@pytest.mark.xfail(strict=True, raises=pytest_ipc.RaceDetected, reason="a[i] += 1 is a read then a write")
@pytest.mark.parametrize("shared_array", [("i", range(50))], indirect=True)
@pytest.mark.ipc_race(runs=8)
def test_unlocked_array_loses_updates(shared_array: Any, ipc_workers: Any) -> None:
    """``a[i] += 1`` without the lock: the arrays differ across runs."""
    ipc_workers.start(targets.add_to_each, args=(shared_array, 10), count=2)
    ipc_workers.join()


@ALL
@pytest.mark.parametrize("shared_array", [("i", range(50))], indirect=True)
@pytest.mark.ipc_race(runs=4, expect=tuple(i + 20 for i in range(50)))
def test_locked_array_totals_exactly(shared_array: Any, ipc_workers: Any) -> None:
    """With get_lock() around each ``a[i] += 1`` every element gains exactly 2 * 10."""
    ipc_workers.start(targets.add_to_each_locked, args=(shared_array, 10), count=2)
    ipc_workers.join()

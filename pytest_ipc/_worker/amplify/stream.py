"""The per-worker stream of choices, and the preemption point that draws from it.

The choices come from a ``random.Random`` seeded with the run's seed and the
worker's index (and, in the worker's other threads, the order in which they
first passed a point): the same ``--ipc-seed`` gives every worker the same
sequence of choices (the operating system's scheduling still varies).  A
point only ever yields or sleeps, so correct code behaves exactly as without
it.
"""

from __future__ import annotations

import itertools
import os
import random
import threading
import time
from collections.abc import Callable
from typing import Any

MAX_SLEEP = 0.0002
# A worker's other thread (a Queue's feeder, the code under test's own) sleeps
# this long as it starts (a feeder) or at the first point it passes, whatever
# its stream says: a thread just started is where an order that only happens
# to hold is decided, as with a consumer that stops at Queue.empty() before
# the feeder's first write.  On that scenario (bench/scenarios.py), at load
# 7-9, the share of runs that showed the race went from 70-84% to 82-93%
# under fork and forkserver (0.2 ms gained less, 1 ms no more); the
# sentinel-counted fan-in lost 4-6% of its runs/s.  One sleep per thread.
THREAD_START_SLEEP = 0.0005
# Share of acting points that sleep rather than yield.
SLEEP_SHARE = 0.5
# At the end of a check (a critical section of a shared lock that read and
# did not write; see locks.left_checking), a point acts this many times as
# often (at most always), for the first CHECK_BOOSTS such points of a
# worker: its window is one gap between two critical sections, which an
# oversell crosses only at the last ticket.  Measured in bench/detection.py
# (the per-slot sellers); the budget bounds what race-free readers pay.
CHECK_BOOST = 10
CHECK_BOOSTS = 32


class Amplifier:
    """The per-worker stream of choices: deterministic for a (seed, index)."""

    fresh = False  # the stream of a thread that has passed no point yet

    def __init__(self, seed: int, index: int, p: float, stream: str = "") -> None:
        self.key = f"pytest-ipc:{seed}:{index}{stream}"
        self.rng = random.Random(self.key)
        self.p = p
        self.boosts = CHECK_BOOSTS

    def derived(self, stream: str) -> Amplifier:
        """A stream of its own for ``stream`` (another thread), keyed on this one's."""
        other = Amplifier.__new__(Amplifier)
        other.key = f"{self.key}:{stream}"
        other.rng = random.Random(other.key)
        other.p = self.p
        other.boosts = CHECK_BOOSTS
        return other

    def choose(self, p: float | None = None) -> float | None:
        """None: go on; 0.0: yield the CPU; > 0: sleep that many seconds (acting with ``p``, else the stream's)."""
        rng = self.rng
        if rng.random() >= (self.p if p is None else p):
            return None
        if rng.random() < SLEEP_SHARE:
            return rng.random() * MAX_SLEEP
        return 0.0

    def starting(self) -> bool:
        """Whether this is a thread's first point: True once for a fresh stream."""
        if not self.fresh:
            return False
        self.fresh = False
        return True

    def act(self) -> None:
        """Do what the next choice says."""
        choice = self.choose()
        if choice is not None:
            self.wait(choice)

    def wait(self, choice: float) -> None:
        """Yield the CPU (``choice`` 0.0) or sleep ``choice`` seconds."""
        if choice == 0.0:
            os.sched_yield()
        else:
            time.sleep(choice)


# The stream of the thread that switched amplification on (a worker's main
# thread).  Other threads of the worker (a Queue's feeder thread, the code
# under test's own) draw from streams of their own, the n-th of them to pass a
# point from the n-th stream derived from it, so the main thread's choices for
# a seed do not depend on how threads interleave.  A thread's stream lives in
# a thread-local, tagged with the amplifier it was derived from.
_amp: Amplifier | None = None
_amp_thread = 0
_others = threading.local()
# Numbers the other threads: next() on a count is a single C call, so two
# threads that pass their first point at once cannot draw the same number (as
# they could between the read and the write of a ``+= 1``).
_other_threads = itertools.count(1)


def current() -> Amplifier | None:
    """This thread's stream: the main thread's, or one of the other threads' own; None when off."""
    amp = _amp
    if amp is None or threading.get_ident() == _amp_thread:
        return amp
    mine = getattr(_others, "stream", None)
    if mine is None or mine[0] is not amp:
        stream = amp.derived(f"thread{next(_other_threads)}")
        stream.fresh = True
        mine = _others.stream = (amp, stream)
    return mine[1]


def point(guarded: Callable[[Any], bool] | None = None, obj: Any = None) -> None:
    """A preemption point: maybe yield or sleep, by the worker's stream.

    ``guarded(obj)``, asked only when the stream says to act, tells a point
    that would only hold up other workers: this one holds the lock they would
    need to get anywhere that matters.  The choice is drawn all the same, so a
    seed gives the same sequence either way.  The first point of a worker's
    other thread sleeps at least ``THREAD_START_SLEEP`` (see thread_start()),
    unless guarded.
    """
    amp = current()
    if amp is None:
        return
    choice = amp.choose()
    if amp.starting():
        choice = max(choice or 0.0, THREAD_START_SLEEP)
    if choice is None or (guarded is not None and guarded(obj)):
        return
    amp.wait(choice)


def point_after_check(guarded: Callable[[Any], bool] | None = None, obj: Any = None) -> None:
    """The point at the end of a check (see :data:`CHECK_BOOST`): :func:`point`, acting more often."""
    amp = current()
    if amp is None:
        return
    if amp.boosts <= 0 or amp.fresh:  # a thread's first point is point()'s to take (its start sleep)
        point(guarded, obj)
        return
    amp.boosts -= 1
    choice = amp.choose(min(1.0, amp.p * CHECK_BOOST))
    if choice is None or (guarded is not None and guarded(obj)):
        return
    amp.wait(choice)


def thread_start() -> None:
    """Where a thread of a worker's own making begins: the start sleep, if it is its first.

    A Queue's feeder thread passes here as it starts, before it takes the
    queue's write lock: at its first write it would hold that lock, which
    every producer's feeder takes, through the sleep.
    """
    amp = current()
    if amp is not None and amp.starting():
        amp.wait(THREAD_START_SLEEP)


def start_main(amp: Amplifier | None) -> None:
    """Make ``amp`` the stream of this thread (a worker's main thread); None switches points off."""
    global _amp, _amp_thread, _other_threads
    _amp = amp
    _amp_thread, _other_threads = threading.get_ident(), itertools.count(1)

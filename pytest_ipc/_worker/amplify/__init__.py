"""Race amplification: seeded preemption points at the IPC boundaries.

Inside a worker of an ``ipc_race`` run, every IPC access passes a
preemption point (:mod:`.patches`) where the worker, with probability ``p``,
gives up the CPU (``os.sched_yield``) or sleeps a few hundred microseconds
(:mod:`.stream`).  A yield between the read and the write of
``v.value += 1`` is exactly the interleaving that loses an update, so a race
that plain repetition shows once in many runs shows in the first.  Points
inside a critical section that the worker's lock already guards stay quiet
(:mod:`.locks`).  Shared memory that Python cannot intercept is reached
through the stores of the worker's own code (:mod:`.codepoints`).

- :func:`activate`: in a worker, after the start barrier;
- :func:`hand_on`: in the test process during a run, for the processes
  that the code under test starts itself;
- :func:`deactivate`, :func:`stop_code_points`, :func:`is_active`.

Standard library only: this runs in worker processes.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from pytest_ipc._worker import trace
from pytest_ipc._worker.amplify import codepoints, locks, patches, stream

install = patches.install
hand_on = patches.hand_on
stop_code_points = codepoints.stop


def activate(seed: int, index: int, p: float, uses: Iterable[Any] = ()) -> None:
    """Switch amplification on in this process (a worker, after the start barrier).

    ``uses`` are what the worker's target was given (its arguments, and what
    a ``functools.partial`` or closure holds): where code points cost a trace
    function and come on demand, unguarded shared memory among them switches
    them on from the start.
    """
    hand_on(seed, p, trace.directory())  # its own children are traced if it is
    stream.start_main(stream.Amplifier(seed, index, p) if p > 0 else None)
    locks.shared_held.clear()  # a forked child's copy of the locks its parent held
    codepoints.stop()  # a forked child's copy of its parent's are not its own
    if p <= 0:
        return
    if codepoints.MONITORING or p >= codepoints.SETTRACE_MIN_P:
        codepoints.trace_own_code(seed, index, p)
    else:
        codepoints.due = (seed, index, p)
        if any(map(codepoints.unguarded, codepoints.reachable(uses))):
            codepoints.on_demand(running=False)  # the target has not started: no frame of it yet


def deactivate() -> None:
    """Switch amplification off in this process and in the processes it starts."""
    stream.start_main(None)
    patches.hand_on(0, 0.0)
    codepoints.stop()


def is_active() -> bool:
    return stream._amp is not None

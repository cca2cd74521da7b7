"""Lock awareness: whether a point sits inside a critical section that other workers share.

Inside a critical section of a lock that other workers share, a sleep only
makes them queue for it: on the locked counter such points were most of
amplification's cost.  So some points stay quiet there, where being quiet
hides no race (see :func:`.patches.install`).  A lock the worker made
itself, which no other worker takes (the wrong lock), leaves them all on.
"""

from __future__ import annotations

import os
import threading
from typing import Any


def holds(lock: Any) -> bool:
    """Whether this thread holds ``lock``, a multiprocessing ``Lock`` or ``RLock``.

    A ``Semaphore`` that lets more than one holder in is no lock here.  A
    ``Lock`` that another process released after this one took it (a
    hand-off) still counts as this thread's in ``_is_mine()``, hence the look
    at its value.
    """
    semlock = getattr(lock, "_semlock", None)
    if semlock is None:
        return False
    from multiprocessing import synchronize  # imported already: a SemLock exists

    return (
        semlock.maxvalue == 1
        and bool(semlock._is_mine())
        and (semlock.kind == synchronize.RECURSIVE_MUTEX or semlock._get_value() == 0)  # type: ignore[attr-defined]  # not in typeshed
    )


def shared(lock: Any) -> bool:
    """Whether other processes may take ``lock``: every lock but one this process made.

    A lock made here (a ``Lock()`` in the worker's target, or a module-level
    one that each spawn worker makes anew as it imports the module) is one no
    other worker takes, so holding it guards nothing from them.  A lock
    inherited through fork was made by another pid; one that came pickled
    (spawn, forkserver) was never made here at all.
    """
    return getattr(lock, "_ipc_pid", None) != os.getpid()


# The shared locks this process has entered (``with lock:``) and not left.
shared_held: list[Any] = []


# What the outermost critical section of a shared lock did so far, per
# thread, as the synchronized accessors tell it (see patches._traced): read
# a Value or an Array element, wrote one.  A section that read and did not
# write is a check whose result the worker is about to act on outside it:
# the split check-then-act (``with lock: left = sold.value < limit`` then, in
# a section of its own, ``with lock: sold.value += 1``).  Its exit point acts
# more often (see stream.point_after_check).  Per thread, so that another
# thread's reads leave the main thread's choices alone.
class _Section(threading.local):
    read = False
    wrote = False


section = _Section()


def entered_section() -> None:
    section.read = section.wrote = False


def left_checking() -> bool:
    """Whether the section just left only read: its exit is a check's end."""
    return section.read and not section.wrote


def under_shared_lock() -> bool:
    """Whether this thread is inside a ``with`` block of a lock shared with other processes."""
    return bool(shared_held) and any(map(holds, shared_held))


def holds_own_lock(synchronized: Any) -> bool:
    """Whether this thread holds the lock of a synchronized ``Value``/``Array``, a shared one.

    Then its read or write cannot race with another worker's reads and
    writes through the same wrapper (each takes that lock too); a worker
    that does the read and the write without it gets its own points.  A
    wrapper this process made around shared memory has a lock of its own
    that no other worker takes: its points stay on.
    """
    lock = getattr(synchronized, "_lock", None)
    return holds(lock) and shared(lock)

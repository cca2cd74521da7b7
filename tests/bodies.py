"""The scenario bodies that the suite and its pytester sessions run in workers.

The tutorial's counter, locked and unlocked, and the other bodies that more
than one test module starts, or that bench/ runs too, written once.  A body
that one module alone starts stays in that module (or in
``tests/correctness/targets.py``).

Why here, beside ``sessions.py`` and ``leftovers.py``: pytest puts ``tests/``
on ``sys.path`` for the test modules, so they ``import bodies``; a pytester
session gets a copy of this file (``sessions.copy_bodies``), as it gets its
``helpers.py``; the sessions of bench/ find it on their ``PYTHONPATH``
(``bench/sessions.py``), and so do their workers.  Under spawn and forkserver every worker imports this module,
so it imports nothing but the standard library, and ``shared_memory`` only
where it is used: no pytest, no pytest_ipc.

Two copies are kept on purpose, and ``tests/test_examples.py`` checks that
they say the same as this file: ``examples/test_counter.py``, which users
read and run on its own, and the targets of ``bench/scenarios.py``, which
keeps each scenario's targets beside it (``bench/diagnosis.py`` finds a
scenario's racing lines there, by function and text).
"""

from __future__ import annotations

import os
from typing import Any

# -- the tutorial's counter -----------------------------------------------------


def add(counter: Any, n: int) -> None:
    """The tutorial's generate_update_number: ``+=`` without the lock."""
    for _ in range(n):
        counter.value += 1  # a read, then a write: not atomic


def add_locked(counter: Any, n: int) -> None:
    """The same, with the Value's own lock held around the read and the write."""
    for _ in range(n):
        with counter.get_lock():
            counter.value += 1


def record_pid(pid: int | None = None) -> None:
    """Append this process's pid (or ``pid``) to ``$IPC_TEST_PIDFILE``: the outer test checks each is gone."""
    with open(os.environ["IPC_TEST_PIDFILE"], "a") as f:
        f.write(f"{pid or os.getpid()}\n")


def record_then_add(counter: Any, n: int) -> None:
    """:func:`add`, by a worker that records its pid first."""
    record_pid()
    add(counter, n)


def record_then_add_locked(counter: Any, n: int) -> None:
    """:func:`add_locked`, by a worker that records its pid first."""
    record_pid()
    add_locked(counter, n)


# -- the other bodies of bench/scenarios.py that the suite runs (tests/test_amplify.py) --


def produce(q: Any, n: int) -> None:
    """Put ``n`` numbers on a FanInQueue, then this producer's ``DONE``."""
    for i in range(n):
        q.put(i)
    q.put(q.DONE)


def pong(conn: Any, rounds: int) -> None:
    """Send back each number received, plus one, ``rounds`` times."""
    for _ in range(rounds):
        conn.send(conn.recv() + 1)


def add_to_dict_locked(d: Any, lock: Any, n: int) -> None:
    """``d["n"] += 1`` on a Manager dict, ``n`` times, under ``lock`` (a Manager Lock)."""
    for _ in range(n):
        with lock:
            d["n"] += 1


def add_to_byte(name: str, n: int) -> None:
    """``shm.buf[0] += 1`` ``n`` times on segment ``name``: no IPC call between the read and the write."""
    from multiprocessing import shared_memory  # here: importing it costs a spawn worker ~10 ms

    shm = shared_memory.SharedMemory(name=name)
    try:
        for _ in range(n):
            shm.buf[0] += 1
    finally:
        shm.close()


# -- small bodies several modules start -----------------------------------------


def noop() -> None:
    """A worker that does nothing: what its start costs, alone."""


def pid() -> int:
    return os.getpid()


def wait_for(event: Any) -> None:
    """Wait for an Event nobody sets: runs until the worker is ended."""
    event.wait()


def put_big(q: Any, size: int) -> None:
    """Put one item far larger than a pipe's buffer and return."""
    q.put(b"x" * size)

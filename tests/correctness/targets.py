"""Worker targets of the correctness suite.

Module-level functions in a module that imports neither pytest nor the test
modules: under spawn every worker imports this module afresh, and pulling
pytest in there would cost more than the work the targets do.  Each target
is the tutorial's code (or the mistake a user makes with a primitive),
reduced to what the tests observe.  The targets other test modules or
bench/ start too (the tutorial's counter among them) are ``tests/bodies.py``'s.
"""

from __future__ import annotations

import os
from multiprocessing import shared_memory
from typing import Any

# -- Value and Array ----------------------------------------------------------


def add_to_each(array: Any, n: int) -> None:
    """``a[i] += 1`` on every element, ``n`` times, without the lock."""
    for _ in range(n):
        for i in range(len(array)):
            array[i] += 1


def add_to_each_locked(array: Any, n: int) -> None:
    """The same, with the Array's own lock held around each ``+=``."""
    for _ in range(n):
        for i in range(len(array)):
            with array.get_lock():
                array[i] += 1


def store(value: Any, item: Any) -> Any:
    """Write ``item`` into a shared Value and return what the worker reads back."""
    value.value = item
    return value.value


def read_all(array: Any) -> list[Any]:
    """What a worker sees in a shared Array."""
    return list(array[:])


# -- Pipe -----------------------------------------------------------------------


def pipe_worker(id: int, base_num: int, conn: Any) -> None:
    """The tutorial's pipe worker: count to ``base_num`` and send the sub-total."""
    sub_total = 0
    for _ in range(base_num):
        sub_total += 1
    conn.send(sub_total)


def echo_doubled(conn: Any, count: int) -> None:
    """Receive ``count`` numbers on a duplex end and send each one back doubled."""
    for _ in range(count):
        conn.send(conn.recv() * 2)


def recv_on_send_end(conn: Any) -> str:
    """Try to receive on the sending end of a one-way pipe; return the error."""
    try:
        conn.recv()
    except OSError as exc:
        return f"{type(exc).__name__}: {exc}"
    return "no error"


def wait_for_message(conn: Any) -> Any:
    """Receive from a pipe nobody writes to."""
    return conn.recv()  # blocks for ever: the hang the launcher must catch


def send_blocks(conn: Any, size: int, count: int, lock: Any = None) -> None:
    """Send ``count`` messages of ``size`` bytes, optionally under ``lock``.

    Each payload repeats this process's 4-byte pid, so a message with another
    writer's bytes inside is told apart from a whole one.
    """
    payload = os.getpid().to_bytes(4, "big") * (size // 4)
    for _ in range(count):
        if lock is None:
            conn.send_bytes(payload)
        else:
            with lock:
                conn.send_bytes(payload)


# -- Queue ----------------------------------------------------------------------


def queue_worker(id: int, base_num: int, q: Any) -> None:
    """The tutorial's queue worker: send the sub-total, then the ``'exit'`` sentinel."""
    sub_total = 0
    for _ in range(base_num):
        sub_total += 1
    q.put(sub_total)
    q.put("exit")


def put_numbers(q: Any, count: int) -> None:
    """Put ``count`` small numbers, one at a time."""
    for i in range(count):
        q.put(i)


def put_numbers_then_signal(q: Any, count: int, done: Any) -> None:
    """Put ``count`` small numbers, then tell the consumer that this producer is done."""
    for i in range(count):
        q.put(i)
    done.release()  # put() has returned for every item: they are not all in the pipe yet


# -- shared_memory ----------------------------------------------------------------


def shm_write(name: str, data: bytes, offset: int) -> bytes:
    """Attach to segment ``name``; return its first bytes and write ``data`` at ``offset``."""
    shm = shared_memory.SharedMemory(name=name)
    try:
        seen = bytes(shm.buf[: len(data)])
        shm.buf[offset : offset + len(data)] = data
        return seen
    finally:
        shm.close()


def shm_increment(name: str, n: int, lock: Any = None) -> None:
    """``buf[0] = buf[0] + 1`` ``n`` times on segment ``name``, optionally under ``lock``.

    ``shm.buf`` is fetched for the read and again for the write, as a user
    writes it; pytest-ipc can preempt the worker at each fetch and just before
    the store (a code point).
    """
    shm = shared_memory.SharedMemory(name=name)
    try:
        for _ in range(n):
            if lock is None:
                shm.buf[0] = (shm.buf[0] + 1) % 256
            else:
                with lock:
                    shm.buf[0] = (shm.buf[0] + 1) % 256
    finally:
        shm.close()


def shm_attach_and_exit(name: str) -> int:
    """Attach to a segment another process created, close it and return: no unlink."""
    shm = shared_memory.SharedMemory(name=name)
    size = shm.size
    shm.close()
    return size


# -- Manager --------------------------------------------------------------------


def manager_add(counter: Any, n: int, lock: Any = None) -> None:
    """``counter.value += 1`` on a manager Value proxy, optionally under a manager Lock."""
    for _ in range(n):
        if lock is None:
            counter.value += 1
        else:
            with lock:
                counter.value += 1


def manager_dict_add(d: Any, key: str, n: int, lock: Any = None) -> None:
    """``d[key] += 1`` on a manager dict proxy, optionally under a manager Lock."""
    for _ in range(n):
        if lock is None:
            d[key] += 1
        else:
            with lock:
                d[key] += 1

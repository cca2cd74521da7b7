"""Worker targets and scenario bodies for bench/detection.py.

No pytest here: under spawn and forkserver every worker imports this module.

A scenario is a function ``scenario(ctx, launch, env) -> (outcome, expected)``:
``ctx`` is the multiprocessing context, ``launch`` starts workers
(``launch.start(target, args=..., count=N)`` then ``launch.join()``; either
pytest-ipc's ``ipc_workers`` or :class:`PlainLauncher`, which starts the
processes one by one with no barrier, as a test repeated by pytest-repeat
would), ``env`` holds objects that live longer than one run (the manager).
A run shows the race when ``outcome != expected``.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable
from multiprocessing import shared_memory
from typing import Any

WORKERS = 9
INCREMENTS = 50  # the tutorial's 9 x 50 counter
MANAGER_INCREMENTS = 20  # each += on a proxy is two round trips to the manager
SHM_INCREMENTS = 25  # 9 x 25 = 225 stays below 256: one byte holds the total
FANIN_PRODUCERS = 4
FANIN_ITEMS = 25
PING_PONG_ROUNDS = 50
QUEUE_ITEMS = 20
SELLERS = 6  # one seller per slot, each started by a start() call of its own
TICKETS = 30
TORN_WRITES = 200  # the writer's updates of the (a, b) pair
TORN_READS = 200  # each reader's reads of it
TORN_READERS = 2
LOCK_ROUNDS = 20  # each worker of the lock-order pairs takes both locks this often
LOCK_WAIT = 1.0  # how long a worker waits for its second lock before it calls it a deadlock


class PlainLauncher:
    """Processes started one by one, no barrier, no amplification (what pytest-repeat gives)."""

    def __init__(self, ctx: Any) -> None:
        self.ctx = ctx
        self.procs: list[Any] = []

    def start(self, target: Callable[..., Any], args: tuple[Any, ...] = (), count: int = 1) -> None:
        for _ in range(count):
            p = self.ctx.Process(target=target, args=args)
            p.start()
            self.procs.append(p)

    def join(self) -> None:
        for p in self.procs:
            p.join(30)
        bad = [p.exitcode for p in self.procs if p.exitcode != 0]
        for p in self.procs:
            if p.exitcode is None:
                p.kill()
                p.join()
        if bad:
            raise RuntimeError(f"workers failed with exit codes {bad}")

    def close(self) -> None:
        for p in self.procs:
            if p.exitcode is None:
                p.kill()
                p.join()
            p.close()


# -- worker targets -----------------------------------------------------------


def noop() -> None:
    """A worker that does nothing: what its start costs, alone."""


def inc_value(v: Any, n: int) -> None:
    for _ in range(n):
        v.value += 1


def inc_value_locked(v: Any, n: int) -> None:
    for _ in range(n):
        with v.get_lock():
            v.value += 1


def inc_array(a: Any, n: int) -> None:
    for _ in range(n):
        a[3] += 1


def inc_dict(d: Any, n: int) -> None:
    for _ in range(n):
        d["n"] += 1


def inc_dict_locked(d: Any, lock: Any, n: int) -> None:
    for _ in range(n):
        with lock:
            d["n"] += 1


def inc_shm(name: str, n: int) -> None:
    shm = shared_memory.SharedMemory(name=name)
    try:
        for _ in range(n):
            shm.buf[0] += 1
    finally:
        shm.close()


def inc_shm_locked(name: str, lock: Any, n: int) -> None:
    shm = shared_memory.SharedMemory(name=name)
    try:
        for _ in range(n):
            with lock:
                shm.buf[0] += 1
    finally:
        shm.close()


def inc_value_own_lock(v: Any, n: int) -> None:
    lock = multiprocessing.Lock()  # the bug: a lock that no other worker takes
    for _ in range(n):
        with lock:
            v.value += 1


def inc_shm_striped(name: str, locks: Any, ticket: Any, n: int) -> None:
    """Workers take turns between two shared locks: each guards only half of them."""
    with ticket.get_lock():
        lock = locks[ticket.value % len(locks)]
        ticket.value += 1
    inc_shm_locked(name, lock, n)


def queue_role(q: Any, out: Any, ticket: Any, n: int) -> None:
    """The first worker in produces ``n`` items; the second consumes until ``empty()``."""
    with ticket.get_lock():
        role = ticket.value
        ticket.value += 1
    if role == 0:
        for i in range(n):
            q.put(i)
        return
    got = 0
    while not q.empty():  # the bug: empty() says nothing about items still on their way
        q.get()
        got += 1
    out.value = got


def fanin_producer(q: Any, n: int) -> None:
    for i in range(n):
        q.put(i)
    q.put(q.DONE)


def pong(conn: Any, rounds: int) -> None:
    for _ in range(rounds):
        conn.send(conn.recv() + 1)


def sell(sold: Any, limit: int, slot: int) -> None:
    """Sell until sold out: check, then act, each statement under the lock (the bug: not both)."""
    lock = sold.get_lock()
    while True:
        with lock:
            left = sold.value < limit
        if not left:
            return
        with lock:
            sold.value += 1


def sell_locked(sold: Any, limit: int, slot: int) -> None:
    lock = sold.get_lock()
    while True:
        with lock:
            if sold.value >= limit:
                return
            sold.value += 1


def write_pair(a: Any, b: Any, lock: Any, n: int) -> None:
    """Keep a == b, updating them one after the other (the bug: no lock around the pair)."""
    for i in range(1, n + 1):
        a.value = i
        b.value = i


def write_pair_locked(a: Any, b: Any, lock: Any, n: int) -> None:
    for i in range(1, n + 1):
        with lock:
            a.value = i
            b.value = i


def read_pair(a: Any, b: Any, lock: Any, torn: Any, n: int) -> None:
    for _ in range(n):
        x = a.value
        y = b.value
        if x != y:
            with torn.get_lock():
                torn.value += 1


def read_pair_locked(a: Any, b: Any, lock: Any, torn: Any, n: int) -> None:
    for _ in range(n):
        with lock:
            x = a.value
            y = b.value
        if x != y:
            with torn.get_lock():
                torn.value += 1


def produce_items(q: Any, n: int) -> None:
    for i in range(n):
        q.put(i)


def consume_until_empty(q: Any, out: Any, n: int) -> None:
    got = 0
    while not q.empty():  # the bug: empty() says nothing about items still on their way
        q.get()
        got += 1
    out.value = got


def consume_n(q: Any, out: Any, n: int) -> None:
    for _ in range(n):
        q.get(timeout=30)
    out.value = n


def transfer(first: Any, second: Any, src: Any, dst: Any, stuck: Any, rounds: int) -> None:
    """Move a unit from ``src`` to ``dst`` under ``first`` then ``second``.

    A second lock not had within LOCK_WAIT counts as the deadlock (a plain
    ``with second:`` would hang the run until the timeout).
    """
    for _ in range(rounds):
        with first:
            src.value -= 1
            if not second.acquire(timeout=LOCK_WAIT):
                src.value += 1
                with stuck.get_lock():
                    stuck.value += 1
                return
            dst.value += 1
            second.release()


# -- scenarios ------------------------------------------------------------------


def _counter(ctx: Any, launch: Any, target: Callable[..., None], v: Any = None, n: int = INCREMENTS) -> tuple[Any, Any]:
    v = ctx.Value("i", 0) if v is None else v
    launch.start(target, args=(v, n), count=WORKERS)
    launch.join()
    return v.value, WORKERS * n


def _shm_byte(launch: Any, target: Callable[..., None], *shared: Any) -> tuple[Any, Any]:
    shm = shared_memory.SharedMemory(create=True, size=16)
    try:
        shm.buf[0] = 0
        launch.start(target, args=(shm.name, *shared, SHM_INCREMENTS), count=WORKERS)
        launch.join()
        return shm.buf[0], WORKERS * SHM_INCREMENTS
    finally:
        shm.close()
        shm.unlink()


def counter(ctx: Any, launch: Any, env: dict[str, Any]) -> tuple[Any, Any]:
    return _counter(ctx, launch, inc_value)


def raw_counter(ctx: Any, launch: Any, env: dict[str, Any]) -> tuple[Any, Any]:
    # No lock and no Python-level hook: only code points reach its += .
    return _counter(ctx, launch, inc_value, ctx.RawValue("i", 0))


def manager_value(ctx: Any, launch: Any, env: dict[str, Any]) -> tuple[Any, Any]:
    return _counter(ctx, launch, inc_value, env["manager"].Value("i", 0), MANAGER_INCREMENTS)


def locked_counter(ctx: Any, launch: Any, env: dict[str, Any]) -> tuple[Any, Any]:
    return _counter(ctx, launch, inc_value_locked)


def own_lock_counter(ctx: Any, launch: Any, env: dict[str, Any]) -> tuple[Any, Any]:
    return _counter(ctx, launch, inc_value_own_lock)


def shm_byte(ctx: Any, launch: Any, env: dict[str, Any]) -> tuple[Any, Any]:
    return _shm_byte(launch, inc_shm)


def shm_byte_locked(ctx: Any, launch: Any, env: dict[str, Any]) -> tuple[Any, Any]:
    return _shm_byte(launch, inc_shm_locked, ctx.Lock())


def shm_byte_striped(ctx: Any, launch: Any, env: dict[str, Any]) -> tuple[Any, Any]:
    return _shm_byte(launch, inc_shm_striped, (ctx.Lock(), ctx.Lock()), ctx.Value("i", 0))


def array_element(ctx: Any, launch: Any, env: dict[str, Any]) -> tuple[Any, Any]:
    a = ctx.Array("i", 10)
    launch.start(inc_array, args=(a, INCREMENTS), count=WORKERS)
    launch.join()
    return a[3], WORKERS * INCREMENTS


def manager_dict(ctx: Any, launch: Any, env: dict[str, Any]) -> tuple[Any, Any]:
    d = env["manager"].dict({"n": 0})
    launch.start(inc_dict, args=(d, MANAGER_INCREMENTS), count=WORKERS)
    launch.join()
    return d["n"], WORKERS * MANAGER_INCREMENTS


def queue_empty(ctx: Any, launch: Any, env: dict[str, Any]) -> tuple[Any, Any]:
    q = ctx.Queue()
    out = ctx.Value("i", -1)
    ticket = ctx.Value("i", 0)
    try:
        launch.start(queue_role, args=(q, out, ticket, QUEUE_ITEMS), count=2)
        launch.join()
        for _ in range(QUEUE_ITEMS - out.value):  # what the consumer left behind
            q.get(timeout=10)
    finally:
        q.close()
        q.join_thread()
    return out.value, QUEUE_ITEMS


def fanin(ctx: Any, launch: Any, env: dict[str, Any]) -> tuple[Any, Any]:
    from pytest_ipc import FanInQueue

    q = FanInQueue(ctx=ctx, timeout=30)
    try:
        launch.start(fanin_producer, args=(q, FANIN_ITEMS), count=FANIN_PRODUCERS)
        items = q.collect(producers=FANIN_PRODUCERS)
        launch.join()
    finally:
        q.shutdown()
    return tuple(sorted(items)), tuple(sorted(list(range(FANIN_ITEMS)) * FANIN_PRODUCERS))


def ping_pong(ctx: Any, launch: Any, env: dict[str, Any]) -> tuple[Any, Any]:
    mine, theirs = ctx.Pipe()
    try:
        launch.start(pong, args=(theirs, PING_PONG_ROUNDS), count=1)
        x = 0
        for _ in range(PING_PONG_ROUNDS):
            mine.send(x)
            x = mine.recv() + 1
        launch.join()
    finally:
        mine.close()
        theirs.close()
    return x, 2 * PING_PONG_ROUNDS


def manager_dict_locked(ctx: Any, launch: Any, env: dict[str, Any]) -> tuple[Any, Any]:
    d = env["manager"].dict({"n": 0})
    lock = env["manager"].Lock()
    launch.start(inc_dict_locked, args=(d, lock, MANAGER_INCREMENTS), count=WORKERS)
    launch.join()
    return d["n"], WORKERS * MANAGER_INCREMENTS


# Multi-role scenarios (issue 14): the workers of each role are started by a
# start() call of their own, as tests usually start them.


def _sellers(ctx: Any, launch: Any, target: Callable[..., None]) -> tuple[Any, Any]:
    sold = ctx.Value("i", 0)
    for slot in range(SELLERS):
        launch.start(target, args=(sold, TICKETS, slot))
    launch.join()
    return sold.value, TICKETS


def sellers(ctx: Any, launch: Any, env: dict[str, Any]) -> tuple[Any, Any]:
    return _sellers(ctx, launch, sell)


def sellers_locked(ctx: Any, launch: Any, env: dict[str, Any]) -> tuple[Any, Any]:
    return _sellers(ctx, launch, sell_locked)


def _torn(ctx: Any, launch: Any, writer: Callable[..., None], reader: Callable[..., None]) -> tuple[Any, Any]:
    a, b, lock, torn = ctx.Value("i", 0), ctx.Value("i", 0), ctx.Lock(), ctx.Value("i", 0)
    launch.start(writer, args=(a, b, lock, TORN_WRITES))
    launch.start(reader, args=(a, b, lock, torn, TORN_READS), count=TORN_READERS)
    launch.join()
    return torn.value > 0, False


def torn_read(ctx: Any, launch: Any, env: dict[str, Any]) -> tuple[Any, Any]:
    return _torn(ctx, launch, write_pair, read_pair)


def torn_read_locked(ctx: Any, launch: Any, env: dict[str, Any]) -> tuple[Any, Any]:
    return _torn(ctx, launch, write_pair_locked, read_pair_locked)


def _producer_consumer(ctx: Any, launch: Any, consumer: Callable[..., None]) -> tuple[Any, Any]:
    q = ctx.Queue()
    out = ctx.Value("i", -1)
    try:
        launch.start(produce_items, args=(q, QUEUE_ITEMS))
        launch.start(consumer, args=(q, out, QUEUE_ITEMS))
        launch.join()
        for _ in range(QUEUE_ITEMS - out.value):  # what the consumer left behind
            q.get(timeout=10)
    finally:
        q.close()
        q.join_thread()
    return out.value, QUEUE_ITEMS


def producer_consumer(ctx: Any, launch: Any, env: dict[str, Any]) -> tuple[Any, Any]:
    return _producer_consumer(ctx, launch, consume_until_empty)


def producer_consumer_counted(ctx: Any, launch: Any, env: dict[str, Any]) -> tuple[Any, Any]:
    return _producer_consumer(ctx, launch, consume_n)


def _lock_pairs(ctx: Any, launch: Any, inverted: bool) -> tuple[Any, Any]:
    one, two = ctx.Lock(), ctx.Lock()
    x, y, stuck = ctx.Value("i", 0), ctx.Value("i", 0), ctx.Value("i", 0)
    launch.start(transfer, args=(one, two, x, y, stuck, LOCK_ROUNDS), count=2)
    # The second pair moves units the other way: with the locks in the same
    # order (one, then two) it cannot deadlock with the first.
    locks = (two, one) if inverted else (one, two)
    launch.start(transfer, args=(*locks, y, x, stuck, LOCK_ROUNDS), count=2)
    launch.join()
    return stuck.value > 0, False


def lock_order_deadlock(ctx: Any, launch: Any, env: dict[str, Any]) -> tuple[Any, Any]:
    return _lock_pairs(ctx, launch, inverted=True)


def lock_order_same(ctx: Any, launch: Any, env: dict[str, Any]) -> tuple[Any, Any]:
    return _lock_pairs(ctx, launch, inverted=False)


RACY: dict[str, Callable[..., tuple[Any, Any]]] = {
    "unlocked Value counter": counter,
    "unlocked Array element": array_element,
    "Manager dict +=": manager_dict,
    "unlocked RawValue counter": raw_counter,
    "Manager Value +=": manager_value,
    "queue consumer stops at empty()": queue_empty,
    "unlocked SharedMemory byte": shm_byte,
    # The wrong lock: one that each worker makes for itself, and two shared
    # locks of which each worker takes one.
    "counter under a lock of its own": own_lock_counter,
    "SharedMemory byte under one of two locks": shm_byte_striped,
    # Started by separate start() calls.
    "per-slot sellers, check then act": sellers,
    "writer and readers apart, torn pair": torn_read,
    "producer and consumer apart, empty()": producer_consumer,
    "two pairs, inverted lock order": lock_order_deadlock,
}
RACE_FREE: dict[str, Callable[..., tuple[Any, Any]]] = {
    "locked counter": locked_counter,
    "sentinel-counted fan-in": fanin,
    "ping-pong pipe": ping_pong,
    "lock-guarded Manager dict": manager_dict_locked,
    # Not one of issue 4's four: where code points cost most before 3.12
    # (a trace function from the first buffer access on).
    "lock-guarded SharedMemory byte": shm_byte_locked,
    "per-slot sellers, check and act locked": sellers_locked,
    "writer and readers apart, locked pair": torn_read_locked,
    "producer and consumer apart, counted": producer_consumer_counted,
    "two pairs, same lock order": lock_order_same,
}
ALL = {**RACY, **RACE_FREE}

# What a correct run gives: the bench's ipc_race tests pass it as expect=, so a
# race that loses the same updates in every run is reported too.
EXPECTED: dict[str, Any] = {
    "unlocked Value counter": WORKERS * INCREMENTS,
    "unlocked Array element": WORKERS * INCREMENTS,
    "Manager dict +=": WORKERS * MANAGER_INCREMENTS,
    "unlocked RawValue counter": WORKERS * INCREMENTS,
    "Manager Value +=": WORKERS * MANAGER_INCREMENTS,
    "queue consumer stops at empty()": QUEUE_ITEMS,
    "unlocked SharedMemory byte": WORKERS * SHM_INCREMENTS,
    "counter under a lock of its own": WORKERS * INCREMENTS,
    "SharedMemory byte under one of two locks": WORKERS * SHM_INCREMENTS,
    "locked counter": WORKERS * INCREMENTS,
    "sentinel-counted fan-in": tuple(sorted(list(range(FANIN_ITEMS)) * FANIN_PRODUCERS)),
    "ping-pong pipe": 2 * PING_PONG_ROUNDS,
    "lock-guarded Manager dict": WORKERS * MANAGER_INCREMENTS,
    "lock-guarded SharedMemory byte": WORKERS * SHM_INCREMENTS,
    "per-slot sellers, check then act": TICKETS,
    "per-slot sellers, check and act locked": TICKETS,
    "writer and readers apart, torn pair": False,
    "writer and readers apart, locked pair": False,
    "producer and consumer apart, empty()": QUEUE_ITEMS,
    "producer and consumer apart, counted": QUEUE_ITEMS,
    "two pairs, inverted lock order": False,
    "two pairs, same lock order": False,
}

"""Pipe: the tutorial's one-to-one exchange, and what breaks it."""

from __future__ import annotations

import inspect
import os
import select
import time
from typing import Any

import pytest

import pytest_ipc

from . import targets

ALL = pytest.mark.ipc_start_methods("fork", "spawn", "forkserver")


@ALL
def test_duplex_pipe_talks_both_ways(pipe_pair: Any, ipc_workers: Any) -> None:
    """On a duplex pipe each end sends and receives: the worker answers every message."""
    ipc_workers.start(targets.echo_doubled, args=(pipe_pair.child, 3))
    for n in (1, 2, 3):
        pipe_pair.parent.send(n)
        assert pipe_pair.parent.poll(10)
        assert pipe_pair.parent.recv() == 2 * n
    ipc_workers.join()


@ALL
@pytest.mark.parametrize("pipe_pair", [False], indirect=True)
def test_one_way_pipe_has_a_receive_end_and_a_send_end(pipe_pair: Any, ipc_workers: Any) -> None:
    """On a one-way pipe the receive end cannot send and the send end cannot receive."""
    with pytest.raises(OSError, match="connection is read-only"):
        pipe_pair.parent.send("no")
    assert ipc_workers.join() == []
    ipc_workers.start(targets.recv_on_send_end, args=(pipe_pair.child,))
    assert ipc_workers.join() == ["OSError: connection is write-only"]
    ipc_workers.start(targets.pipe_worker, args=(1, 10, pipe_pair.child))
    assert pipe_pair.parent.poll(10)
    assert pipe_pair.parent.recv() == 10
    ipc_workers.join()


@ALL
@pytest.mark.parametrize("pipe_pair", [False], indirect=True)
def test_document_pipe_worker_sends_its_sub_total(pipe_pair: Any, ipc_workers: Any) -> None:
    """The tutorial's worker counts to 1,000,000 and the parent receives 1000000."""
    ipc_workers.start(targets.pipe_worker, args=(1, 1_000_000, pipe_pair.child), name="1")
    assert pipe_pair.parent.poll(30)
    assert pipe_pair.parent.recv() == 1_000_000
    ipc_workers.join()


@ALL
@pytest.mark.parametrize("pipe_pair", [False], indirect=True)
@pytest.mark.ipc_race(runs=4, expect=1000)
def test_one_to_one_exchange_totals_exactly(pipe_pair: Any, ipc_workers: Any, ipc_outcome: Any) -> None:
    """One sender, one receiver: every run receives the exact sub-total."""
    ipc_workers.start(targets.pipe_worker, args=(1, 1000, pipe_pair.child))
    assert pipe_pair.parent.poll(30)
    ipc_outcome.record(pipe_pair.parent.recv())
    ipc_workers.join()


def _line_of(func: Any, text: str) -> int:
    lines, first = inspect.getsourcelines(func)
    return first + next(i for i, line in enumerate(lines) if text in line)


@ALL
@pytest.mark.ipc_timeout(2)
def test_recv_with_no_sender_is_caught_as_a_hang(pipe_pair: Any, ipc_workers: Any) -> None:
    """A recv nobody answers ends in WorkerTimeout after ipc_timeout, with the recv line in the stack."""
    ipc_workers.start(targets.wait_for_message, args=(pipe_pair.child,))
    started = time.monotonic()
    with pytest.raises(pytest_ipc.WorkerTimeout) as excinfo:
        ipc_workers.join()
    assert time.monotonic() - started < 10
    message = str(excinfo.value)
    assert "still running after the 2s timeout" in message
    line = _line_of(targets.wait_for_message, "conn.recv()")
    assert f'targets.py", line {line} in wait_for_message' in message
    assert " in recv" in message


# Two writers on one end, no lock.  send_bytes() writes a 4-byte length and
# then, for a payload over 16 KiB, the payload in a second write(); a write
# larger than PIPE_BUF (4 KiB) is not atomic either.  Whenever the two
# writers overlap, one's bytes land inside the other's message.  The parent
# reads the raw bytes and parses the framing itself: a torn length would make
# Connection.recv_bytes() wait for bytes that never come.
MESSAGE = 64 * 1024  # the size of a pipe's whole buffer on Linux
# Per writer: 4 MiB, long enough that the two writers overlap even when one
# starts late.  With 16 messages (1 MiB) an idle machine left about half the
# attempts under forkserver and spawn untorn (19 of 40 and 17 of 40: one
# writer finished before the other began), and 10 attempts missed in tox.
# With 64, one attempt each, on the idle 2-core machine: torn in 40 of 40
# under fork, 40 of 40 under forkserver, 98 of 100 under spawn.  10
# attempts: a miss is under 0.05 ** 10, and the first attempt nearly always
# ends the loop.
MESSAGES = 64
ATTEMPTS = 10
# The reader takes a page at a time, as a slow consumer does: the writers
# then spend their time blocked on a full pipe, and each wakes to write into
# the page the reader just freed, in the middle of the other's message.
READ_CHUNK = 4096


def _read_exactly(conn: Any, size: int, timeout: float) -> bytes:
    deadline = time.monotonic() + timeout
    chunks: list[bytes] = []
    got = 0
    fd = conn.fileno()
    while got < size:
        remaining = deadline - time.monotonic()
        ready, _, _ = select.select([fd], [], [], max(remaining, 0))
        if not ready:
            raise TimeoutError(f"read {got} of {size} bytes within {timeout}s")
        chunk = os.read(fd, min(READ_CHUNK, size - got))
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def _intact_messages(data: bytes) -> int:
    """How many messages parse as one writer's whole payload, up to the first torn one."""
    intact = 0
    pos = 0
    while pos < len(data):
        length = int.from_bytes(data[pos : pos + 4], "big", signed=True)
        payload = data[pos + 4 : pos + 4 + MESSAGE]
        if length != MESSAGE or payload != payload[:4] * (MESSAGE // 4):
            break
        intact += 1
        pos += 4 + MESSAGE
    return intact


def _two_writers(pipe_pair: Any, ipc_workers: Any, lock: Any) -> int:
    ipc_workers.start(targets.send_blocks, args=(pipe_pair.child, MESSAGE, MESSAGES, lock), count=2)
    data = _read_exactly(pipe_pair.parent, 2 * MESSAGES * (4 + MESSAGE), timeout=30)
    ipc_workers.join()
    return _intact_messages(data)


@ALL
@pytest.mark.parametrize("pipe_pair", [False], indirect=True)
def test_two_writers_on_one_end_tear_messages(pipe_pair: Any, ipc_workers: Any) -> None:
    """Two workers sending 64 KiB messages on one end without a lock interleave their bytes."""
    for _attempt in range(1, ATTEMPTS + 1):
        intact = _two_writers(pipe_pair, ipc_workers, lock=None)
        if intact < 2 * MESSAGES:
            break
    assert intact < 2 * MESSAGES, f"no torn message in {ATTEMPTS} attempts"


@ALL
@pytest.mark.parametrize("pipe_pair", [False], indirect=True)
def test_two_writers_with_a_lock_keep_messages_whole(pipe_pair: Any, ipc_workers: Any, ipc_context: Any) -> None:
    """The same two writers, each send under one shared Lock: every message arrives whole."""
    assert _two_writers(pipe_pair, ipc_workers, lock=ipc_context.Lock()) == 2 * MESSAGES

"""A real ``multiprocessing`` Queue with a fan-in helper.

Importable in worker processes: no pytest here.
"""

from __future__ import annotations

import os
import queue
import select
import sys
import threading
import time
from multiprocessing import queues
from typing import Any

__all__ = ["DONE", "FanInQueue", "FanInTimeout"]


class _Done:
    """The default end-of-stream sentinel; stays the same object across pickling."""

    def __reduce__(self) -> str:
        return "DONE"

    def __repr__(self) -> str:
        return "pytest_ipc.DONE"


DONE = _Done()

DEFAULT_TIMEOUT = 30.0
# Teardown gives the queue's feeder thread this long to finish.
CLOSE_TIMEOUT = 5.0


class FanInTimeout(TimeoutError):
    """Not every producer sent its sentinel before the timeout."""


class FanInQueue(queues.Queue):  # type: ignore[type-arg]  # generic in typeshed only, not at run time
    """A ``multiprocessing.Queue`` that can collect from N producers.

    Producers ``put`` their items and then one sentinel each (``DONE`` by
    default, or any value you choose, such as the tutorial's ``'exit'``)::

        def producer(q, n):
            for i in range(n):
                q.put(i)
            q.put(q.DONE)

        ipc_workers.start(producer, args=(fanin_queue, 100), count=5)
        items = fanin_queue.collect(producers=5)
        ipc_workers.join()

    Collect before joining: a producer whose items are still in the pipe
    cannot exit (that is the classic queue deadlock, which ``join`` reports
    as a hang).
    """

    DONE = DONE

    def __init__(self, maxsize: int = 0, *, ctx: Any, timeout: float = DEFAULT_TIMEOUT) -> None:
        super().__init__(maxsize, ctx=ctx)
        self._collect_timeout = timeout

    def collect(self, producers: int, sentinel: Any = DONE, timeout: float | None = None) -> list[Any]:
        """Get items until ``producers`` sentinels arrived; return the items in arrival order."""
        __tracebackhide__ = True
        if isinstance(producers, bool) or not isinstance(producers, int) or producers < 1:
            raise ValueError(f"fanin_queue.collect(): producers must be a positive integer, got {producers!r}")
        limit = getattr(self, "_collect_timeout", DEFAULT_TIMEOUT) if timeout is None else timeout
        deadline = time.monotonic() + limit
        items: list[Any] = []
        done = 0
        while done < producers:
            remaining = deadline - time.monotonic()
            try:
                if remaining <= 0:
                    raise queue.Empty
                item = self.get(timeout=remaining)
            except queue.Empty:
                raise FanInTimeout(
                    f"fanin_queue.collect(): {done} of {producers} producers sent their sentinel "
                    f"{sentinel!r} within {limit:g}s ({len(items)} items received)"
                ) from None
            if type(item) is type(sentinel) and item == sentinel:
                done += 1
            else:
                items.append(item)
        return items

    def shutdown(self) -> None:
        """Drain, close and join the feeder thread without ever blocking for long.

        A feeder thread blocked writing into a full pipe is what makes tests
        hang on exit.  An empty pipe is not enough: the feeder may still hold
        items this process put.  So the queue is closed first (the feeder
        then writes what it holds and exits) while the pipe's bytes are read
        and thrown away until it has.  Raw bytes, not items: a worker killed
        halfway through writing an item leaves half a message that ``get``
        would wait on for ever.  A feeder that still has not finished after
        ``CLOSE_TIMEOUT`` seconds (one waiting for a lock a killed worker
        held) is abandoned rather than waited for.
        """
        fd = self._dup_reader()
        if not self._closed:  # type: ignore[attr-defined]  # set by Queue.__init__, not in typeshed
            self.close()
        joiner = threading.Thread(target=self.join_thread, daemon=True, name="fanin_queue-close")
        joiner.start()
        deadline = time.monotonic() + CLOSE_TIMEOUT
        try:
            while joiner.is_alive() and time.monotonic() < deadline:
                if fd is None:
                    joiner.join(0.05)
                elif not _discard_available(fd, 0.05):  # end of file: nothing left to unblock
                    os.close(fd)
                    fd = None
        finally:
            if fd is not None:
                os.close(fd)
        if joiner.is_alive():
            self.cancel_join_thread()
        else:
            # Queue.close() leaves the read end, and the write end when no
            # feeder ever started, open until the queue is collected; the
            # fixture's queue must not outlive the test.
            self._reader.close()  # type: ignore[attr-defined]  # set by Queue.__init__, not in typeshed
            self._writer.close()  # type: ignore[attr-defined]  # set by Queue.__init__, not in typeshed

    def _dup_reader(self) -> int | None:
        """A private copy of the read end: the feeder closes the queue's own when it exits."""
        if sys.platform == "win32":  # pragma: no cover - select() does not take pipes there
            return None
        try:
            return os.dup(self._reader.fileno())  # type: ignore[attr-defined]  # set by Queue.__init__, not in typeshed
        except (OSError, ValueError):  # already closed
            return None


def _discard_available(fd: int, timeout: float) -> bool:
    """Read and drop whatever ``fd`` holds, waiting at most ``timeout``; False at end of file."""
    readable, _, _ = select.select([fd], [], [], timeout)
    return not readable or os.read(fd, 1 << 20) != b""

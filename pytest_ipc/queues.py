"""A real ``multiprocessing`` Queue with a fan-in helper.

Importable in worker processes: no pytest here.
"""

from __future__ import annotations

import queue
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


class FanInQueue(queues.Queue):  # type: ignore[type-arg]
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
        hang on exit; draining first empties the pipe, and the join runs in
        a helper thread so that a stuck feeder costs at most
        ``CLOSE_TIMEOUT`` seconds.
        """
        try:
            while True:
                self.get_nowait()
        except (queue.Empty, OSError, ValueError, EOFError):
            pass
        self.close()
        joiner = threading.Thread(target=self.join_thread, daemon=True, name="fanin_queue-close")
        joiner.start()
        joiner.join(CLOSE_TIMEOUT)
        if joiner.is_alive():
            self.cancel_join_thread()

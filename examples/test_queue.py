"""The tutorial's queue: five producers each count to 1,000,000, the test totals them."""

import pytest


def worker(base_num, q):
    sub_total = 0
    for _ in range(base_num):
        sub_total += 1
    q.put(sub_total)
    q.put("exit")  # one sentinel per producer, as in the tutorial


@pytest.mark.ipc_race(runs=3, expect=5_000_000)
def test_five_producers(fanin_queue, ipc_workers, ipc_outcome):
    """Collect until all five sentinels arrived (before joining), then total."""
    ipc_workers.start(worker, args=(1_000_000, fanin_queue), count=5)
    sub_totals = fanin_queue.collect(producers=5, sentinel="exit")
    ipc_workers.join()
    ipc_outcome.record(sum(sub_totals))

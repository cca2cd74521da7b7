"""The tutorial's pipe: a worker counts to 1,000,000 and sends its sub-total."""

import pytest


def worker(base_num, conn):
    sub_total = 0
    for _ in range(base_num):
        sub_total += 1
    conn.send(sub_total)
    conn.close()


@pytest.mark.ipc_race(runs=5, expect=1_000_000)
def test_pipe_sub_total(pipe_pair, ipc_workers, ipc_outcome):
    """One sender, one receiver: the total arrives whole, every run."""
    parent, child = pipe_pair
    ipc_workers.start(worker, args=(1_000_000, child))
    # poll() with a timeout, not a bare recv(): a dead worker must not hang the test.
    assert parent.poll(30), "the worker sent nothing"
    ipc_outcome.record(parent.recv())
    ipc_workers.join()

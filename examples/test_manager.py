"""The tutorial's ``Manager``: a dict shared through a server process."""

import pytest


def add(shared, lock, n):
    for _ in range(n):
        with lock:  # += on a proxy is a get and a set: two round trips
            shared["count"] += 1


@pytest.mark.ipc_race(runs=5, expect=90)
def test_manager_dict_with_lock(ipc_context, ipc_workers, ipc_outcome):
    """Nine workers add 10 each through a Manager dict, under a Manager lock."""
    with ipc_context.Manager() as manager:
        shared = manager.dict(count=0)
        ipc_workers.start(add, args=(shared, manager.Lock(), 10), count=9)
        ipc_workers.join()
        ipc_outcome.record(shared["count"])

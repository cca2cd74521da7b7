"""The tutorial's shared counter: nine processes add 50 each to one Value.

``counter.value += 1`` on a synchronized ``Value`` is a locked read followed
by a locked write.  Two workers that read the same number both write
number + 1, and an update is lost.  The tutorial printed 450 because its
processes, started one after another, rarely overlapped.  pytest-ipc starts
the workers together and perturbs the schedule at every IPC access, so the
loss shows from the first run: run this file and ``test_unlocked_counter``
fails with a histogram of the totals it saw.
"""

import pytest


def add(counter, n):
    for _ in range(n):
        counter.value += 1  # a read, then a write: not atomic


def add_locked(counter, n):
    for _ in range(n):
        with counter.get_lock():  # the read and the write under one lock
            counter.value += 1


@pytest.mark.ipc_race(runs=20)
def test_unlocked_counter(shared_value, ipc_workers):
    """The tutorial's code as written: the totals differ from run to run."""
    ipc_workers.start(add, args=(shared_value, 50), count=9)
    ipc_workers.join()


@pytest.mark.ipc_race(runs=20, expect=450)
def test_locked_counter(shared_value, ipc_workers):
    """With the Value's own lock held around ``+=``, every run totals 450."""
    ipc_workers.start(add_locked, args=(shared_value, 50), count=9)
    ipc_workers.join()

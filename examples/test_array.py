"""The tutorial's ``Array('i', range(50))``, updated by five workers at once."""

import pytest


def add_one_to_each(numbers):
    with numbers.get_lock():  # one lock for the whole array
        for i in range(len(numbers)):
            numbers[i] += 1


@pytest.mark.ipc_race(runs=10, expect=tuple(range(5, 55)))
@pytest.mark.parametrize("shared_array", [("i", range(50))], indirect=True)
def test_array_of_fifty(shared_array, ipc_workers):
    """Every element ends 5 higher; the array's total is the run's outcome."""
    ipc_workers.start(add_one_to_each, args=(shared_array,), count=5)
    ipc_workers.join()

"""``multiprocessing.shared_memory`` (the tutorial's "shared memory", Python 3.8+)."""

from multiprocessing import shared_memory


def write_greeting(name):
    shm = shared_memory.SharedMemory(name=name)  # attach by name
    try:
        shm.buf[:5] = b"hello"
    finally:
        shm.close()


def test_child_writes_parent_reads(ipc_workers):
    """A child attaches to the segment by name; the parent sees its bytes."""
    shm = shared_memory.SharedMemory(create=True, size=16)
    try:
        ipc_workers.start(write_greeting, args=(shm.name,))
        ipc_workers.join()
        assert bytes(shm.buf[:5]) == b"hello"
    finally:
        shm.close()
        shm.unlink()  # the creator removes the segment from /dev/shm

"""The worker side: what runs inside the processes that tests start.

Everything under ``pytest_ipc._worker`` imports the standard library only,
never pytest nor the pytest side of this package (``tests/test_layout.py``
starts a fresh interpreter and checks it).  Under spawn and forkserver every
worker imports these modules afresh, so they also keep their own imports to
what a worker needs: what only some workers need is imported on first use.

- :mod:`.protocol`: what the test process and a worker tell each other;
- :mod:`.bootstrap`: the entry point of an ``ipc_workers`` worker;
- :mod:`.startpatch`: the one patch of ``BaseProcess.start``, for the
  processes that the code under test starts itself;
- :mod:`.lazy`: patches that wait until their module is imported;
- :mod:`.shmlog`: the SharedMemory segments that child processes create;
- :mod:`.queues`: ``FanInQueue`` and ``DONE``;
- :mod:`.amplify`: race amplification.
"""

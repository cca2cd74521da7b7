"""Helpers of the correctness suite.

The Manager the tests use is the plugin's own ``ipc_manager`` fixture; the
helpers below start and check one by hand, for the test of ``shutdown()``.
"""

from __future__ import annotations

import multiprocessing
from typing import Any

import psutil


def start_manager(ctx: Any) -> tuple[Any, psutil.Process]:
    """Start a Manager from ``ctx``; return it and its server process."""
    before = set(multiprocessing.active_children())
    manager = ctx.Manager()
    new = [p for p in multiprocessing.active_children() if p not in before]
    servers = [p for p in new if p.name.startswith("SyncManager-")]
    assert len(servers) == 1, f"expected one manager process, found {new}"
    return manager, psutil.Process(servers[0].pid)


def assert_gone(process: psutil.Process) -> None:
    """``process`` has exited (waiting up to 5 s for it to be reaped)."""
    _, alive = psutil.wait_procs([process], timeout=5)
    assert not alive, f"the manager's process {process.pid} is still running after shutdown()"

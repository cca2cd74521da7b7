"""What the suite's inner sessions may leave behind, and how the tests look for it.

Shared by the test modules (imported as ``leftovers``: pytest puts this
directory on ``sys.path`` for them).  Every check kills what it finds, so a
failing test does not leave processes for the next one.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

import psutil


def gone(pid: int) -> bool:
    """The process has exited (a zombie nobody reaps counts as gone)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def wait_until(check: Callable[[], list[Any]], seconds: float) -> list[Any]:
    """Poll ``check`` until it returns nothing or ``seconds`` passed; its last answer.

    SIGKILL is asynchronous, and a fork server or resource tracker exits when
    it sees its pipe to the session close, a moment after the session ended.
    """
    deadline = time.monotonic() + seconds
    left = check()
    while left and time.monotonic() < deadline:
        time.sleep(0.05)
        left = check()
    return left


def still_alive(pids: Iterable[int], seconds: float = 5.0) -> list[int]:
    """The pids still running after ``seconds``; those are killed before returning."""
    pids = list(pids)
    alive = wait_until(lambda: [p for p in pids if not gone(p)], seconds)
    kill(alive)
    return alive


def processes_marked(marker: str, variable: str = "IPC_TEST_RUN") -> list[psutil.Process]:
    """Live processes whose environment has ``variable=marker``: whatever an inner session started."""
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.environ().get(variable) == marker and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except psutil.Error:  # gone meanwhile, a zombie, or not ours
            continue
    return found


def kill(processes: Iterable[psutil.Process | int]) -> None:
    """SIGKILL each process (a psutil.Process or a pid) that still exists."""
    for proc in processes:
        try:
            (proc if isinstance(proc, psutil.Process) else psutil.Process(proc)).kill()
        except psutil.Error:
            pass

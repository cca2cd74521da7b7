"""The leak check: what a pytest-ipc test leaves behind is a failure of that test.

Four kinds of leak, each named with what the user can fix:

- a process started with ``multiprocessing`` and never joined (running or
  exited), and among those a ``Manager`` that was never shut down;
- a ``SharedMemory`` segment created during the test and never unlinked
  (still in /dev/shm).  Segments are attributed by name, never by comparing
  /dev/shm before and after: other processes (pytest-xdist workers, other
  jobs) create and remove segments there all the time.  The test process's
  own are seen through multiprocessing's resource-tracker registration,
  those its workers create through :mod:`pytest_ipc._worker.shmlog` (see there for
  which child processes it reaches);
- a ``Pipe`` (or any ``multiprocessing.connection.Connection``, the pipes
  of a ``Queue`` included) still open and reachable after the test.

The check is an autouse function-scoped fixture, set up before the test's
other function fixtures and so torn down after them; what higher-scoped
fixtures hold was there before it looked.  It reports only when the test
itself passed (a failing test's traceback keeps its objects alive), and it
always cleans up what it found: processes are ended, segments unlinked,
connections closed.

``--ipc-leak-check=fail`` (the default) makes a leak an error in the test's
teardown, ``warn`` a :class:`pytest_ipc.LeakWarning`, ``off`` skips it.
"""

from __future__ import annotations

import gc
import os
import stat
import sys
import threading
import warnings
from collections.abc import Iterator
from typing import Any

import pytest

from pytest_ipc import stash
from pytest_ipc.collection import uses_plugin
from pytest_ipc.config import settings

SHM_DIR = "/dev/shm"
# How long a leaked process gets to end after terminate(), before SIGKILL.
END_GRACE = 2.0
# How long the check waits for Queue feeder threads to finish closing their
# pipes before it counts those pipes as leaked.
FEEDER_GRACE = 1.0


def _shm_exists(name: str) -> bool:
    return os.path.exists(os.path.join(SHM_DIR, name.lstrip("/")))


def _ipc_fds() -> frozenset[tuple[int, int, int]]:
    """(fd, device, inode) of this process's open pipes and sockets."""
    found = set()
    try:
        fds = os.listdir("/proc/self/fd")
    except OSError:  # no /proc: nothing to check
        return frozenset()
    for name in fds:
        fd = int(name)
        try:
            st = os.fstat(fd)
        except OSError:  # the listing's own fd, closed since
            continue
        if stat.S_ISFIFO(st.st_mode) or stat.S_ISSOCK(st.st_mode):
            found.add((fd, st.st_dev, st.st_ino))
    return frozenset(found)


def _children() -> set[Any]:
    """Every process this process started with multiprocessing and has not joined."""
    if "multiprocessing" not in sys.modules:
        return set()  # nothing can have been started
    import multiprocessing.process

    # Read before active_children(), which quietly reaps the ones that exited.
    unjoined = set(getattr(multiprocessing.process, "_children", ()))
    return unjoined | set(multiprocessing.active_children())


class Snapshot:
    """What existed before the test: nothing of it counts as the test's leak."""

    def __init__(self) -> None:
        self.processes = _children()
        self.fds = _ipc_fds()


class Leaks:
    """What a test left behind, and how to clean it up."""

    def __init__(self) -> None:
        self.processes: list[Any] = []
        self.managers: dict[Any, Any] = {}  # server process -> its manager, if found
        self.shm: list[str] = []
        self.connections: list[Any] = []  # multiprocessing.connection.Connection

    def __bool__(self) -> bool:
        return bool(self.processes or self.shm or self.connections)

    def describe(self) -> list[str]:
        lines = []
        for proc in self.processes:
            exitcode = proc.exitcode
            where = "was still running" if exitcode is None else f"had exited with code {exitcode}"
            if proc in self.managers or "Manager-" in proc.name:
                lines.append(
                    f"Manager never shut down: its server process {proc.name} (pid {proc.pid}) "
                    f"{where}; call manager.shutdown() or use it in a with block"
                )
            else:
                lines.append(f"process never joined: {proc.name} (pid {proc.pid}) {where}; call join() on it")
        for name in self.shm:
            lines.append(
                f"SharedMemory never unlinked: {name!r} in {SHM_DIR}; call unlink() on it (close() only unmaps it)"
            )
        for conn in self.connections:
            kind = "pipe" if _is_pipe(conn) else "socket"
            end = "duplex" if conn.readable and conn.writable else "read end" if conn.readable else "write end"
            lines.append(
                f"Pipe never closed: a Connection over a {kind}, fd {_fileno(conn)} ({end}); "
                "call close() on both ends of a Pipe (a Queue: close() and join_thread())"
            )
        return lines


def _fileno(conn: Any) -> int | None:
    try:
        return int(conn.fileno())
    except (OSError, ValueError):
        return None


def _is_pipe(conn: Any) -> bool:
    fd = _fileno(conn)
    try:
        return fd is not None and stat.S_ISFIFO(os.fstat(fd).st_mode)
    except OSError:
        return False


def _feeder_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "QueueFeederThread" and t.is_alive()]


def find(before: Snapshot, check_fds: bool, created_shm: set[str]) -> Leaks:
    """What exists now that did not in ``before``, of the segments ``created_shm`` too."""
    leaks = Leaks()
    leaks.processes = sorted((p for p in _children() if p not in before.processes), key=lambda p: p.pid or 0)
    leaks.shm = sorted(n.lstrip("/") for n in created_shm if _shm_exists(n))
    if check_fds and _ipc_fds() - before.fds:
        from multiprocessing.connection import Connection

        # Connections that are garbage close when collected, and a Queue's
        # feeder thread closes its pipe on its own: neither is a leak.
        for thread in _feeder_threads():
            thread.join(FEEDER_GRACE)
        gc.collect()
        new = {fd for fd, _, _ in _ipc_fds() - before.fds}
        if new:
            leaks.connections = [
                obj
                for obj in gc.get_objects()
                if isinstance(obj, Connection) and not obj.closed and _fileno(obj) in new
            ]
    if leaks.processes:
        leaks.managers = _managers_of(leaks.processes)
    return leaks


def _managers_of(processes: list[Any]) -> dict[Any, Any]:
    """The Manager objects whose server processes are among ``processes``."""
    from multiprocessing.managers import BaseManager

    wanted = set(processes)
    found = {}
    for obj in gc.get_objects():
        if isinstance(obj, BaseManager):
            proc = getattr(obj, "_process", None)
            if proc in wanted:
                found[proc] = obj
    return found


def clean_up(leaks: Leaks) -> None:
    """End, unlink and close what leaked, so that it does not outlive the test."""
    for manager in leaks.managers.values():
        try:
            manager.shutdown()
        except Exception:
            pass
    for proc in leaks.processes:
        _end(proc)
    for name in leaks.shm:
        _unlink(name)
    for conn in leaks.connections:
        try:
            conn.close()
        except OSError:
            pass


def _end(proc: Any) -> None:
    from pytest_ipc.workers import descendant_pids, end_pids

    if proc.exitcode is None:
        descendants = descendant_pids(proc.pid)
        proc.terminate()
        proc.join(END_GRACE)
        if proc.exitcode is None:
            proc.kill()
        end_pids(descendants, END_GRACE)
    proc.join(END_GRACE)


def _unlink(name: str) -> None:
    from multiprocessing import shared_memory

    try:
        segment = shared_memory.SharedMemory(name=name)
    except (FileNotFoundError, ValueError, OSError):
        return
    segment.close()
    try:
        segment.unlink()  # also tells the resource tracker it is gone
    except FileNotFoundError:
        pass


class _Registrations:
    """The SharedMemory names this process registers with multiprocessing's resource tracker."""

    def __init__(self) -> None:
        self.names: set[str] = set()
        self._installed = False

    def install(self) -> None:
        if self._installed:
            return
        from multiprocessing import resource_tracker

        original = resource_tracker.register
        seen = self.names

        def register(name: Any, rtype: str) -> None:
            if rtype == "shared_memory":
                seen.add(name)
            original(name, rtype)

        register.__wrapped__ = original  # type: ignore[attr-defined]  # marks it wrapped, as functools.wraps does
        resource_tracker.register = register
        self._installed = True

    def uninstall(self) -> None:
        from multiprocessing import resource_tracker

        original = getattr(resource_tracker.register, "__wrapped__", None)
        if self._installed and original is not None:
            resource_tracker.register = original
        self._installed = False


def _child_segment_log(request: pytest.FixtureRequest) -> str | None:
    """Where this process's children note their segments: under pytest's basetemp (None: no tmpdir plugin)."""
    try:
        factory = request.getfixturevalue("tmp_path_factory")
    except pytest.FixtureLookupError:  # -p no:tmpdir: the test process's own segments are still checked
        return None
    return os.path.join(factory.getbasetemp(), f"ipc-shm-created-{os.getpid()}.log")


@pytest.fixture(autouse=True)
def _ipc_leak_check(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fail (or warn about) a pytest-ipc test that leaves processes, segments or pipes behind."""
    item = request.node
    mode = settings(request.config).leak_check
    if mode == "off" or not isinstance(item, pytest.Item) or not uses_plugin(item):
        yield
        return
    from pytest_ipc._worker import shmlog

    registrations = _Registrations()
    registrations.install()
    log = _child_segment_log(request)
    outer = shmlog.start(log) if log is not None else None
    before = Snapshot()
    try:
        yield
    finally:
        registrations.uninstall()
        by_children = shmlog.stop(log, outer) if log is not None and outer is not None else set()
    passed = stash.call_passed(item)
    leaks = find(before, check_fds=passed, created_shm=registrations.names | by_children)
    if not leaks:
        return
    from pytest_ipc.errors import LeakError, LeakWarning

    described = leaks.describe()
    clean_up(leaks)
    if not passed:
        return  # the test's own failure is the report; what it left is cleaned up
    message = f"{item.nodeid} left {len(described)} thing(s) behind (pytest-ipc cleaned them up):\n" + "\n".join(
        f"  - {line}" for line in described
    )
    if mode == "warn":
        # Shown at the test's own line, where the leak is to be fixed.
        _, lineno, _ = item.location
        warnings.warn_explicit(LeakWarning(message), LeakWarning, str(item.path), (lineno or 0) + 1)
        return
    __tracebackhide__ = True
    raise LeakError(message + "\n(--ipc-leak-check=warn or off to let it pass)")

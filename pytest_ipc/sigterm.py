"""While a pytest-ipc test runs, SIGTERM stops pytest as Ctrl-C does.

By default SIGTERM kills pytest on the spot: no fixture teardown, so
workers, Managers and shared memory are left behind.  Only the default
disposition is replaced, and only around tests that use the plugin, so a
handler of the user's or of another plugin is left alone.

To keep a SIGTERM from being lost or from killing pytest mid-fork, the
handler comes with a wrapper of ``os.fork`` (:meth:`SigtermHooks.fork`),
installed with it and removed with it.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import warnings
from collections.abc import Callable, Generator
from typing import Any

import pytest

from pytest_ipc.collection import uses_plugin

# From 3.12 os.fork() warns in a process that runs other threads.
_FORK_WARNS = sys.version_info >= (3, 12)


class SigtermHooks:
    """The SIGTERM handler and the ``os.fork`` wrapper it needs, with their state."""

    def __init__(self) -> None:
        self._pid = os.getpid()  # the pytest process; fork children end as they would without us
        self._real_fork: Callable[[], int] | None = None  # os.fork as it was before fork() replaced it
        # True while this process forks with SIGTERM blocked (see fork()), and
        # whether a SIGTERM came meanwhile.
        self._forking = False
        self._deferred = False
        self._terminated: type[BaseException] = KeyboardInterrupt  # errors.Terminated, once imported

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_protocol(self, item: pytest.Item, nextitem: pytest.Item | None) -> Generator[None, Any, Any]:
        if (
            not hasattr(signal, "SIGTERM")
            or threading.current_thread() is not threading.main_thread()
            or not uses_plugin(item)
            or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL
        ):
            return (yield)
        from pytest_ipc import errors  # now, never inside the handler

        self._terminated = errors.Terminated
        signal.signal(signal.SIGTERM, self.raise_terminated)
        wrapped = hasattr(os, "fork") and hasattr(signal, "pthread_sigmask")
        if wrapped:
            self._real_fork, os.fork = os.fork, self.fork
        try:
            return (yield)
        finally:
            if wrapped and os.fork == self.fork:
                assert self._real_fork is not None
                os.fork = self._real_fork
            if signal.getsignal(signal.SIGTERM) == self.raise_terminated:
                signal.signal(signal.SIGTERM, signal.SIG_DFL)

    def fork(self) -> int:
        """``os.fork``, while pytest-ipc's SIGTERM handler is installed.

        SIGTERM and SIGINT are blocked across the fork.  The child restores
        SIGTERM's default disposition before unblocking: a child that inherits a
        Python-level handler can lose a SIGTERM sent right after the fork, before
        its interpreter is ready to run handlers, and ``Process.terminate()``
        just after ``start()`` would not end it (tests/test_interrupt.py shows
        it).  The parent unblocks them once the fork has returned, so that a
        Ctrl-C or SIGTERM that came meanwhile is raised here, and not inside
        ``os.fork()``'s callbacks (logging's among them), which print and drop
        exceptions: the interrupt would be lost.
        """
        real_fork = self._real_fork
        assert real_fork is not None
        if (
            signal.getsignal(signal.SIGTERM) != self.raise_terminated
            or threading.current_thread() is not threading.main_thread()
        ):
            return real_fork()
        interrupts = {signal.SIGTERM, signal.SIGINT}
        self._forking = True
        try:
            signal.pthread_sigmask(signal.SIG_BLOCK, interrupts)
            pid = self._fork_warning_at_caller()
            if pid == 0:
                self._forking = self._deferred = False
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
            self._forking = False  # a pending SIGINT raises KeyboardInterrupt right here, as it should
            signal.pthread_sigmask(signal.SIG_UNBLOCK, interrupts)
        finally:
            self._forking = False
        if self._deferred:
            self._deferred = False
            self.raise_terminated(signal.SIGTERM, None)
        return pid

    def _fork_warning_at_caller(self) -> int:
        """Fork; a warning of the fork's (Python 3.12+: forking a multi-threaded
        process) points at the code that called ``os.fork``, as without the wrapper."""
        real_fork = self._real_fork
        assert real_fork is not None
        if not _FORK_WARNS:
            return real_fork()  # no warning to move; catch_warnings would cost every fork
        caller = sys._getframe(2)  # here, fork() (which is os.fork), its caller
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            pid = real_fork()
        if pid != 0:
            for w in caught:
                warnings.warn_explicit(
                    w.message,
                    w.category,
                    caller.f_code.co_filename,
                    caller.f_lineno,
                    module=caller.f_globals.get("__name__"),
                    registry=caller.f_globals.setdefault("__warningregistry__", {}),
                )
        return pid

    def raise_terminated(self, signum: int, frame: Any) -> None:
        """The SIGTERM handler: raise :class:`Terminated` in the pytest process."""
        if self._forking:
            # Mid-fork, maybe inside os.fork()'s callbacks, where an exception is
            # dropped: fork() raises it once the fork has returned.
            self._deferred = True
            return
        # A second SIGTERM, while the first one's clean-up runs, kills at once.
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        if os.getpid() != self._pid:
            # A fork child inherited the handler: end as it would have without us.
            os.kill(os.getpid(), signal.SIGTERM)
            return
        raise self._terminated("pytest received SIGTERM: stopping as on Ctrl-C, with teardown")

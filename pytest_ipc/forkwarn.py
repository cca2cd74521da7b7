"""One :class:`~pytest_ipc.ForkWarning` per session instead of a warning at every fork.

From Python 3.12 ``os.fork()`` warns at every fork of a process that runs
other threads: ``DeprecationWarning: This process (pid=...) is
multi-threaded, use of fork() may lead to deadlocks in the child.``  A race
test under fork starts hundreds of workers, and pytest shows every one of
those warnings (each has its own pid, so none is a repeat); one thread of
another plugin's (pytest-rerunfailures runs one in every pytest process when
pytest-xdist is installed) is enough for that.

For the forks that pytest-ipc's own ``ipc_workers`` and ``ipc_manager``
make, the session gets one warning that names the threads and what to do.
The user's warning filters still decide first, on Python's own warning: one
that turns it into an error (``-W error::DeprecationWarning``) fails the
start as before, one that ignores it shows nothing.
"""

from __future__ import annotations

import os
import re
import sys
import threading
import warnings
from collections.abc import Iterable

import pytest

from pytest_ipc.errors import ForkWarning

# Python's own text (Modules/posixmodule.c), 3.12 to 3.15.
_PYTHON_FORK_WARNING = re.compile(r"This process \(pid=\d+\) is multi-threaded, use of fork\(\) may lead to deadlocks")


def is_fork_warning(w: warnings.WarningMessage) -> bool:
    """Is ``w`` Python's warning about forking a multi-threaded process?"""
    return issubclass(w.category, DeprecationWarning) and bool(_PYTHON_FORK_WARNING.match(str(w.message)))


def other_threads() -> list[str]:
    """The other threads of this process: the names of Python's, and how many have none.

    A thread started with ``_thread`` or by C code (pytest-xdist's workers
    run one) is not in ``threading.enumerate()``; Linux still counts it.
    """
    current = threading.current_thread()
    names = [repr(t.name) for t in threading.enumerate() if t is not current]
    try:
        unnamed = len(os.listdir("/proc/self/task")) - 1 - len(names)
    except OSError:  # not Linux
        unnamed = 0
    if unnamed > 0:
        names.append(f"{unnamed} not started by Python's threading module")
    return names


def message(threads: Iterable[str]) -> str:
    running = f"other threads ({', '.join(threads) or 'unknown'})"
    return (
        f"pytest-ipc started worker processes by fork while this process ran {running}. A fork child "
        "gets a copy of the forking thread only, and can deadlock on a lock one of the others held. "
        "Python warns at every such fork ('This process (pid=...) is multi-threaded, use of fork() may "
        "lead to deadlocks in the child.'); this one warning stands for all of pytest-ipc's forks in "
        "the session. Use the forkserver or spawn start method (--ipc-start-method=forkserver, or the "
        "ini key ipc_start_method), or stop the threads before the test starts workers."
    )


class ForkWarnings:
    """The fork warnings of one pytest session (``config.stash``): the first becomes a :class:`ForkWarning`."""

    def __init__(self) -> None:
        self.warned = False

    def warn_again(self, warned: Iterable[warnings.WarningMessage], at: tuple[str, int] | None = None) -> None:
        """Warn again what a fork of pytest-ipc's warned, Python's fork warnings as one ``ForkWarning``.

        The ``ForkWarning`` points at ``at`` (file, line), else at the code
        that called into pytest-ipc.  Raises what a warning filter makes of a
        warning, as a plain warning would.
        """
        for w in warned:
            if not is_fork_warning(w):
                _warn_explicit(w)
                continue
            if not _shown(w) or self.warned:
                continue
            # Marked once it was warned: a filter that makes it an error raises it at every fork.
            warning = ForkWarning(message(other_threads()))
            if at is None:
                _warn_at_caller(warning)
            else:
                warnings.warn_explicit(warning, ForkWarning, *at)
            self.warned = True


_warnings_key = pytest.StashKey[ForkWarnings]()


def for_config(config: pytest.Config) -> ForkWarnings:
    """The session's :class:`ForkWarnings`, made at its first use."""
    found = config.stash.get(_warnings_key, None)
    if found is None:
        found = config.stash[_warnings_key] = ForkWarnings()
    return found


def _warn_explicit(w: warnings.WarningMessage) -> None:
    warnings.warn_explicit(w.message, w.category, w.filename, w.lineno, source=w.source)


def _shown(w: warnings.WarningMessage) -> bool:
    """Would the current filters show ``w``?  Raises it if they make it an error."""
    with warnings.catch_warnings(record=True) as shown:  # the filters stay; only showing is replaced
        # A registry of its own: whether it was shown before does not count.
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno, registry={}, source=w.source)
    return bool(shown)


def _warn_at_caller(warning: Warning) -> None:
    """Warn ``warning`` at the first frame outside pytest-ipc and multiprocessing: the test's code."""
    if sys.version_info >= (3, 12):  # where the fork warning exists
        import multiprocessing

        skip = tuple(os.path.dirname(str(m.__file__)) + os.sep for m in (sys.modules["pytest_ipc"], multiprocessing))
        warnings.warn(warning, skip_file_prefixes=skip)
    else:
        warnings.warn(warning, stacklevel=3)

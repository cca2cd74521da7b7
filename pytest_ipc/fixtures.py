"""The IPC fixtures: context, shared values, pipes, fan-in queue, workers, Manager, outcome.

Every import of ``multiprocessing`` and of the worker launcher happens inside
the fixtures, so a session that uses none of them never pays for them.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Generator, Iterator
from typing import Any, NamedTuple, NoReturn

import pytest

from pytest_ipc import stash
from pytest_ipc.config import item_timeout, settings


class PipePair(NamedTuple):
    """Two connected ``Connection`` ends: ``parent, child = pipe_pair``.

    Duplex pipes talk both ways.  One-way pipes
    (``@pytest.mark.parametrize("pipe_pair", [False], indirect=True)``)
    have ``parent`` as the receiving end and ``child`` as the sending end,
    the usual shape of a worker reporting to the test.
    """

    parent: Any
    child: Any


def platform_default_start_method() -> str:
    import multiprocessing

    return multiprocessing.get_all_start_methods()[0]


def _bad_param(fixture: str, param: Any, why: str) -> NoReturn:
    __tracebackhide__ = True
    pytest.fail(f"{fixture}: bad indirect parameter {param!r}: {why}", pytrace=False)


# The typecodes of multiprocessing.sharedctypes; spelled out so that checking a
# parameter at collection does not import ctypes.
TYPECODES = frozenset("cubBhHiIlLqQfd")
_VALUE_KEYS = ("typecode", "value", "lock")
_NO_STRING_HINT = (
    " There is no string typecode: for text use Array('c', b'...') (bytes) or a Manager().Value(str, ...)."
)


def param_problem(fixture: str, param: Any) -> str | None:
    """Why ``param`` cannot configure ``fixture`` through indirect parametrization, or None.

    Used at collection (so a bad parameter is a collection error) and again
    at set-up (parameters passed by other means).
    """
    if fixture == "pipe_pair":
        return None if isinstance(param, bool) else "expected True (duplex) or False (one-way)"
    if isinstance(param, dict):
        unknown = set(param) - set(_VALUE_KEYS)
        if unknown:
            return f"unknown keys {sorted(unknown)} (use {', '.join(_VALUE_KEYS)})"
        if not isinstance(param.get("lock", True), bool):
            return f"lock must be True or False, got {param['lock']!r}"
        typecode = param.get("typecode", "i")
    elif isinstance(param, str):
        typecode = param
    elif isinstance(param, tuple) and len(param) == 2:
        typecode = param[0]
    else:
        return "expected a typecode, a (typecode, value) tuple, or a dict with typecode, value, lock"
    if isinstance(typecode, str) and typecode not in TYPECODES:
        hint = _NO_STRING_HINT if typecode == "s" else ""
        return f"unknown typecode {typecode!r} (one of {''.join(sorted(TYPECODES))} or a ctypes type).{hint}"
    if not isinstance(typecode, (str, type)):
        return f"the typecode must be a string such as 'i' or a ctypes type, got {typecode!r}"
    return None


@pytest.fixture
def ipc_start_method(request: pytest.FixtureRequest) -> str:
    """The start method of this test: fork, spawn or forkserver.

    From ``@pytest.mark.ipc_start_methods(...)``, else ``--ipc-start-method``,
    else the ini key ``ipc_start_method``, else the platform default.
    """
    method = settings(request.config).start_method
    if method is None or method == "all":
        return platform_default_start_method()
    return method


@pytest.fixture
def ipc_context(request: pytest.FixtureRequest, ipc_start_method: str) -> Any:
    """The ``multiprocessing`` context of the test's start method (skipped if unavailable)."""
    import multiprocessing

    if ipc_start_method not in multiprocessing.get_all_start_methods():
        pytest.skip(f"start method {ipc_start_method!r} is not available on this platform")
    from pytest_ipc._worker import lockstate

    # Before any fixture makes its locks: where each was made, for a hang's
    # deadlock report (lockstate binds its acquire as a lock is made).
    lockstate.install()
    if stash.current_run(request.node).jitter > 0:
        from pytest_ipc._worker import amplify

        # Before any fixture makes its objects: a Queue binds its pipe's
        # methods when it is made, and fork children inherit them bound.
        amplify.install()
    if ipc_start_method == "forkserver":
        preload_in_fork_server()  # again: the user's code may have set a list of its own since
    return multiprocessing.get_context(ipc_start_method)


# Worker targets usually live in test modules, which import pytest; every
# worker needs the launcher's bootstrap and, in a race run, amplification and
# the multiprocessing modules it patches.  Imported once in the fork server,
# its workers inherit them: ~10x faster starts than each importing them itself.
FORK_SERVER_PRELOAD = (
    "pytest",
    "pytest_ipc._worker.bootstrap",
    "pytest_ipc._worker.amplify",
    "multiprocessing.managers",
    "multiprocessing.shared_memory",
    "multiprocessing.sharedctypes",
    "multiprocessing.queues",
    "multiprocessing.synchronize",
)


def preload_in_fork_server() -> None:
    """Add pytest-ipc's modules to the fork server's preload list, keeping the user's.

    The list counts only when the fork server starts, which can be before
    the first ``ipc_context`` (a session fixture's ``Manager``): the plugin
    sets it once collection has found a test that uses it, before any
    fixture is set up, and ``ipc_context`` again.
    """
    import multiprocessing

    if "forkserver" not in multiprocessing.get_all_start_methods():
        return
    from multiprocessing import forkserver

    # The list is not public; without it, the default one.
    current = list(getattr(getattr(forkserver, "_forkserver", None), "_preload_modules", None) or ["__main__"])
    missing = [m for m in FORK_SERVER_PRELOAD if m not in current]
    if missing:
        forkserver.set_forkserver_preload(current + missing)


def _value_args(request: pytest.FixtureRequest, default: tuple[Any, ...]) -> tuple[Any, Any, bool]:
    __tracebackhide__ = True
    name = request.fixturename
    assert name is not None  # a fixture's own request
    param = getattr(request, "param", default)
    problem = param_problem(name, param)
    if problem is not None:
        _bad_param(name, param, problem)
    if isinstance(param, dict):
        return param.get("typecode", default[0]), param.get("value", default[1]), param.get("lock", True)
    if isinstance(param, str):
        return param, default[1], True
    return param[0], param[1], True


def _typecode_error(name: str, typecode: Any, value: Any, exc: Exception) -> NoReturn:
    __tracebackhide__ = True
    hint = _NO_STRING_HINT if typecode == "s" else ""
    pytest.fail(
        f"{name}: cannot make a shared {typecode!r} from {value!r}: {type(exc).__name__}: {exc}.{hint}",
        pytrace=False,
    )


@pytest.fixture
def shared_value(request: pytest.FixtureRequest, ipc_context: Any) -> Any:
    """A synchronized ``Value('i', 0)``; indirect param: typecode, (typecode, value) or a dict with lock."""
    return _shared(request, ipc_context.Value, "shared_value", ("i", 0))


@pytest.fixture
def shared_array(request: pytest.FixtureRequest, ipc_context: Any) -> Any:
    """A synchronized ``Array('i', 10)``; indirect param: typecode, (typecode, size_or_items) or a dict."""
    return _shared(request, ipc_context.Array, "shared_array", ("i", 10))


def _shared(request: pytest.FixtureRequest, make: Any, name: str, default: tuple[Any, ...]) -> Any:
    """``make(typecode, value_or_init, lock=...)`` from the fixture's indirect parameter, or a clear error."""
    typecode, value, lock = _value_args(request, default)
    try:
        return make(typecode, value, lock=lock)
    except (TypeError, ValueError, AttributeError, OverflowError) as exc:
        error = exc
    # Failing outside the except block keeps ctypes' own traceback out of the report.
    _typecode_error(name, typecode, value, error)


@pytest.fixture
def pipe_pair(request: pytest.FixtureRequest, ipc_context: Any) -> Iterator[PipePair]:
    """Two connected ``Connection`` ends, duplex unless parametrized with ``False``; closed at teardown."""
    duplex = getattr(request, "param", True)
    problem = param_problem("pipe_pair", duplex)
    if problem is not None:
        _bad_param("pipe_pair", duplex, problem)
    a, b = ipc_context.Pipe(duplex=duplex)
    try:
        yield PipePair(a, b)
    finally:
        a.close()
        b.close()


@pytest.fixture
def fanin_queue(request: pytest.FixtureRequest, ipc_context: Any) -> Iterator[Any]:
    """A real ``multiprocessing`` Queue with ``collect(producers=N)``; drained and closed at teardown."""
    from pytest_ipc._worker.queues import FanInQueue

    q = FanInQueue(ctx=ipc_context, timeout=item_timeout(request.node))
    try:
        yield q
    finally:
        q.shutdown()


@pytest.fixture
def ipc_workers(
    request: pytest.FixtureRequest, ipc_context: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Any]:
    """Starts worker processes: ``start(target, args=..., count=N)`` then ``join()``.

    Every failure of a child (exception, exit code, signal, segfault, hang)
    becomes a test failure that names the worker; nothing outlives the test.
    """
    from pytest_ipc import forkwarn
    from pytest_ipc.errors import WorkerError, WorkerTimeout
    from pytest_ipc.workers import IpcWorkers

    run = stash.current_run(request.node)
    # In an ipc_race run every worker of the test waits at one start gate
    # (pytest_ipc.gate), which opens at the latest when the test body returns.
    one_gate = stash.race_key in request.node.stash
    if one_gate:
        _open_gate_when_the_test_returns(request.config)
    workers = IpcWorkers(
        ipc_context,
        timeout=item_timeout(request.node),
        basetemp=str(tmp_path_factory.getbasetemp()),
        seed=run.seed,
        jitter=run.jitter,
        one_gate=one_gate,
        trace_dir=run.trace_dir,
        warn_again=forkwarn.for_config(request.config).warn_again,
    )
    request.node.stash[_gate_key] = workers._gate
    try:
        yield workers
    finally:
        complaints = workers.close()
        del request.node.stash[_gate_key]
        # A gate that never opened is the news whatever became of the test:
        # it is what made the test wait, or fail (reported with the call when it could be).
        if workers.gate_overdue and not workers._gate.reported:
            raise WorkerTimeout("\n".join([workers.gate_overdue, *complaints]))
        # Only a test that otherwise passed is blamed: after a failure or an
        # interrupt, workers left running are the consequence, not the news.
        if complaints and stash.call_passed(request.node):
            raise WorkerError("\n".join(complaints))


_gate_key = pytest.StashKey[Any]()


class GateHooks:
    """Opens the start gate of an ``ipc_race`` run when the test body returns or raises.

    A gate that had stayed shut until its deadline fails the call, naming the
    workers it held: when a hang ended the test (pytest-timeout), that is
    the report the user reads, with the hang's own error chained to it.
    """

    @pytest.hookimpl(wrapper=True)
    def pytest_pyfunc_call(self, pyfuncitem: pytest.Function) -> Generator[None, Any, Any]:
        __tracebackhide__ = True  # the failure is the test's: show its frames, not this hook's
        try:
            return (yield)
        finally:
            gate = pyfuncitem.stash.get(_gate_key, None)
            if gate is not None:
                gate.open("the test returned")
                if gate.overdue and not gate.reported:
                    gate.reported = True
                    from pytest_ipc.errors import WorkerTimeout

                    raise WorkerTimeout(gate.overdue)


def _open_gate_when_the_test_returns(config: pytest.Config) -> None:
    # Registered by the first ipc_race run that uses ipc_workers, not by the
    # plugin: a session without one never calls it.
    if not config.pluginmanager.has_plugin("pytest_ipc.gate"):
        config.pluginmanager.register(GateHooks(), "pytest_ipc.gate")


# sun_path, the longest AF_UNIX socket path: 108 bytes on Linux, 104 on macOS
# and the BSDs, terminating NUL included.
_UNIX_PATH_MAX = 104
# How long the Manager's server gets to exit after shutdown(), which has
# already waited, terminated and killed it if it had to.
_MANAGER_EXIT_GRACE = 5.0


def _fits(path: str) -> bool:
    return len(os.fsencode(path)) < _UNIX_PATH_MAX


def _manager_address(basetemp: str) -> tuple[Any, str | None]:
    """Where an ``ipc_manager`` listens, and the directory to remove afterwards (or None).

    An AF_UNIX socket in a new directory under pytest's ``basetemp``;
    ``tempfile.mkdtemp`` makes it mode 0o700, so no other user can even
    reach the socket.  When that path is too long for a socket address (a
    deep basetemp), multiprocessing's own private directory (``pymp-*`` under
    TMPDIR, also 0o700, removed when the process exits) holds it instead.
    Without AF_UNIX: loopback, any free port, never all interfaces.
    """
    import socket

    if not hasattr(socket, "AF_UNIX"):
        return ("127.0.0.1", 0), None
    from multiprocessing import connection

    directory = tempfile.mkdtemp(prefix="ipc-manager-", dir=basetemp)
    path = os.path.join(directory, "sock")
    if _fits(path):
        return path, directory
    os.rmdir(directory)
    fallback = connection.arbitrary_address("AF_UNIX")  # type: ignore[attr-defined]  # public, not in typeshed
    if _fits(fallback):
        return fallback, None
    pytest.fail(
        f"ipc_manager: no AF_UNIX socket path is short enough: {path!r} (under pytest's basetemp) and "
        f"{fallback!r} (multiprocessing's temporary directory, from TMPDIR) are both longer than the "
        f"{_UNIX_PATH_MAX - 1} bytes a socket path may have; set TMPDIR to a shorter directory",
        pytrace=False,
    )


def _start_manager(ctx: Any, address: Any, warn_again: Callable[[list[Any]], None]) -> tuple[Any, Any]:
    """Start a ``SyncManager`` of ``ctx`` at ``address``; return it and its server process.

    Under fork what the fork warned is warned again with ``warn_again``
    once the server runs, so that a filter that makes it an error ends it.
    """
    import multiprocessing
    import warnings
    from multiprocessing.managers import SyncManager

    # No authkey of its own: a proxy that arrives through a Queue or Pipe, or
    # from inside another proxy, authenticates with the receiving process's
    # key, so a per-manager key would make those proxies fail to connect.
    manager = SyncManager(address=address, ctx=ctx)
    before = set(multiprocessing.active_children())
    with warnings.catch_warnings(record=True) as warned:
        warnings.simplefilter("always")
        # The server creates its socket under a umask that leaves no group or
        # other bits, whatever the test process's umask.
        manager.start(initializer=os.umask, initargs=(0o077,))
    error: Warning | None = None
    try:
        warn_again(warned)
    except Warning as exc:  # a filter made the fork's warning an error: the server must not outlive it
        error = exc
    if error is not None:
        manager.shutdown()
        pytest.fail(
            f"ipc_manager: could not start the Manager under {ctx.get_start_method()!r}: "
            f"{type(error).__name__}: {error}",
            pytrace=False,
        )
    prefix = f"{type(manager).__name__}-"
    servers = [p for p in multiprocessing.active_children() if p not in before and p.name.startswith(prefix)]
    if len(servers) != 1:
        manager.shutdown()
        pytest.fail(
            f"ipc_manager: expected one new {prefix}* process after starting the Manager, found {servers}",
            pytrace=False,
        )
    return manager, servers[0]


def _stop_manager(manager: Any, server: Any) -> str | None:
    """Shut ``manager`` down and make sure its server process is gone; a complaint, or None."""
    manager.shutdown()  # a no-op if the test shut it down already
    server.join(_MANAGER_EXIT_GRACE)
    if server.exitcode is not None:
        return None
    server.kill()
    server.join(_MANAGER_EXIT_GRACE)
    return f"ipc_manager: the Manager's server process (pid {server.pid}) was still running after shutdown(); killed it"


@pytest.fixture
def ipc_manager(
    request: pytest.FixtureRequest, ipc_context: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Any]:
    """A started ``SyncManager`` of the test's start method; shut down, its process gone, at teardown.

    It listens on an AF_UNIX socket that only the current user can open
    (loopback where AF_UNIX is missing) and authenticates clients with the
    session's own random key (``multiprocessing.current_process().authkey``,
    which every worker inherits), so its proxies work when handed to workers
    as arguments, through a ``Queue`` or ``Pipe``, or nested in one another.
    """
    address, directory = _manager_address(str(tmp_path_factory.getbasetemp()))
    try:
        from pytest_ipc import forkwarn

        # A fixture's fork has no line of the test's own to point at: the test's definition.
        _, lineno, _ = request.node.location
        at = (str(request.node.path), (lineno or 0) + 1)
        fork_warnings = forkwarn.for_config(request.config)
        manager, server = _start_manager(ipc_context, address, lambda warned: fork_warnings.warn_again(warned, at))
        try:
            yield manager
        finally:
            complaint = _stop_manager(manager, server)
    finally:
        if directory is not None:
            shutil.rmtree(directory, ignore_errors=True)
    if complaint:
        pytest.fail(complaint, pytrace=False)


@pytest.fixture
def ipc_outcome(request: pytest.FixtureRequest) -> Any:
    """Records the outcome of this run of an ``ipc_race`` test: ``ipc_outcome.record(x)``."""
    return stash.current_run(request.node).outcome

"""One start gate for every worker of an ``ipc_race`` run.

In an ``ipc_race`` run the workers of every ``ipc_workers.start()`` call,
however many calls, wait at one gate and begin their bodies together.
``start()`` still returns once its workers are ready (at the gate).  The
gate opens at the first of:

- the test waiting on or talking to workers (from its thread, or a thread
  it started; not from ``multiprocessing``'s own threads, such as a Queue's
  feeder): ``ipc_workers.join()``, ``fanin_queue.collect()``, or a blocking
  call on a ``multiprocessing`` object (see :data:`_PATCHES`);
- the test body returning (or raising);
- ``ipc_workers.release()``;
- the gate's deadline, the test's ``ipc_timeout`` after its last
  ``start()``: the held workers then let themselves go (each worker waits
  at the gate only until that deadline), and the test fails naming
  them, since a test that neither waits nor returns for that long
  is waiting for its workers by a means the gate cannot see.

Workers started once the gate is open begin at once, as outside ``ipc_race``.
So a test that talks to its first worker before it starts the second never
deadlocks: the talk opens the gate.

The patches that see the test's waits are installed when the gate first
holds a worker and taken out when it opens; a patch that something else has
wrapped since stays, inert.  They act only in the process that armed the
gate (a fork child starts with them removed), not in ``multiprocessing``'s
own threads, and not inside its own traffic (starting a process, a
Manager's connections), so a test without ``ipc_race`` never meets them.
"""

from __future__ import annotations

import contextlib
import os
import queue
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from pytest_ipc._worker.protocol import write_gate_deadline

# The gate that holds workers now, in this process; None otherwise.
_armed: StartGate | None = None
# The thread that armed it: the test's.
_ident: int | None = None


class _Quiet(threading.local):
    # > 0 while this thread is inside multiprocessing's (or pytest-ipc's) own traffic.
    depth = 0


_quiet = _Quiet()

# Threads of multiprocessing's own (a Queue's feeder, a Pool's handlers, a
# ProcessPoolExecutor's manager): their traffic is not the test waiting.
_OWN_THREADS = ("multiprocessing.", "concurrent.futures.")


def _is_own_thread(thread: threading.Thread) -> bool:
    target = getattr(thread, "_target", None)
    module = getattr(target, "__module__", None) or type(thread).__module__
    return module.startswith(_OWN_THREADS)


def _named(wrapper: Callable[..., Any], func: Any) -> Callable[..., Any]:
    """``wrapper`` under ``func``'s names.  No ``__wrapped__``: amplification takes that for its own mark."""
    for attr in ("__module__", "__name__", "__qualname__", "__doc__"):
        try:
            setattr(wrapper, attr, getattr(func, attr))
        except AttributeError:
            pass
    return wrapper


class StartGate:
    """The gate of one ``ipc_workers`` fixture: one go pipe, one byte per worker let through.

    Outside ``ipc_race`` (``hold`` False) it is always open, with a go pipe
    for each ``start()``: the per-call start barrier.
    """

    def __init__(self, ctx: Any, timeout: float, hold: bool, workdir: str) -> None:
        self._ctx = ctx
        self._workdir = workdir  # where the held workers find the deadline, as start() moves it
        self.timeout = timeout
        self.hold = hold  # False outside ipc_race: each start() lets its own workers go
        self.is_open = not hold
        self.opened_by: str | None = None
        self.deadline: float | None = None
        self.overdue: str | None = None  # the complaint, once the deadline passed with workers held
        self.reported = False  # the complaint has failed the test's call already
        self._go: tuple[Any, Any] | None = None  # (read end, write end)
        self._held: list[str] = []  # labels of the workers held now
        self._owed = 0  # bytes to write when it opens
        self._lock = threading.Lock()

    # -- what start() uses ------------------------------------------------

    def go_end(self) -> Any:
        """The read end of the go pipe, which every worker's spec carries; a start() begins.

        While the gate is shut, each start() moves its deadline on to
        ``ipc_timeout`` from now: a test that is still starting workers is
        not idle, however long its starting takes.
        """
        if not self.hold:
            # Outside ipc_race a pipe of its own for each start(), as the
            # barrier always had: a later call's worker cannot take a byte
            # meant for an earlier call's and begin before it.
            self._close_pipe()
        if self._go is None:
            self._go = self._ctx.Pipe(duplex=False)
        if self.hold and not self.is_open:
            self.deadline = time.monotonic() + self.timeout
            write_gate_deadline(self._workdir, self.deadline)
        return self._go[0]

    def worker_deadline(self) -> float | None:
        """Until when (monotonic) a worker waits at the gate; None: fail at its own timeout."""
        return self.deadline if self.hold else None

    def let_in(self, labels: list[str]) -> None:
        """These workers are ready at the gate: let them go now if it is open, else hold them."""
        with self._lock:
            if not self.is_open and self.deadline is not None and time.monotonic() >= self.deadline:
                self._open_locked("the deadline")
            if self.is_open:
                self._write(len(labels))
                if not self.hold:
                    self._close_pipe()
                return
            self._held.extend(labels)
            self._owed += len(labels)
            _arm(self)  # under the lock: a thread opening the gate meanwhile disarms after this

    # -- opening ----------------------------------------------------------

    def open(self, why: str) -> None:
        """Let every held worker go, and those started from now on at once."""
        if self.is_open:
            return
        with self._lock:
            self._open_locked(why)

    def _open_locked(self, why: str) -> None:
        if self.is_open:
            return
        self.is_open = True
        self.opened_by = why
        if self._held and self.deadline is not None and time.monotonic() >= self.deadline:
            held_for = time.monotonic() - (self.deadline - self.timeout)
            self.overdue = (
                f"the start gate was still closed {held_for:.1f}s after the last ipc_workers.start() "
                f"(ipc_timeout {self.timeout:g}s): {', '.join(self._held)} "
                f"{'was' if len(self._held) == 1 else 'were'} held there, because "
                "the test had neither waited on them, talked to them nor returned; they let themselves "
                "go at the timeout. A test that waits for its workers by a means pytest-ipc does not "
                "see (a shared Value or Array polled in a loop, a file, a socket) must "
                "call ipc_workers.release() before it waits"
            )
        owed, self._owed = self._owed, 0
        self._held = []
        self._write(owed)
        _disarm(self)

    def _write(self, count: int) -> None:
        if count <= 0 or self._go is None:
            return
        data = memoryview(b"g" * count)
        fd = self._go[1].fileno()
        while data:
            data = data[os.write(fd, data) :]

    def close(self) -> str | None:
        """Open it (the test is over), close the pipe; the complaint of an overdue gate, if any."""
        self.open("teardown")
        _disarm(self)
        self._close_pipe()
        return self.overdue

    def _close_pipe(self) -> None:
        if self._go is not None:
            for conn in self._go:
                conn.close()
            self._go = None


# -- the patches that see the test's waits -------------------------------


def _acts() -> StartGate | None:
    """The armed gate, when the caller is the test (its own thread, or one it started) outside
    multiprocessing's own traffic."""
    gate = _armed
    if gate is None or _quiet.depth:
        return None
    if threading.get_ident() != _ident and _is_own_thread(threading.current_thread()):
        return None
    return gate


def _opens(why: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """A wrapper that opens the gate before the call."""

    def wrap(func: Callable[..., Any]) -> Callable[..., Any]:
        def opens(*args: Any, **kwargs: Any) -> Any:
            gate = _acts()
            if gate is not None:
                gate.open(why)
            return func(*args, **kwargs)

        return _named(opens, func)

    return wrap


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Inside, the test's thread does pytest-ipc's own traffic (a start()'s ready pipe): no opening."""
    _quiet.depth += 1
    try:
        yield
    finally:
        _quiet.depth -= 1


def _quietly(func: Callable[..., Any]) -> Callable[..., Any]:
    """A wrapper inside which the Connection patches stay quiet: multiprocessing's own traffic."""

    def quietly(*args: Any, **kwargs: Any) -> Any:
        if _armed is None:
            return func(*args, **kwargs)
        _quiet.depth += 1
        try:
            return func(*args, **kwargs)
        finally:
            _quiet.depth -= 1

    return _named(quietly, func)


def _poll(func: Callable[..., Any]) -> Callable[..., Any]:
    """``Connection.poll``: a blocking poll opens the gate; a zero-timeout one that finds nothing too."""

    def poll(self: Any, timeout: float | None = 0.0) -> Any:
        gate = _acts()
        if gate is None:
            return func(self, timeout)
        if timeout is not None and timeout <= 0:
            found = func(self, timeout)
            if not found:
                gate.open("a Connection.poll() that found nothing")
            return found
        gate.open("Connection.poll()")
        return func(self, timeout)

    return _named(poll, func)


def _queue_get(func: Callable[..., Any]) -> Callable[..., Any]:
    """``Queue.get``: a blocking get opens the gate; a non-blocking one that finds nothing too."""

    def get(self: Any, block: bool = True, timeout: float | None = None) -> Any:
        gate = _acts()
        if gate is None:
            return func(self, block, timeout)
        if block:
            gate.open("Queue.get()")
            return func(self, block, timeout)
        try:
            return func(self, False)
        except queue.Empty:
            gate.open("a Queue.get_nowait() that found nothing")
            raise

    return _named(get, func)


def _gated_acquire(real: Callable[..., Any]) -> Callable[..., Any]:
    def acquire(block: bool = True, timeout: float | None = None) -> Any:
        gate = _acts()
        if gate is None or not block:
            return real(block, timeout)  # a try (Condition.notify()'s among them) waits for no one
        if real(False):
            return True
        gate.open("a Lock/Semaphore acquire() that would block")
        return real(block, timeout)

    return acquire  # made at each lookup while armed: left unnamed, to stay cheap


class _AcquireOf:
    """``SemLock.acquire`` while a gate is armed.

    A ``Lock``'s ``acquire`` is an instance attribute (``_make_methods``), out
    of a class patch's reach; a data descriptor on the class comes before it.
    """

    def __get__(self, obj: Any, owner: Any = None) -> Any:
        if obj is None:
            return self
        real = obj.__dict__.get("acquire") or obj._semlock.acquire
        return real if _acts() is None else _gated_acquire(real)

    def __set__(self, obj: Any, value: Any) -> None:
        obj.__dict__["acquire"] = value


def _lock_enter(func: Callable[..., Any]) -> Callable[..., Any]:
    """``with lock:``: opens the gate when it would block."""

    def __enter__(self: Any) -> Any:
        gate = _acts()
        if gate is not None:
            semlock = self._semlock
            if semlock.acquire(False):
                semlock.release()
            else:
                gate.open("a `with lock:` that would block")
        return func(self)

    return _named(__enter__, func)


# Manager proxy methods that wait for another process.
_BLOCKING_PROXY_CALLS = frozenset({"get", "wait", "wait_for", "join", "acquire", "__enter__"})


def _callmethod(func: Callable[..., Any]) -> Callable[..., Any]:
    """A Manager proxy's call: a blocking one opens the gate; its own connection stays quiet."""
    quiet = _quietly(func)

    def _callmethod(self: Any, methodname: str, args: tuple[Any, ...] = (), kwds: Any = None) -> Any:
        gate = _acts()
        if gate is not None and methodname in _BLOCKING_PROXY_CALLS:
            blocking = (args[0] if args else (kwds or {}).get("block", (kwds or {}).get("blocking", True))) is not False
            if blocking:
                gate.open(f"a Manager proxy's {methodname}()")
        return quiet(self, methodname, args, kwds or {})

    return _named(_callmethod, func)


# (module, attribute path, wrapper maker).  The module must be imported already for its patch.
_PATCHES: tuple[tuple[str, str, Callable[[Callable[..., Any]], Callable[..., Any]]], ...] = (
    ("multiprocessing.connection", "_ConnectionBase.send", _opens("Connection.send()")),
    ("multiprocessing.connection", "_ConnectionBase.send_bytes", _opens("Connection.send_bytes()")),
    ("multiprocessing.connection", "_ConnectionBase.recv", _opens("Connection.recv()")),
    ("multiprocessing.connection", "_ConnectionBase.recv_bytes", _opens("Connection.recv_bytes()")),
    ("multiprocessing.connection", "_ConnectionBase.recv_bytes_into", _opens("Connection.recv_bytes_into()")),
    ("multiprocessing.connection", "_ConnectionBase.poll", _poll),
    ("multiprocessing.connection", "wait", _opens("multiprocessing.connection.wait()")),
    ("multiprocessing.connection", "answer_challenge", _quietly),
    ("multiprocessing.connection", "deliver_challenge", _quietly),
    ("multiprocessing.queues", "Queue.get", _queue_get),
    ("multiprocessing.synchronize", "SemLock.__enter__", _lock_enter),
    ("multiprocessing.synchronize", "Condition.wait", _opens("Condition.wait()")),
    ("multiprocessing.process", "BaseProcess.join", _opens("Process.join()")),
    ("multiprocessing.process", "BaseProcess.start", _quietly),
    ("multiprocessing.managers", "BaseProxy._callmethod", _callmethod),
    ("multiprocessing.managers", "dispatch", _quietly),
    ("multiprocessing.managers", "BaseManager.start", _quietly),
    ("multiprocessing.managers", "BaseManager.connect", _quietly),
)

# What is installed now: (owner, name, what was there, the wrapper; None: there was nothing).
_installed: list[tuple[Any, str, Any, Any]] = []


def _owner_of(module: Any, path: str) -> tuple[Any, str]:
    *owners, name = path.split(".")
    owner = module
    for part in owners:
        owner = getattr(owner, part)
    return owner, name


def _arm(gate: StartGate) -> None:
    global _armed, _ident
    if _armed is gate:
        return
    _disarm(None)  # another fixture's gate (a nested pytester session): it is not the test's now
    _armed, _ident = gate, threading.get_ident()
    for module_name, path, wrap in _PATCHES:
        module = sys.modules.get(module_name)
        if module is None:
            continue  # nothing of it exists yet to wait on
        owner, name = _owner_of(module, path)
        current = owner.__dict__.get(name)
        if current is None:
            continue
        if isinstance(current, (staticmethod, classmethod)):
            continue  # none of the patched names is one; a Python that made it so keeps its own
        wrapper = wrap(current)
        setattr(owner, name, wrapper)
        _installed.append((owner, name, current, wrapper))
    synchronize = sys.modules.get("multiprocessing.synchronize")
    if synchronize is not None and "acquire" not in synchronize.SemLock.__dict__:
        descriptor = _AcquireOf()
        synchronize.SemLock.acquire = descriptor
        _installed.append((synchronize.SemLock, "acquire", None, descriptor))


def _disarm(gate: StartGate | None) -> None:
    """Take the patches out (those wrapped again since stay, inert); ``gate``: only if it is the armed one."""
    global _armed, _ident
    if gate is not None and _armed is not gate:
        return
    _armed, _ident = None, None
    while _installed:
        owner, name, previous, wrapper = _installed.pop()
        if owner.__dict__.get(name) is not wrapper:
            continue  # wrapped again since: left in place, inert now
        if previous is None:
            delattr(owner, name)
        else:
            setattr(owner, name, previous)


def _in_fork_child() -> None:
    # A fork child (a worker, or a process the test starts) has nothing to open.
    _disarm(None)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_in_fork_child)


def release_current(why: str) -> None:
    """Open the armed gate, if any (``fanin_queue.collect()`` and the like)."""
    gate = _armed
    if gate is not None:
        gate.open(why)

"""Race amplification: seeded preemption points at the IPC boundaries.

Inside a worker of an ``ipc_race`` run, every synchronized ``Value``/``Array``
read and write, ``Lock``/``RLock`` entry and exit, ``Queue.put``/``get``,
``Connection.send``/``recv``, ``Manager`` proxy call, ``SharedMemory.buf``
access and ``Process.start`` passes a preemption point.  At each point the
worker, with probability ``p``, gives up the CPU (``os.sched_yield``) or
sleeps a few hundred microseconds.  A yield between the read and the write of
``v.value += 1`` is exactly the interleaving that loses an update, so a race
that plain repetition shows once in many runs shows in the first.

The choices come from a ``random.Random`` seeded with the run's seed and the
worker's index: the same ``--ipc-seed`` gives every worker the same sequence
of choices (the operating system's scheduling still varies).  A point only
ever yields or sleeps, so correct code behaves exactly as without it.

The patches are made on the classes, so they reach objects that the code
under test creates itself as well as the fixtures' objects.  Processes that
the code in a worker starts with ``multiprocessing`` get amplification too:
their target is wrapped so that it switches it on in the child with a seed of
its own (this works under fork, spawn and forkserver, for any ``Process``
with a ``target``; a ``Process`` subclass that overrides ``run`` is reached
under fork only, through the inherited patches).  ``RawValue``/``RawArray``
and plain ``ctypes`` objects have no Python-level hook and get no points;
``SharedMemory`` gets one when ``.buf`` is fetched, not per byte.

No pytest here: this runs in worker processes.
"""

from __future__ import annotations

import os
import random
import time
from typing import Any, Callable

# The longest sleep at a preemption point.  Long enough for another worker
# on the other core to get through a critical section, short enough that a
# race-free scenario keeps its speed.
MAX_SLEEP = 0.0002
# Share of acting points that sleep rather than yield.
SLEEP_SHARE = 0.5

_seed = 0
_children = 0
_child_p = 0.0  # the probability handed on to processes this one starts
_installed = False


class Amplifier:
    """The per-worker stream of choices: deterministic for a (seed, index)."""

    def __init__(self, seed: int, index: int, p: float) -> None:
        self.rng = random.Random(f"pytest-ipc:{seed}:{index}")
        self.p = p

    def choose(self) -> float | None:
        """None: go on; 0.0: yield the CPU; > 0: sleep that many seconds."""
        rng = self.rng
        if rng.random() >= self.p:
            return None
        if rng.random() < SLEEP_SHARE:
            return rng.random() * MAX_SLEEP
        return 0.0


_amp: Amplifier | None = None


def point() -> None:
    """A preemption point: maybe yield or sleep, by the worker's stream."""
    amp = _amp
    if amp is None:
        return
    choice = amp.choose()
    if choice is None:
        return
    if choice == 0.0:
        os.sched_yield()
    else:
        time.sleep(choice)


def activate(seed: int, index: int, p: float) -> None:
    """Switch amplification on in this process (a worker, after the start barrier)."""
    global _amp
    hand_on(seed, p)
    _amp = Amplifier(seed, index, p) if p > 0 else None


def hand_on(seed: int, p: float) -> None:
    """Amplify the processes this process starts, not this process itself.

    The test process uses this during an ``ipc_race`` run, so that code
    under test that starts its own ``Process`` objects is reached too.
    """
    global _seed, _children, _child_p
    install()
    _seed, _children, _child_p = seed, 0, p


def deactivate() -> None:
    global _amp, _child_p
    _amp = None
    _child_p = 0.0


def is_active() -> bool:
    return _amp is not None


class Amplified:
    """A ``Process`` target that switches amplification on in its own process first."""

    def __init__(self, target: Callable[..., Any], seed: int, index: int, p: float) -> None:
        self.target = target
        self.seed = seed
        self.index = index
        self.p = p

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        # Its own children get seeds of their own, derived from its stream's key.
        activate(int(random.Random(f"{self.seed}:{self.index}").getrandbits(32)), self.index, self.p)
        return self.target(*args, **kwargs)


def _wrap_after(func: Callable[..., Any]) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        result = func(*args, **kwargs)
        point()
        return result

    wrapper.__wrapped__ = func  # type: ignore[attr-defined]
    return wrapper


def _wrap_before(func: Callable[..., Any]) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        point()
        return func(*args, **kwargs)

    wrapper.__wrapped__ = func  # type: ignore[attr-defined]
    return wrapper


def _wrap_around(func: Callable[..., Any]) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        point()
        result = func(*args, **kwargs)
        point()
        return result

    wrapper.__wrapped__ = func  # type: ignore[attr-defined]
    return wrapper


def _patch(cls: type, name: str, wrap: Callable[[Callable[..., Any]], Callable[..., Any]]) -> None:
    original = cls.__dict__.get(name)
    if original is None or hasattr(original, "__wrapped__"):
        return
    setattr(cls, name, wrap(original))


def _patch_property(cls: type, name: str) -> None:
    prop = cls.__dict__.get(name)
    if not isinstance(prop, property) or getattr(prop.fget, "__wrapped__", None):
        return
    fget, fset = prop.fget, prop.fset
    # A point after the read and one before the write: both fall inside
    # the window of ``v.value += 1``, which is where updates get lost.
    setattr(cls, name, property(_wrap_after(fget), _wrap_before(fset) if fset else None, prop.fdel, prop.__doc__))


def _start(original: Callable[..., Any]) -> Callable[..., Any]:
    def start(self: Any) -> Any:
        global _children
        target = getattr(self, "_target", None)
        if (
            _child_p > 0
            and target is not None
            and not isinstance(target, Amplified)
            # ipc_workers' own workers switch it on themselves, with their index.
            and getattr(target, "__module__", None) != "pytest_ipc._child"
        ):
            _children += 1
            self._target = Amplified(target, _seed, _children, _child_p)
        return original(self)

    start.__wrapped__ = original  # type: ignore[attr-defined]
    return start


def install() -> None:
    """Patch the multiprocessing classes once per process; a no-op while inactive."""
    global _installed
    if _installed:
        return
    _installed = True
    from multiprocessing import connection, managers, process, queues, sharedctypes, synchronize

    _patch_property(sharedctypes.Synchronized, "value")
    for name in ("__getitem__", "__getslice__"):
        _patch(sharedctypes.SynchronizedArray, name, _wrap_after)
    for name in ("__setitem__", "__setslice__"):
        _patch(sharedctypes.SynchronizedArray, name, _wrap_before)
    _patch(synchronize.SemLock, "__enter__", _wrap_before)
    _patch(synchronize.SemLock, "__exit__", _wrap_after)
    _patch(queues.Queue, "put", _wrap_before)
    _patch(queues.Queue, "get", _wrap_after)
    _patch(connection._ConnectionBase, "send", _wrap_before)
    _patch(connection._ConnectionBase, "send_bytes", _wrap_before)
    _patch(connection._ConnectionBase, "recv", _wrap_after)
    _patch(connection._ConnectionBase, "recv_bytes", _wrap_after)
    _patch(managers.BaseProxy, "_callmethod", _wrap_around)
    _patch(process.BaseProcess, "start", _start)
    try:
        from multiprocessing import shared_memory
    except ImportError:  # pragma: no cover - always there on 3.8+
        return
    _patch_property(shared_memory.SharedMemory, "buf")

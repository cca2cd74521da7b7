"""The IPC points: patches of the ``multiprocessing`` classes, each a preemption point.

Every synchronized ``Value``/``Array`` read and write, ``Lock``/``RLock``
entry and exit, ``Queue.put``/``get``, ``Connection.send``/``recv``,
``Manager`` proxy call and ``SharedMemory.buf`` fetch passes a point
(:func:`.stream.point`).  The patches are made on the classes, so they reach
objects that the code under test creates itself as well as the fixtures'
objects.  Each module is patched when it is imported (:mod:`.lazy`), so a
worker pays only for the modules it uses.

Processes that this process starts (``Process(target=...)``, a subclass
that overrides ``run``) get amplification too, through the start patch
(:mod:`..startpatch`): a :class:`ChildAmplify` layer switches it on in the
child with a seed of its own, under fork, spawn and forkserver.
"""

from __future__ import annotations

import functools
import os
import random
import time
from collections.abc import Callable
from types import ModuleType
from typing import Any

from pytest_ipc._worker import lazy, startpatch, trace
from pytest_ipc._worker.amplify import codepoints, locks, stream
from pytest_ipc._worker.amplify.stream import point, thread_start

Guard = Callable[[Any], bool]

# ``guarded``, where given, is asked about the method's ``self``: see point().


def _wrap_after(
    func: Callable[..., Any], on_result: Callable[[Any], None] | None = None, guarded: Guard | None = None
) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        result = func(*args, **kwargs)
        if on_result is not None:
            on_result(result)
        point(guarded, args[0])
        return result

    wrapper.__wrapped__ = func  # type: ignore[attr-defined]  # marks it patched, as functools.wraps does
    return wrapper


def _wrap_before(func: Callable[..., Any], guarded: Guard | None = None) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        point(guarded, args[0])
        return func(*args, **kwargs)

    wrapper.__wrapped__ = func  # type: ignore[attr-defined]  # marks it patched
    return wrapper


def _feeder(feed: Callable[..., Any]) -> Callable[..., Any]:
    def _feed(*args: Any, **kwargs: Any) -> Any:
        thread_start()
        return feed(*args, **kwargs)

    _feed.__wrapped__ = feed  # type: ignore[attr-defined]  # marks it patched
    return _feed


def _patch(cls: type, name: str, wrap: Callable[[Callable[..., Any]], Callable[..., Any]]) -> None:
    original = cls.__dict__.get(name)
    if original is None or hasattr(original, "__wrapped__"):
        return
    setattr(cls, name, wrap(original))


def _lock_init(init: Callable[..., Any]) -> Callable[..., Any]:
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        self._ipc_pid = os.getpid()  # see locks.shared()

    __init__.__wrapped__ = init  # type: ignore[attr-defined]  # marks it patched
    return __init__


def _lock_enter(enter: Callable[..., Any]) -> Callable[..., Any]:
    def __enter__(self: Any) -> Any:
        point(locks.holds, self)  # quiet if it is taken again: then it is no boundary
        result = enter(self)
        if stream._amp is not None and locks.shared(self):
            if not locks.shared_held:  # the outermost section: its reads and writes are counted anew
                locks.entered_section()
            locks.shared_held.append(self)
        return result

    __enter__.__wrapped__ = enter  # type: ignore[attr-defined]  # marks it patched
    return __enter__


def _lock_exit(exit_: Callable[..., Any]) -> Callable[..., Any]:
    def __exit__(self: Any, *args: Any) -> Any:
        try:
            locks.shared_held.remove(self)
            checked = not locks.shared_held and locks.left_checking()
        except ValueError:  # a lock of this process's own, or entered before amplification began
            checked = False
        result = exit_(self, *args)
        if checked:
            stream.point_after_check(locks.holds, self)
        else:
            point(locks.holds, self)
        return result

    __exit__.__wrapped__ = exit_  # type: ignore[attr-defined]  # marks it patched
    return __exit__


# Inside a critical section of a lock that other workers share, a sleep only
# makes them queue for it: on the locked counter such points were most of
# amplification's cost.  So some points stay quiet there, where being quiet
# hides no race:
# - a synchronized Value/Array's, while its own lock is held: a worker that
#   reads and writes it without that lock has points of its own;
# - a lock's, while it is already held (an RLock entered again, as a
#   synchronized Array's accessors do under ``with a.get_lock()``).
# And code points act at a quarter of their rate under a lock shared with
# other processes (see CodePoints.act).


def _patch_sharedctypes(module: ModuleType) -> None:
    _patch(module.SynchronizedBase, "__init__", _noting_creation)
    for name in ("RawValue", "RawArray"):
        if not hasattr(getattr(module, name), "__wrapped__"):
            setattr(module, name, _noting_made(getattr(module, name)))
    prop = module.Synchronized.__dict__.get("value")
    if isinstance(prop, property) and prop.fget and prop.fset and not hasattr(prop.fget, "__wrapped__"):
        # A point after the read and one before the write (both inside the window of
        # ``v.value += 1``), and the trace of a diagnostic run.
        module.Synchronized.value = property(
            _traced(prop.fget, trace.value_get, after=True), _traced(prop.fset, trace.value_set), None, prop.__doc__
        )
    array = module.SynchronizedArray
    _patch(array, "__getitem__", functools.partial(_traced, traced=trace.item_get, after=True))
    _patch(array, "__setitem__", functools.partial(_traced, traced=trace.item_set))
    _patch(array, "__getslice__", functools.partial(_wrap_after, guarded=locks.holds_own_lock))
    _patch(array, "__setslice__", functools.partial(_wrap_before, guarded=locks.holds_own_lock))


def _traced(func: Callable[..., Any], traced: Callable[..., Any], after: bool = False) -> Callable[..., Any]:
    """A synchronized accessor with its point (after a read, before a write) that a traced run records."""

    def wrapper(self: Any, *args: Any) -> Any:
        if not after:
            locks.section.wrote = True
            point(locks.holds_own_lock, self)
        result = func(self, *args) if trace.events is None else traced(self, *args)
        if after:
            locks.section.read = True
            point(locks.holds_own_lock, self)
        return result

    wrapper.__wrapped__ = func  # type: ignore[attr-defined]  # marks it patched
    return wrapper


def _noting_made(make: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(make)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        obj = make(*args, **kwargs)
        trace.note_creation(obj)  # where the user made it, for a diagnostic run's report
        return obj

    return wrapper


def _noting_creation(init: Callable[..., Any]) -> Callable[..., Any]:
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        trace.note_creation(self)  # where the user made it, for a diagnostic run's report

    __init__.__wrapped__ = init  # type: ignore[attr-defined]  # marks it patched
    return __init__


def _patch_synchronize(module: ModuleType) -> None:
    from pytest_ipc._worker import lockstate

    lockstate.patch(module)  # first: these wrap its methods, which take and note the lock
    _patch(module.SemLock, "__init__", _lock_init)
    # Lock, RLock and BoundedSemaphore have an __enter__ of their own (lockstate's).
    for cls in (module.SemLock, module.Lock, module.RLock, module.BoundedSemaphore):
        _patch(cls, "__enter__", _lock_enter)
    _patch(module.SemLock, "__exit__", _lock_exit)


def _patch_queues(module: ModuleType) -> None:
    queue = module.Queue
    feed = queue.__dict__["_feed"].__func__
    if not hasattr(feed, "__wrapped__"):
        queue._feed = staticmethod(_feeder(feed))
    _patch(queue, "__init__", _noting_creation)
    _patch(queue, "put", _queue_put)
    _patch(queue, "get", _queue_get)
    _patch(queue, "empty", _queue_empty)


def _queue_put(put: Callable[..., Any]) -> Callable[..., Any]:
    def wrapper(self: Any, obj: Any, *args: Any, **kwargs: Any) -> Any:
        point(None, self)
        if trace.events is None:
            return put(self, obj, *args, **kwargs)
        began = time.monotonic_ns()
        result = put(self, obj, *args, **kwargs)
        trace.queue_op(self, "put", obj, began)
        return result

    wrapper.__wrapped__ = put  # type: ignore[attr-defined]  # marks it patched
    return wrapper


def _queue_get(get: Callable[..., Any]) -> Callable[..., Any]:
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        result = get(self, *args, **kwargs)
        if trace.events is not None:
            trace.queue_op(self, "get", result)
        point(None, self)
        return result

    wrapper.__wrapped__ = get  # type: ignore[attr-defined]  # marks it patched
    return wrapper


def _queue_empty(empty: Callable[..., Any]) -> Callable[..., Any]:
    # No point: only a traced run's record of what empty() answered.
    def wrapper(self: Any) -> Any:
        result = empty(self)
        if trace.events is not None:
            trace.queue_op(self, "empty", result)
        return result

    wrapper.__wrapped__ = empty  # type: ignore[attr-defined]  # marks it patched
    return wrapper


def _patch_connection(module: ModuleType) -> None:
    base = module._ConnectionBase
    _patch(base, "send", _wrap_before)
    _patch(base, "send_bytes", _wrap_before)
    _patch(base, "recv", _wrap_after)
    _patch(base, "recv_bytes", _wrap_after)


def _patch_managers(module: ModuleType) -> None:
    _patch(module.BaseProxy, "_callmethod", _proxy_call)
    _patch(module.BaseProxy, "__init__", _noting_creation)


def _proxy_call(func: Callable[..., Any]) -> Callable[..., Any]:
    """A proxy call between two points; a traced run records the values it reads and writes."""

    def _callmethod(self: Any, methodname: str, args: tuple[Any, ...] = (), kwds: Any = None) -> Any:
        point()
        if trace.events is None:
            result = func(self, methodname, args, kwds or {})
        else:
            result = trace.proxy_call(self, methodname, args, lambda: func(self, methodname, args, kwds or {}))
        point()
        return result

    _callmethod.__wrapped__ = func  # type: ignore[attr-defined]  # marks it patched
    return _callmethod


def _patch_shared_memory(module: ModuleType) -> None:
    cls = module.SharedMemory
    if not getattr(cls.__init__, "_ipc_notes", False):  # over the leak check's own patch (shmlog), if made
        cls.__init__ = _noting_made_memory(cls.__init__)
    prop = cls.__dict__.get("buf")
    if not isinstance(prop, property) or prop.fget is None or hasattr(prop.fget, "__wrapped__"):
        return
    fget = prop.fget

    def buf(self: Any) -> Any:
        result = fget(self)
        _buf_fetched(result)
        point(None, self)
        return result if trace.events is None else trace.shared_buffer(self, result)

    buf.__wrapped__ = fget  # type: ignore[attr-defined]  # marks it patched
    cls.buf = property(buf, prop.fset, prop.fdel, prop.__doc__)


def _noting_made_memory(init: Callable[..., Any]) -> Callable[..., Any]:
    # Where a SharedMemory was created (create=True), not where one was attached by name.
    def __init__(self: Any, name: Any = None, create: bool = False, *args: Any, **kwargs: Any) -> None:
        init(self, name, create, *args, **kwargs)
        if create:
            trace.note_creation(self)

    __init__.__wrapped__ = init  # type: ignore[attr-defined]  # as functools.wraps does
    __init__._ipc_notes = True  # type: ignore[attr-defined]  # marks it patched
    return __init__


def _buf_fetched(buf: Any) -> None:
    # The one hook a SharedMemory has: its buffer is about to be used.
    if codepoints.due is not None:
        codepoints.on_demand()


# The modules whose classes have points, and their patches.  The fork
# server preloads them (see pytest_ipc.fixtures.FORK_SERVER_PRELOAD), so
# that its workers inherit them imported.
PATCHES: dict[str, Callable[[ModuleType], None]] = {
    "multiprocessing.sharedctypes": _patch_sharedctypes,
    "multiprocessing.synchronize": _patch_synchronize,
    "multiprocessing.queues": _patch_queues,
    "multiprocessing.connection": _patch_connection,
    "multiprocessing.managers": _patch_managers,
    "multiprocessing.shared_memory": _patch_shared_memory,
}

_installed = False


def install() -> None:
    """Patch the multiprocessing classes, each as its module is imported; once per process.

    The patched methods pass their points only while amplification is on.
    """
    global _installed
    if _installed:
        return
    _installed = True
    os.register_at_fork(after_in_child=locks.shared_held.clear)  # the parent's locks are not held here
    for name, patch in PATCHES.items():
        lazy.when_imported(name, patch)
    startpatch.add_hook(_layer_for)


# What this process hands on to the processes it starts (see hand_on()).
_seed = 0
_children = 0
_child_p = 0.0
_child_trace: str | None = None


def hand_on(seed: int, p: float, trace_dir: str | None = None) -> None:
    """Amplify the processes this process starts from now on, with seeds derived from ``seed``.

    With ``trace_dir``, they are traced as well (see :mod:`..trace`), into it.
    """
    global _seed, _children, _child_p, _child_trace
    install()
    _seed, _children, _child_p, _child_trace = seed, 0, p, trace_dir


def _layer_for(proc: Any) -> ChildAmplify | None:
    """The layer of the next child this process starts, numbered in start order."""
    global _children
    if _child_p <= 0 and _child_trace is None:
        return None
    _children += 1
    return ChildAmplify(_seed, _children, _child_p, _child_trace)


class ChildAmplify:
    """The layer (see :mod:`..startpatch`) that switches amplification on in a child.

    In a spawn or forkserver child the patches are installed as the layer is
    unpickled, before the work's module is imported.  For a ``Process``
    subclass's own ``run``, though, the child imports the subclass's module
    as it unpickles the process, before the layer: a ``Lock`` made at that
    module's import then counts as shared (see locks.shared()).
    """

    def __init__(self, seed: int, index: int, p: float, trace_dir: str | None = None) -> None:
        self.seed = seed
        self.index = index
        self.p = p
        self.trace_dir = trace_dir

    def unpickled(self) -> None:
        install()

    def enter(self, work: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        from pytest_ipc._worker import amplify

        if self.trace_dir is not None:
            from multiprocessing import process

            trace.start(self.trace_dir, process.current_process().name)
            trace.trace_raw((*args, *kwargs.values()))
        # Its own children get seeds of their own, derived from its stream's key.
        seed = int(random.Random(f"{self.seed}:{self.index}").getrandbits(32))
        amplify.activate(seed, self.index, self.p, (work, *args, *kwargs.values()))

    def exit(self) -> None:
        # What runs after the work (multiprocessing's exit handlers, a spawn
        # child's interpreter shutdown) is not the code under test.
        codepoints.stop()
        trace.stop()

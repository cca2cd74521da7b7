"""The access trace of a diagnostic run: who read and wrote which shared object, when, from which line.

After an ``ipc_race`` test's verdict is certain, its next runs are traced
until one of them shows a conflict (see :mod:`pytest_ipc.race.conflicts`).
In a traced worker every read and write of a ``Value`` or an ``Array``
element (synchronized, or a ``RawValue``/``RawArray`` among the worker's
arguments), every get and set through a ``Manager`` proxy, and every
blocking take of a ``Lock``, ``RLock`` or ``BoundedSemaphore(1)`` with the
locks held meanwhile (:mod:`.lockstate`), appends one event to this
process's buffer; the buffer is written to a file of the run's trace
directory when the worker's work ends.

An event's time is ``time.monotonic_ns()``, one clock for every process
of the machine.  A synchronized object's events take it while holding the
object's own lock, so their order is the order in which the lock let them
in: exact.  A raw object's take it just after the access, and a proxy's as
the server's reply arrives: theirs is by time.

Each access names the first frame of the user's code: not of
``multiprocessing``, of ``pytest_ipc`` or of the interpreter's frozen
modules.

Standard library only: this runs in worker processes.
"""

from __future__ import annotations

import ctypes
import marshal
import os
import reprlib
import sys
import time
from typing import Any

from pytest_ipc._worker import lockstate

# The events of this process while it is traced, else None:
# (time_ns, object id, key, op, value, file, line, function).
events: list[tuple[Any, ...]] | None = None
_dir = ""
_worker = ""
# Per object id: (type, created, order), as this process knows it; a lock's
# created is its creation site (lockstate.creation_site), a dict.
objects: dict[str, tuple[str, Any, str]] = {}
# The locks this process took while traced (see lockstate._traced_take).
locks_taken: list[Any] = []

_SKIPPED = (
    os.path.dirname(os.__file__) + os.sep + "multiprocessing" + os.sep,
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep,
    "<frozen ",
)
_PLAIN = (int, float, bool, str, bytes, type(None))


def start(directory: str, worker: str) -> None:
    """Trace this process's accesses from now on, into ``directory``, as ``worker``."""
    global events, _dir, _worker
    events, _dir, _worker = [], directory, worker
    objects.clear()
    locks_taken.clear()
    lockstate.tracing = True


def directory() -> str | None:
    """Where this process writes its trace, or None if it is not traced."""
    return _dir if events is not None else None


def stop() -> None:
    """Write this process's events (if it was traced) and stop tracing."""
    global events
    if events is None:
        return
    recorded, events = events, None
    lockstate.tracing = False
    locks_taken.clear()
    _unpatch_raw()
    if not recorded:
        return
    path = os.path.join(_dir, f"{os.getpid()}.trace")
    try:
        with open(path + ".tmp", "wb") as f:
            marshal.dump((_worker, objects, recorded), f)
        os.replace(path + ".tmp", path)
    except OSError:  # the run is over and its directory gone: nothing to tell
        pass


def load(path: str) -> tuple[str, dict[str, tuple[str, Any, str]], list[tuple[Any, ...]]]:
    """A trace file's worker name, objects and events."""
    with open(path, "rb") as f:
        worker, known, recorded = marshal.load(f)
    return worker, known, recorded


def user_frame(depth: int = 2) -> tuple[str, int, str]:
    """The file, line and function of the innermost frame of the user's code."""
    frame = _user_frame(depth + 1)
    if frame is None:
        return "?", 0, "?"
    return frame.f_code.co_filename, frame.f_lineno, frame.f_code.co_name


def _user_frame(depth: int) -> Any:
    """The innermost frame of the user's code, from ``depth`` frames up; None if there is none."""
    frame: Any = sys._getframe(depth)
    while frame is not None and _skipped(frame):
        frame = frame.f_back
    return frame


def _skipped(frame: Any) -> bool:
    filename = frame.f_code.co_filename
    # A proxy type's methods are made by exec() in multiprocessing.managers,
    # in a namespace of their own: no module name, file "<string>".
    return filename.startswith(_SKIPPED) or (filename == "<string>" and "__name__" not in frame.f_globals)


_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = 80


def _plain(value: Any) -> Any:
    """``value`` as a trace keeps it: itself if plain, else a short repr (bounded work, never raising)."""
    if type(value) in _PLAIN:
        return value if not isinstance(value, (str, bytes)) or len(value) <= 80 else value[:80]
    try:
        return _REPR.repr(value)[:80]
    except Exception:  # a user's __repr__ that fails: the access is still recorded
        return f"<{type(value).__name__}>"


def _record(ident: str, key: Any, op: str, value: Any, when: int) -> None:
    if events is not None:
        file, line, func = user_frame(3)
        events.append((when, ident, key, op, _plain(value), file, line, func))


# -- synchronized Value and Array: their order is their lock's ---------------


def synchronized_id(obj: Any) -> str:
    """The identity of a synchronized ``Value``/``Array``: its memory's (see :func:`_memory_id`)."""
    ident = _memory_id(getattr(obj, "_obj", None)) or f"obj:{os.getpid()}:{id(obj)}"  # else: this process's only
    if ident not in objects:
        objects[ident] = (synchronized_type(obj), vars(obj).get("_ipc_site", ""), "lock")
    return ident


def synchronized_type(obj: Any) -> str:
    """``Value('i')`` or ``Array('d', 10)``: as the user made it."""
    try:
        raw = obj._obj
        if hasattr(raw, "_length_"):
            return f"Array({getattr(raw._type_, '_type_', raw._type_.__name__)!r}, {raw._length_})"
        code = getattr(type(raw), "_type_", None)
        return f"Value({code if isinstance(code, str) else type(raw).__name__!r})"
    except Exception:
        return type(obj).__name__


def _lock_of(obj: Any) -> Any:
    """The semaphore of a synchronized object's lock, taken directly (not recorded as a lock take), or the lock."""
    lock = obj._lock
    return getattr(lock, "_semlock", lock)  # a lock of another kind: taken through its own methods


def value_get(obj: Any) -> Any:
    """``obj.value``, recorded under the object's lock."""
    lock = _lock_of(obj)
    lock.acquire()
    try:
        value = _SIMPLE_VALUE.__get__(obj._obj)  # past a raw trace's patch (see trace_raw)
        _record(synchronized_id(obj), None, "read", value, time.monotonic_ns())
    finally:
        lock.release()
    return value


def value_set(obj: Any, value: Any) -> None:
    """``obj.value = value``, recorded under the object's lock."""
    lock = _lock_of(obj)
    lock.acquire()
    try:
        _SIMPLE_VALUE.__set__(obj._obj, value)
        _record(synchronized_id(obj), None, "write", _SIMPLE_VALUE.__get__(obj._obj), time.monotonic_ns())
    finally:
        lock.release()


def _key(index: Any) -> Any:
    return [index.start, index.stop, index.step] if isinstance(index, slice) else index


def item_get(obj: Any, index: Any) -> Any:
    """``obj[index]`` of a synchronized ``Array``, recorded under its lock."""
    lock = _lock_of(obj)
    lock.acquire()
    try:
        value = ctypes.Array.__getitem__(obj._obj, index)
        _record(synchronized_id(obj), _key(index), "read", value, time.monotonic_ns())
    finally:
        lock.release()
    return value


def item_set(obj: Any, index: Any, value: Any) -> None:
    """``obj[index] = value`` of a synchronized ``Array``, recorded under its lock."""
    lock = _lock_of(obj)
    lock.acquire()
    try:
        ctypes.Array.__setitem__(obj._obj, index, value)
        written = ctypes.Array.__getitem__(obj._obj, index)
        _record(synchronized_id(obj), _key(index), "write", written, time.monotonic_ns())
    finally:
        lock.release()


# -- RawValue and RawArray: no lock orders them, so their order is by time ----

_SIMPLE_VALUE: Any = ctypes._SimpleCData.__dict__["value"]
_raw_patched: list[tuple[type, str]] = []


def _memory_id(raw: Any) -> str | None:
    """``mem:<inode>:<offset>`` of a sharedctypes object's memory, the same in every process; None for others.

    The memory is a block of an arena, a file that every process maps: the
    file's inode and the block's offset name it under fork, spawn and
    forkserver alike.  Kept on the object (a fork child inherits it).
    """
    wrapper = getattr(raw, "_wrapper", None)
    if wrapper is None:
        return None
    ident: str | None = vars(raw).get("_ipc_id")
    if ident is None:
        try:
            (arena, start, _stop), _size = wrapper._state
            ident = f"mem:{os.fstat(arena.fd).st_ino}:{start}"
        except Exception:  # memory of another kind
            return None
        vars(raw)["_ipc_id"] = ident
    return ident


def raw_id(obj: Any) -> str | None:
    """The identity of a ``RawValue``/``RawArray``; None for other objects."""
    ident = _memory_id(obj)
    if ident is None:
        return None
    if ident not in objects:
        kind = (
            f"RawArray({getattr(obj._type_, '_type_', '?')!r}, {obj._length_})"
            if hasattr(obj, "_length_")
            else f"RawValue({getattr(type(obj), '_type_', '?')!r})"
        )
        objects[ident] = (kind, "", "time")
    return ident


def _raw_value() -> property:
    def get(self: Any) -> Any:
        value = _SIMPLE_VALUE.__get__(self)
        if events is not None:
            ident = raw_id(self)
            if ident is not None:
                _record(ident, None, "read", value, time.monotonic_ns())
        return value

    def set_(self: Any, value: Any) -> None:
        _SIMPLE_VALUE.__set__(self, value)
        if events is not None:
            ident = raw_id(self)
            if ident is not None:
                _record(ident, None, "write", _SIMPLE_VALUE.__get__(self), time.monotonic_ns())

    return property(get, set_)


def _raw_item_get(self: Any, index: Any) -> Any:
    value = ctypes.Array.__getitem__(self, index)
    if events is not None:
        ident = raw_id(self)
        if ident is not None:
            _record(ident, _key(index), "read", value, time.monotonic_ns())
    return value


def _raw_item_set(self: Any, index: Any, value: Any) -> None:
    ctypes.Array.__setitem__(self, index, value)
    if events is not None:
        ident = raw_id(self)
        if ident is not None:
            _record(ident, _key(index), "write", ctypes.Array.__getitem__(self, index), time.monotonic_ns())


def trace_raw(uses: Any) -> None:
    """Trace the ``RawValue``/``RawArray`` objects among ``uses`` (a worker's arguments) until :func:`stop`.

    Their types are ctypes' own (``c_int``, ``c_int_Array_4``), shared by
    all ctypes code: the patch is made on them only while this process is
    traced, and taken out again as its trace is written.
    """
    for obj in _raw_objects(uses):
        cls = type(obj)
        if hasattr(obj, "_length_"):
            for name, func in (("__getitem__", _raw_item_get), ("__setitem__", _raw_item_set)):
                if name not in cls.__dict__:
                    setattr(cls, name, func)
                    _raw_patched.append((cls, name))
        elif "value" not in cls.__dict__ and isinstance(obj, ctypes._SimpleCData):
            cls.value = _raw_value()
            _raw_patched.append((cls, "value"))


def _raw_objects(uses: Any, depth: int = 0) -> Any:
    for obj in uses:
        if getattr(obj, "_wrapper", None) is not None and not hasattr(obj, "get_lock"):
            yield obj
        elif depth < 2 and isinstance(obj, (tuple, list)):
            yield from _raw_objects(obj, depth + 1)
        elif depth < 2 and isinstance(obj, dict):
            yield from _raw_objects(obj.values(), depth + 1)


def _unpatch_raw() -> None:
    while _raw_patched:
        cls, name = _raw_patched.pop()
        try:
            delattr(cls, name)
        except (AttributeError, TypeError):
            pass


# -- where objects were made: noted by the test process during a traced run --

# Per identity, where the user's code made it: "file:line", and the call's
# position (line, end line, column, end column) where known (3.11+), which
# names the variable it was assigned to; None while nothing is noted.
_sites: dict[str, tuple[str, tuple[int, int, int, int] | None]] | None = None


def note_sites(on: bool) -> None:
    """Note where the objects made from now on were made (on), or stop (off); each traced run anew."""
    global _sites
    _sites = {} if on else None


def note_creation(obj: Any) -> None:
    """Note where the user's code made a synchronized object or a proxy, while sites are noted.

    The identity is taken now: an object that the test body made is gone by
    the time its report is written.  A fork child inherits the note.
    """
    if _sites is None:
        return
    frame = _user_frame(3)
    if frame is None:
        return
    try:
        ident = identity(obj)
        if ident is not None:
            site = vars(obj)["_ipc_site"] = f"{frame.f_code.co_filename}:{frame.f_lineno}"
            _sites[ident] = (site, lockstate.call_position(frame))
    except Exception:  # an object in the making that does not answer yet: left unnamed
        pass


def made_here() -> dict[str, tuple[str, tuple[int, int, int, int] | None]]:
    """The identities of the shared objects made while sites were noted: where, and the call's position."""
    return dict(_sites or {})


def identity(obj: Any) -> str | None:
    """The identity of a ``Value``/``Array`` (synchronized or raw), a ``Queue``, a ``SharedMemory`` or a
    ``Manager`` proxy; None for others."""
    if hasattr(obj, "_obj") and hasattr(obj, "get_lock"):
        return synchronized_id(obj)
    if isinstance(obj, (ctypes._SimpleCData, ctypes.Array)):
        return raw_id(obj)
    queues = sys.modules.get("multiprocessing.queues")
    if queues is not None and isinstance(obj, queues.Queue):
        return queue_id(obj)
    shared_memory = sys.modules.get("multiprocessing.shared_memory")
    if shared_memory is not None and isinstance(obj, shared_memory.SharedMemory):
        return shared_memory_id(obj)
    token = getattr(obj, "_token", None)
    if token is not None and hasattr(token, "typeid"):
        return _proxy_id(obj)
    return None


def _proxy_id(proxy: Any) -> str:
    token = getattr(proxy, "_token", None)
    return f"proxy:{getattr(token, 'address', '')}:{getattr(token, 'id', id(proxy))}"


# -- Manager proxies: ordered by the time of the server's reply --------------

# The proxy calls that read or write one value: a Value proxy's get and set
# (no key), a dict's item or a namespace's attribute (the key comes first).
_PROXY_READS = frozenset({"get", "__getitem__", "__getattribute__", "__getattr__"})
_PROXY_WRITES = frozenset({"set", "__setitem__", "__setattr__"})


def proxy_call(proxy: Any, method: str, args: tuple[Any, ...], call: Any) -> Any:
    """A proxy's ``_callmethod(method, args)``, recorded when it reads or writes a value."""
    if events is None or (method not in _PROXY_READS and method not in _PROXY_WRITES):
        return call()
    key = None if method == "set" or not args else args[0]  # dict.get(key[, default]) names one too
    if method in ("__getattribute__", "__getattr__") and isinstance(key, str) and key.startswith("_"):
        return call()  # the proxy's own machinery, not the user's data
    result = call()
    when = time.monotonic_ns()
    token = getattr(proxy, "_token", None)
    ident = _proxy_id(proxy)
    if ident not in objects:
        objects[ident] = (f"{getattr(token, 'typeid', type(proxy).__name__)} proxy", "", "time")
    if method in _PROXY_WRITES:
        value = (args[0] if args else None) if method == "set" else (args[1] if len(args) > 1 else None)
        _record(ident, _plain(key), "write", value, when)
    else:
        _record(ident, _plain(key), "read", result, when)
    return result


# -- Queues: what was put, got, and what empty() answered ---------------------


def queue_id(q: Any) -> str:
    """``queue:<its read lock's key>``: the same in every process (see lockstate.key)."""
    ident = f"queue:{lockstate.key(q._rlock._semlock)}"
    if ident not in objects:
        objects[ident] = (type(q).__name__, vars(q).get("_ipc_site", ""), "time")
    return ident


def queue_op(q: Any, op: str, value: Any, when: int | None = None) -> None:
    """Record a queue's ``put`` (of ``value``), ``get`` (that returned it) or ``empty`` (its answer).

    A put is timed as it begins (``when``): its item may be got, and the
    queue found empty, before the producer's ``put()`` returns.
    """
    if events is not None:
        try:
            _record(queue_id(q), None, op, value, time.monotonic_ns() if when is None else when)
        except Exception:  # a queue of another shape: not traced; the queue's own work is done
            pass


# -- SharedMemory: its buffer's items, read and written (3.12+) ---------------

# A SharedMemory buffer is a memoryview, which nothing can patch.  In a
# traced run its ``buf`` is a TracedBuffer instead: the items it reads and
# writes through a subscript are recorded, and everything else is the
# memoryview's.  Code that needs the buffer itself (NumPy, struct.pack_into,
# memoryview()) gets it through __buffer__, which Python classes have from
# 3.12 (PEP 688); before that a wrapper would break such code, so there
# SharedMemory is not traced.
TRACES_SHARED_MEMORY = sys.version_info >= (3, 12)


def shared_memory_id(shm: Any) -> str:
    """``shm:<name>``: its name, the same in every process."""
    ident = f"shm:{shm.name}"
    if ident not in objects:
        objects[ident] = (f"SharedMemory({shm.size})", vars(shm).get("_ipc_site", ""), "time")
    return ident


def shared_buffer(shm: Any, buf: Any) -> Any:
    """The buffer of ``shm`` as a traced run gives it: a :class:`TracedBuffer` where one can stand in."""
    if events is None or not TRACES_SHARED_MEMORY or buf is None:
        return buf
    return TracedBuffer(buf, shared_memory_id(shm))


class TracedBuffer:
    """A SharedMemory's memoryview whose subscripted items are recorded; all else is the memoryview's."""

    __slots__ = ("_ident", "_view")

    def __init__(self, view: memoryview, ident: str) -> None:
        self._view = view
        self._ident = ident

    def __getitem__(self, index: Any) -> Any:
        value = self._view[index]
        if events is not None and type(index) is int:
            _record(self._ident, index % len(self._view), "read", value, time.monotonic_ns())
        return value

    def __setitem__(self, index: Any, value: Any) -> None:
        self._view[index] = value
        if events is not None and type(index) is int:
            _record(self._ident, index % len(self._view), "write", self._view[index], time.monotonic_ns())

    def __len__(self) -> int:
        return len(self._view)

    def __iter__(self) -> Any:
        return iter(self._view)

    def __eq__(self, other: object) -> bool:
        return self._view == (other._view if isinstance(other, TracedBuffer) else other)

    __hash__ = None  # type: ignore[assignment]  # as memoryview's, for a writable buffer

    def __buffer__(self, flags: int) -> memoryview:
        return memoryview(self._view)

    def __release_buffer__(self, view: memoryview) -> None:
        view.release()

    def __enter__(self) -> Any:
        return self._view.__enter__()

    def __exit__(self, *exc: Any) -> Any:
        return self._view.__exit__(*exc)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):  # not set yet (a copy in the making): no recursion through _view
            raise AttributeError(name)
        return getattr(self._view, name)

    def __repr__(self) -> str:
        return repr(self._view)

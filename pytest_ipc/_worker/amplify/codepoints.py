"""Code points: preemption points at the stores of the worker's own code.

Shared memory that Python cannot intercept (a ``SharedMemory`` buffer, a
NumPy array on one, ``RawValue``/``RawArray``) is reached through the
worker's own code: in code outside the standard library and pytest-ipc,
every store through a subscript or an attribute (``STORE_SUBSCR``,
``STORE_ATTR``, ``STORE_SLICE``) is a code point just before the write, so
``shm.buf[0] += 1`` can be preempted between its read and its write.  See
:class:`CodePoints` for how they are found (by ``sys.monitoring`` on 3.12+,
``sys.settrace`` before) and what bounds their cost; before 3.12 they come
on demand (:func:`on_demand`), from the first unguarded shared memory a
worker touches.
"""

from __future__ import annotations

import functools
import opcode
import os
import sys
from collections.abc import Iterable, Iterator
from types import CodeType, FrameType, FunctionType
from typing import Any

from pytest_ipc._worker import startpatch
from pytest_ipc._worker.amplify import locks, stream

# How many events the worker's own code gets for code points, per process.
# Under sys.settrace (3.10, 3.11) each instruction of a watched function is
# one, costing about a microsecond; under sys.monitoring (3.12+) only its
# stores are.  This bounds what code points add to a long-running worker to
# some tens of milliseconds; a race usually shows long before.
CODE_BUDGET = 20_000
# Before 3.12 code points need sys.settrace, and any trace function slows
# every Python instruction of the worker (2-4x measured on 3.11), which made
# race-free scenarios 17-50% slower at jitter low.  So there, below this
# probability (jitter high is at it), they come on demand: only in a worker
# that touches shared memory no lock guards (a SharedMemory buffer, a raw
# ctypes object), the one place where only they can amplify.
SETTRACE_MIN_P = 0.25
# The share of code points that act under a lock shared with other
# processes (see CodePoints.act).  On the 3.12 locked counter, acting at the
# full rate there cost about 15 points of runs/s against jitter off.
CODE_UNDER_LOCK_SHARE = 0.25
# Code points by sys.monitoring (3.12+), else by sys.settrace.
MONITORING = sys.version_info >= (3, 12)


# Raw shared ctypes objects (RawValue, RawArray, Value(lock=False)) are plain
# ctypes instances in an mmap'd arena.  ctypes is imported only to look for
# them, and only where it is imported already: otherwise none can exist.
def _ctypes_kinds() -> tuple[type, ...]:
    ctypes = sys.modules.get("ctypes")
    if ctypes is None:
        return ()
    return (ctypes._SimpleCData, ctypes.Array, ctypes.Structure, ctypes.Union)


# Instructions that write through a subscript or an attribute: the write half
# of ``buf[0] += 1``, ``arr[i] = x`` or ``raw.value += 1``.
_STORES = frozenset(
    opcode.opmap[name] for name in ("STORE_SUBSCR", "STORE_ATTR", "STORE_SLICE") if name in opcode.opmap
)

# pytest-ipc's own package: its frames are never the worker's own code.
OWN_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "")


def _monitoring() -> Any:
    return sys.monitoring  # type: ignore[attr-defined]  # new in 3.12; mypy checks the package as 3.11


def _skipped_prefixes() -> tuple[str, ...]:
    """Where code that gets no code points lives: the standard library and pytest-ipc.

    The standard library is where ``os`` lives (``sysconfig`` would say the
    same, at a millisecond or two of a spawn worker's start).
    """
    dirs = {os.path.dirname(os.path.abspath(os.__file__)), OWN_DIR}
    found = {os.path.join(f(d), "") for d in dirs for f in (str, os.path.realpath)}
    return ("<", *sorted(found))  # "<frozen ...>", "<string>" too


SKIPPED = _skipped_prefixes()


def _store_offsets(code: CodeType) -> frozenset[int]:
    """Offsets of the stores in ``code``, read straight off its bytecode.

    ``co_code`` is the plain bytecode (no specialized or instrumented
    opcodes; inline cache entries read as 0), two bytes an instruction,
    opcode first.  ``dis.get_instructions`` gives the same offsets but costs
    30-60 times as much (200-400 us for a small function), and each worker
    pays it for every function of its own that it runs.
    """
    co = code.co_code
    return frozenset(i for i in range(0, len(co), 2) if co[i] in _STORES)


_EXTENDED_ARG = opcode.opmap["EXTENDED_ARG"]


def _traced_offsets(code: CodeType) -> frozenset[int]:
    """Where sys.settrace's opcode events for the stores in ``code`` fall.

    Before 3.12 a store whose argument needs an ``EXTENDED_ARG`` prefix (an
    attribute name past the 256th of its function, say) is reported at the
    prefix's offset.
    """
    co = code.co_code
    found = set()
    for offset in _store_offsets(code):
        found.add(offset)
        while offset >= 2 and co[offset - 2] == _EXTENDED_ARG:
            offset -= 2
            found.add(offset)
    return frozenset(found)


def _lines_of(code: CodeType, offsets: frozenset[int]) -> frozenset[int | None]:
    """The line numbers the instructions at ``offsets`` belong to (one pass over both)."""
    wanted = sorted(offsets)
    lines: set[int | None] = set()
    i = 0
    for start, end, line in sorted(code.co_lines()):
        while i < len(wanted) and wanted[i] < start:
            i += 1
        if i < len(wanted) and wanted[i] < end:
            lines.add(line)
    return frozenset(lines)


class CodePoints:
    """Preemption points before each store in the worker's own code.

    Only code outside the standard library (multiprocessing's internals are
    reached by the class patches) and pytest-ipc that contains a store
    through a subscript or an attribute is watched, and only until ``budget``
    events have passed; then watching stops.  The choices come from a stream
    of their own, so the IPC points' sequence for a seed is the same with or
    without code points.

    Python 3.12+ watches with ``sys.monitoring`` under a tool id of its own,
    beside coverage.py or a debugger: each instruction that is not a store
    is switched off after its first event, so stores are the only events
    that keep coming.  Python 3.10 and 3.11 use ``sys.settrace`` with opcode
    events (the instance is the trace function), where each instruction of a
    watched function is an event, and leave an existing trace function alone.
    """

    def __init__(self, seed: int, index: int, p: float, budget: int = CODE_BUDGET) -> None:
        self.amp = stream.Amplifier(seed, index, p, stream=":code")
        self.left = budget
        self.stores: dict[CodeType, frozenset[int]] = {}
        self.store_lines: dict[CodeType, frozenset[int | None]] = {}
        self.tool: int | None = None
        self.watched: list[CodeType] = []
        self._local = self.local  # one bound method, handed to every watched frame

    def stores_in(self, code: CodeType) -> frozenset[int]:
        """Offsets of the stores in ``code`` that are points; empty for code we leave alone."""
        known = self.stores.get(code)
        if known is None:
            mine = not code.co_filename.startswith(SKIPPED)
            known = (_store_offsets if MONITORING else _traced_offsets)(code) if mine else frozenset()
            self.stores[code] = known
        return known

    def act(self) -> None:
        """A code point: maybe yield or sleep; under a shared lock, at a quarter of the rate.

        Under a lock that other workers share, a sleep mostly makes them
        queue for it: the store is usually guarded by that very lock.  But
        it may be guarded by the wrong one of several shared locks, or race
        with another worker's access that takes no lock (a torn read, an
        unlocked reset): there only these points can open the window.  So
        they act less often there, not never.
        """
        amp = self.amp
        choice = amp.choose()
        if choice is None:
            return
        if locks.under_shared_lock() and amp.rng.random() >= CODE_UNDER_LOCK_SHARE:
            return
        amp.wait(choice)

    # -- sys.settrace (3.10, 3.11) ---------------------------------------------
    #
    # Each trace event is a Python call, so a watched frame gets line events,
    # and opcode events only while it is on a line that holds a store: about
    # half the events of tracing every instruction.

    def __call__(self, frame: FrameType, event: str, arg: Any) -> Any:
        # The global trace function: sees each new frame ("call").
        if self.left <= 0:
            sys.settrace(None)
            return None
        if not self.stores_in(frame.f_code):
            return None
        return self.watch(frame)

    def watch(self, frame: FrameType) -> Any:
        """Trace ``frame`` (new, or already running): the local trace function."""
        code = frame.f_code
        if code not in self.store_lines:
            self.store_lines[code] = _lines_of(code, self.stores_in(code))
            self.watched.append(code)
        frame.f_trace_lines = True
        frame.f_trace_opcodes = frame.f_lineno in self.store_lines[code]
        frame.f_trace = self._local
        return self._local

    def local(self, frame: FrameType, event: str, arg: Any) -> Any:
        if event == "opcode":
            self.left -= 1
            if frame.f_lasti in self.stores[frame.f_code]:
                self.act()
        elif event == "line":
            self.left -= 1
            frame.f_trace_opcodes = frame.f_lineno in self.store_lines[frame.f_code]
        if self.left <= 0:
            frame.f_trace_opcodes = False
            sys.settrace(None)
            return None
        return self._local

    # -- sys.monitoring (3.12+) ------------------------------------------------

    def monitor(self, tool: int) -> None:
        mon = _monitoring()
        self.tool = tool
        # A forked child (or an earlier activation) may have inherited
        # PY_START switched off for code objects seen before: see them again.
        mon.restart_events()
        mon.register_callback(tool, mon.events.PY_START, self.on_start)
        mon.register_callback(tool, mon.events.INSTRUCTION, self.on_instruction)
        mon.set_events(tool, mon.events.PY_START)

    def on_start(self, code: CodeType, offset: int) -> Any:
        mon = _monitoring()
        if self.left > 0 and self.stores_in(code):
            mon.set_local_events(self.tool, code, mon.events.INSTRUCTION)
            self.watched.append(code)
        return mon.DISABLE  # once per code object is enough

    def on_instruction(self, code: CodeType, offset: int) -> Any:
        mon = _monitoring()
        if offset not in self.stores_in(code):
            return mon.DISABLE  # never again for this instruction
        self.left -= 1
        if self.left <= 0:
            self.stop()
            return None
        self.act()
        return None

    def stop(self) -> None:
        """Stop watching (3.12+); the tool id stays ours for the rest of the process."""
        if self.tool is None:
            return
        mon = _monitoring()
        mon.set_events(self.tool, 0)
        for code in self.watched:
            mon.set_local_events(self.tool, code, 0)
        self.watched.clear()


_TOOL_NAME = "pytest-ipc"
active: CodePoints | None = None


def _free_tool() -> int | None:
    """A ``sys.monitoring`` tool id that is ours already or free, or None.

    Only 4 and 3: the others are the ones debuggers (0), coverage.py (1),
    profilers (2) and optimizers (5) ask for, and taking one would make such
    a tool fail to start in the worker.  4 first: Hypothesis traces with 3.
    """
    mon = _monitoring()
    for tool in (4, 3):
        owner = mon.get_tool(tool)
        if owner == _TOOL_NAME:
            return tool
        if owner is None:
            mon.use_tool_id(tool, _TOOL_NAME)
            return tool
    return None


def trace_own_code(seed: int, index: int, p: float) -> None:
    """Switch code points on in this process, the way this Python allows."""
    global active
    stop()
    points = CodePoints(seed, index, p)
    if MONITORING:
        tool = _free_tool()
        if tool is None:
            return
        points.monitor(tool)
    elif sys.gettrace() is None:
        sys.settrace(points)
    else:
        return  # coverage.py or a debugger: theirs comes first
    active = points


# (seed, index, p) of a worker whose code points come on demand (before 3.12,
# below SETTRACE_MIN_P) and have not come yet.
due: tuple[int, int, float] | None = None


def on_demand(running: bool = True) -> None:
    """Switch due code points on, for new frames and (``running``) the ones running now.

    Called when the worker touches unguarded shared memory.  The worker's
    frames on the stack get the trace function the way a debugger's
    ``set_trace`` gives it to them, so the store of the statement that
    fetched a ``SharedMemory.buf`` is already a point.
    """
    global due
    wanted, due = due, None
    if wanted is None or stream._amp is None:
        return
    trace_own_code(*wanted)
    points = active
    if points is None or not running or not _is_tracing(points):
        return  # another tracer came first, or nothing of the worker's runs yet
    # The worker's own frames: from the caller of this module's hook up to
    # where pytest-ipc or the standard library called them.  Under fork the
    # frames above that are the parent's, and never run again here.
    frame: FrameType | None = sys._getframe(1)
    while frame is not None and frame.f_code.co_filename.startswith(OWN_DIR):
        frame = frame.f_back
    while frame is not None and not frame.f_code.co_filename.startswith(SKIPPED):
        if points.stores_in(frame.f_code):
            points.watch(frame)
        frame = frame.f_back


def _is_tracing(points: CodePoints) -> bool:
    return sys.gettrace() is points


# How many items of one list, tuple or dict argument are looked at.
_REACH_LIMIT = 64


def unguarded(obj: Any) -> bool:
    """Is ``obj`` shared memory that no lock guards?

    Judged by its type alone: a user's argument may be a lazy proxy or have
    a ``__getattr__`` that raises, and looking at it must neither evaluate
    it nor fail the worker.
    """
    kind = type(obj)
    if issubclass(kind, (memoryview, *_ctypes_kinds())):
        return True
    shm = sys.modules.get("multiprocessing.shared_memory")
    if shm is not None and issubclass(kind, shm.SharedMemory):
        return True
    try:
        return hasattr(kind, "__array_interface__")  # NumPy arrays (on a SharedMemory buffer, say)
    except Exception:  # a metaclass __getattr__ that raises
        return False


def reachable(uses: Iterable[Any]) -> Iterator[Any]:
    """What a worker's arguments hold one level down, and what its callables close over."""
    for obj in uses:
        yield obj
        kind = type(obj)
        if kind is tuple or kind is list:
            yield from obj[:_REACH_LIMIT]
        elif kind is dict:
            yield from list(obj.values())[:_REACH_LIMIT]
        elif kind is functools.partial:
            yield obj.func
            yield from obj.args[:_REACH_LIMIT]
            yield from list(obj.keywords.values())[:_REACH_LIMIT]
        elif kind is startpatch.Wrapped:
            yield from reachable((obj.work,))
        elif kind is startpatch.RunOf:  # a Process subclass's own run: what the process holds
            yield from reachable([v for k, v in vars(obj.proc).items() if k != "run"][:_REACH_LIMIT])
        elif kind is FunctionType:
            for cell in obj.__closure__ or ():
                try:
                    yield cell.cell_contents
                except ValueError:  # an empty cell
                    pass


def stop() -> None:
    """Switch code points off in this process (those due on demand too)."""
    global active, due
    due = None
    points, active = active, None
    if points is None:
        return
    points.stop()
    if sys.gettrace() is points:
        sys.settrace(None)

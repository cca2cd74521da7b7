"""Race amplification: seeded preemption points at the IPC boundaries.

Inside a worker of an ``ipc_race`` run, every synchronized ``Value``/``Array``
read and write, ``Lock``/``RLock`` entry and exit, ``Queue.put``/``get``,
``Connection.send``/``recv``, ``Manager`` proxy call, ``SharedMemory.buf``
access and ``Process.start`` passes a preemption point.  At each point the
worker, with probability ``p``, gives up the CPU (``os.sched_yield``) or
sleeps a few hundred microseconds.  A yield between the read and the write
of ``v.value += 1`` is exactly the interleaving that loses an update, so a
race that plain repetition shows once in many runs shows in the first.
Points inside a critical section that the worker's lock already guards stay
quiet (see install()): there a sleep only makes the other workers queue.  A
worker's other threads (a ``Queue``'s feeder) sleep as they start.

Shared state that Python cannot intercept (a ``SharedMemory`` buffer, a
NumPy array on one, ``RawValue``/``RawArray``) is reached through the
worker's own code instead: in code outside the standard library and
pytest-ipc, every store through a subscript or an attribute
(``STORE_SUBSCR``, ``STORE_ATTR``, ``STORE_SLICE``) is a code point just
before the write, so ``shm.buf[0] += 1`` can be preempted between its read
and its write.  See :class:`CodePoints` for how they are found (by
``sys.monitoring`` on 3.12+, ``sys.settrace`` before) and what bounds their
cost.

The choices come from a ``random.Random`` seeded with the run's seed and the
worker's index (and, in the worker's other threads, the order in which they
first passed a point): the same ``--ipc-seed`` gives every worker the same
sequence of choices (the operating system's scheduling still varies).  A
point only ever yields or sleeps, so correct code behaves exactly as
without it.

The patches are made on the classes, so they reach objects that the code
under test creates itself as well as the fixtures' objects.  Processes that
the code in a worker starts with ``multiprocessing`` get amplification too:
their target is wrapped so that it switches it on in the child with a seed of
its own (this works under fork, spawn and forkserver, for any ``Process``
with a ``target``, and for a ``Process`` subclass that overrides ``run``,
whose ``run`` is wrapped instead).  ``RawValue``/``RawArray``
and plain ``ctypes`` objects have no Python-level hook of their own, and
``SharedMemory`` has one only where ``.buf`` is fetched: the code points
above are what reach their reads and writes (from 3.12 at any level; before
it on demand, from the first such object a worker touches, and in every
worker from ``SETTRACE_MIN_P`` up).

No pytest here: this runs in worker processes.
"""

from __future__ import annotations

import ctypes
import dis
import functools
import itertools
import os
import random
import sys
import sysconfig
import threading
import time
# The modules install() patches, imported here rather than in it: the fork
# server preloads this module, so its workers inherit them instead of each
# importing them anew (managers brings pool, hmac and secrets: about 5 ms a
# worker).
from multiprocessing import connection, managers, process, queues, sharedctypes, shared_memory, synchronize
from types import CodeType, FrameType, FunctionType
from typing import Any, Callable, Iterable, Iterator

from pytest_ipc._shmlog import RunOf, start_wrapped, take_names

# The longest sleep at a preemption point.  Long enough for another worker
# on the other core to get through a critical section, short enough that a
# race-free scenario keeps its speed.
MAX_SLEEP = 0.0002
# A worker's other thread (a Queue's feeder, the code under test's own) sleeps
# this long as it starts (a feeder) or at the first point it passes, whatever
# its stream says: a thread just started is where an order that only happens
# to hold is decided, as with a consumer that stops at Queue.empty() before
# the feeder's first write.  On that scenario (bench/scenarios.py), at load
# 7-9, the share of runs that showed the race went from 70-84% to 82-93%
# under fork and forkserver (0.2 ms gained less, 1 ms no more); the
# sentinel-counted fan-in lost 4-6% of its runs/s.  One sleep per thread.
THREAD_START_SLEEP = 0.0005
# Share of acting points that sleep rather than yield.
SLEEP_SHARE = 0.5
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
_MONITORING = sys.version_info >= (3, 12)

# Raw shared ctypes objects (RawValue, RawArray, Value(lock=False)) are plain
# ctypes instances in an mmap'd arena.
_CTYPES = (ctypes._SimpleCData, ctypes.Array, ctypes.Structure, ctypes.Union)

_seed = 0
_children = 0
_child_p = 0.0  # the probability handed on to processes this one starts
_installed = False


class Amplifier:
    """The per-worker stream of choices: deterministic for a (seed, index)."""

    fresh = False  # the stream of a thread that has passed no point yet

    def __init__(self, seed: int, index: int, p: float, stream: str = "") -> None:
        self.key = f"pytest-ipc:{seed}:{index}{stream}"
        self.rng = random.Random(self.key)
        self.p = p

    def derived(self, stream: str) -> Amplifier:
        """A stream of its own for ``stream`` (another thread), keyed on this one's."""
        other = Amplifier.__new__(Amplifier)
        other.key = f"{self.key}:{stream}"
        other.rng = random.Random(other.key)
        other.p = self.p
        return other

    def choose(self) -> float | None:
        """None: go on; 0.0: yield the CPU; > 0: sleep that many seconds."""
        rng = self.rng
        if rng.random() >= self.p:
            return None
        if rng.random() < SLEEP_SHARE:
            return rng.random() * MAX_SLEEP
        return 0.0

    def starting(self) -> bool:
        """Whether this is a thread's first point: True once for a fresh stream."""
        if not self.fresh:
            return False
        self.fresh = False
        return True

    def act(self) -> None:
        """Do what the next choice says."""
        choice = self.choose()
        if choice is not None:
            self.wait(choice)

    def wait(self, choice: float) -> None:
        """Yield the CPU (``choice`` 0.0) or sleep ``choice`` seconds."""
        if choice == 0.0:
            os.sched_yield()
        else:
            time.sleep(choice)


# The stream of the thread that switched amplification on (a worker's main
# thread).  Other threads of the worker (a Queue's feeder thread, the code
# under test's own) draw from streams of their own, the n-th of them to pass a
# point from the n-th stream derived from it, so the main thread's choices for
# a seed do not depend on how threads interleave.  A thread's stream lives in
# a thread-local, tagged with the amplifier it was derived from.
_amp: Amplifier | None = None
_amp_thread = 0
_others = threading.local()
# Numbers the other threads: next() on a count is a single C call, so two
# threads that pass their first point at once cannot draw the same number (as
# they could between the read and the write of a ``+= 1``).
_other_threads = itertools.count(1)


def _stream() -> Amplifier | None:
    amp = _amp
    if amp is None or threading.get_ident() == _amp_thread:
        return amp
    mine = getattr(_others, "stream", None)
    if mine is None or mine[0] is not amp:
        stream = amp.derived(f"thread{next(_other_threads)}")
        stream.fresh = True
        mine = _others.stream = (amp, stream)
    return mine[1]


def point(guarded: Callable[[Any], bool] | None = None, obj: Any = None) -> None:
    """A preemption point: maybe yield or sleep, by the worker's stream.

    ``guarded(obj)``, asked only when the stream says to act, tells a point
    that would only hold up other workers: this one holds the lock they would
    need to get anywhere that matters.  The choice is drawn all the same, so a
    seed gives the same sequence either way.  The first point of a worker's
    other thread sleeps at least ``THREAD_START_SLEEP`` (see _thread_start()),
    unless guarded.
    """
    amp = _stream()
    if amp is None:
        return
    choice = amp.choose()
    if amp.starting():
        choice = max(choice or 0.0, THREAD_START_SLEEP)
    if choice is None or (guarded is not None and guarded(obj)):
        return
    amp.wait(choice)


def _thread_start() -> None:
    """Where a thread of a worker's own making begins: the start sleep, if it is its first.

    A Queue's feeder thread passes here as it starts, before it takes the
    queue's write lock: at its first write it would hold that lock, which
    every producer's feeder takes, through the sleep.
    """
    amp = _stream()
    if amp is not None and amp.starting():
        amp.wait(THREAD_START_SLEEP)


def _holds(lock: Any) -> bool:
    """Whether this thread holds ``lock``, a multiprocessing ``Lock`` or ``RLock``.

    A ``Semaphore`` that lets more than one holder in is no lock here.  A
    ``Lock`` that another process released after this one took it (a
    hand-off) still counts as this thread's in ``_is_mine()``, hence the look
    at its value.
    """
    semlock = getattr(lock, "_semlock", None)
    return (
        semlock is not None
        and semlock.maxvalue == 1
        and bool(semlock._is_mine())
        and (semlock.kind == synchronize.RECURSIVE_MUTEX or semlock._get_value() == 0)
    )


def _shared(lock: Any) -> bool:
    """Whether other processes may take ``lock``: every lock but one this process made.

    A lock made here (a ``Lock()`` in the worker's target, or a module-level
    one that each spawn worker makes anew as it imports the module) is one no
    other worker takes, so holding it guards nothing from them.  A lock
    inherited through fork was made by another pid; one that came pickled
    (spawn, forkserver) was never made here at all.
    """
    return getattr(lock, "_ipc_pid", None) != os.getpid()


# The shared locks this process has entered (``with lock:``) and not left.
_shared_held: list[Any] = []


def _under_shared_lock() -> bool:
    """Whether this thread is inside a ``with`` block of a lock shared with other processes."""
    return bool(_shared_held) and any(map(_holds, _shared_held))


def _holds_own_lock(synchronized: Any) -> bool:
    """Whether this thread holds the lock of a synchronized ``Value``/``Array``, a shared one.

    Then its read or write cannot race with another worker's reads and
    writes through the same wrapper (each takes that lock too); a worker
    that does the read and the write without it gets its own points.  A
    wrapper this process made around shared memory has a lock of its own
    that no other worker takes: its points stay on.
    """
    lock = getattr(synchronized, "_lock", None)
    return _holds(lock) and _shared(lock)


def activate(seed: int, index: int, p: float, uses: Iterable[Any] = ()) -> None:
    """Switch amplification on in this process (a worker, after the start barrier).

    ``uses`` are what the worker's target was given (its arguments, and what
    a ``functools.partial`` or closure holds): where code points cost a trace
    function and come on demand, unguarded shared memory among them switches
    them on from the start.
    """
    global _amp, _amp_thread, _other_threads, _code_points_due
    hand_on(seed, p)
    _amp = Amplifier(seed, index, p) if p > 0 else None
    _amp_thread, _other_threads = threading.get_ident(), itertools.count(1)
    _shared_held.clear()  # a forked child's copy of the locks its parent held
    stop_code_points()  # a forked child's copy of its parent's are not its own
    if p <= 0:
        return
    if _MONITORING or p >= SETTRACE_MIN_P:
        _trace_own_code(seed, index, p)
    else:
        _code_points_due = (seed, index, p)
        if any(map(_unguarded, _reachable(uses))):
            _code_points_on_demand(running=False)  # the target has not started: no frame of it yet


# -- code points: the worker's own stores ------------------------------------

# Instructions that write through a subscript or an attribute: the write half
# of ``buf[0] += 1``, ``arr[i] = x`` or ``raw.value += 1``.
_STORES = frozenset(dis.opmap[name] for name in ("STORE_SUBSCR", "STORE_ATTR", "STORE_SLICE") if name in dis.opmap)


def _skipped_prefixes() -> tuple[str, ...]:
    """Where code that gets no code points lives: the standard library and pytest-ipc."""
    paths = sysconfig.get_paths()
    dirs = {paths["stdlib"], paths["platstdlib"], os.path.dirname(os.path.abspath(__file__))}
    found = {os.path.join(f(d), "") for d in dirs for f in (str, os.path.realpath)}
    return ("<", *sorted(found))  # "<frozen ...>", "<string>" too


# Worked out at import (sysconfig takes a millisecond or two): in the test
# process, whose fork workers inherit it, and in the fork server, which
# preloads this module.
_SKIPPED = _skipped_prefixes()


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


_EXTENDED_ARG = dis.opmap["EXTENDED_ARG"]


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


def _lines_of(code: CodeType, offsets: frozenset[int]) -> frozenset[int]:
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
        self.amp = Amplifier(seed, index, p, stream=":code")
        self.left = budget
        self.stores: dict[CodeType, frozenset[int]] = {}
        self.store_lines: dict[CodeType, frozenset[int]] = {}
        self.tool: int | None = None
        self.watched: list[CodeType] = []
        self._local = self.local  # one bound method, handed to every watched frame

    def stores_in(self, code: CodeType) -> frozenset[int]:
        """Offsets of the stores in ``code`` that are points; empty for code we leave alone."""
        known = self.stores.get(code)
        if known is None:
            mine = not code.co_filename.startswith(_SKIPPED)
            known = (_store_offsets if _MONITORING else _traced_offsets)(code) if mine else frozenset()
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
        if _under_shared_lock() and amp.rng.random() >= CODE_UNDER_LOCK_SHARE:
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
        mon = sys.monitoring  # type: ignore[attr-defined]
        self.tool = tool
        # A forked child (or an earlier activation) may have inherited
        # PY_START switched off for code objects seen before: see them again.
        mon.restart_events()
        mon.register_callback(tool, mon.events.PY_START, self.on_start)
        mon.register_callback(tool, mon.events.INSTRUCTION, self.on_instruction)
        mon.set_events(tool, mon.events.PY_START)

    def on_start(self, code: CodeType, offset: int) -> Any:
        mon = sys.monitoring  # type: ignore[attr-defined]
        if self.left > 0 and self.stores_in(code):
            mon.set_local_events(self.tool, code, mon.events.INSTRUCTION)
            self.watched.append(code)
        return mon.DISABLE  # once per code object is enough

    def on_instruction(self, code: CodeType, offset: int) -> Any:
        mon = sys.monitoring  # type: ignore[attr-defined]
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
        mon = sys.monitoring  # type: ignore[attr-defined]
        mon.set_events(self.tool, 0)
        for code in self.watched:
            mon.set_local_events(self.tool, code, 0)
        self.watched.clear()


_TOOL_NAME = "pytest-ipc"
_code_points: CodePoints | None = None


def _free_tool() -> int | None:
    """A ``sys.monitoring`` tool id that is ours already or free, or None.

    Only 4 and 3: the others are the ones debuggers (0), coverage.py (1),
    profilers (2) and optimizers (5) ask for, and taking one would make such
    a tool fail to start in the worker.  4 first: Hypothesis traces with 3.
    """
    mon = sys.monitoring  # type: ignore[attr-defined]
    for tool in (4, 3):
        owner = mon.get_tool(tool)
        if owner == _TOOL_NAME:
            return tool
        if owner is None:
            mon.use_tool_id(tool, _TOOL_NAME)
            return tool
    return None


def _trace_own_code(seed: int, index: int, p: float) -> None:
    """Switch code points on in this process, the way this Python allows."""
    global _code_points
    stop_code_points()
    points = CodePoints(seed, index, p)
    if _MONITORING:
        tool = _free_tool()
        if tool is None:
            return
        points.monitor(tool)
    elif sys.gettrace() is None:
        sys.settrace(points)
    else:
        return  # coverage.py or a debugger: theirs comes first
    _code_points = points


# (seed, index, p) of a worker whose code points come on demand (before 3.12,
# below SETTRACE_MIN_P) and have not come yet.
_code_points_due: tuple[int, int, float] | None = None


def _code_points_on_demand(running: bool = True) -> None:
    """Switch due code points on, for new frames and (``running``) the ones running now.

    Called when the worker touches unguarded shared memory.  The worker's
    frames on the stack get the trace function the way a debugger's
    ``set_trace`` gives it to them, so the store of the statement that
    fetched a ``SharedMemory.buf`` is already a point.
    """
    global _code_points_due
    due, _code_points_due = _code_points_due, None
    if due is None or _amp is None:
        return
    _trace_own_code(*due)
    points = _code_points
    if points is None or sys.gettrace() is not points or not running:
        return  # another tracer came first, or nothing of the worker's runs yet
    # The worker's own frames: from the caller of this module's hook up to
    # where pytest-ipc or the standard library called them.  Under fork the
    # frames above that are the parent's, and never run again here.
    frame: FrameType | None = sys._getframe(1)
    while frame is not None and frame.f_code.co_filename == __file__:
        frame = frame.f_back
    while frame is not None and not frame.f_code.co_filename.startswith(_SKIPPED):
        if points.stores_in(frame.f_code):
            points.watch(frame)
        frame = frame.f_back


# How many items of one list, tuple or dict argument are looked at.
_REACH_LIMIT = 64


def _unguarded(obj: Any) -> bool:
    """Is ``obj`` shared memory that no lock guards?

    Judged by its type alone: a user's argument may be a lazy proxy or have
    a ``__getattr__`` that raises, and looking at it must neither evaluate
    it nor fail the worker.
    """
    kind = type(obj)
    if issubclass(kind, (memoryview, _CTYPES)):
        return True
    shm = sys.modules.get("multiprocessing.shared_memory")
    if shm is not None and issubclass(kind, shm.SharedMemory):
        return True
    try:
        return hasattr(kind, "__array_interface__")  # NumPy arrays (on a SharedMemory buffer, say)
    except Exception:  # a metaclass __getattr__ that raises
        return False


def _reachable(uses: Iterable[Any]) -> Iterator[Any]:
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
        elif getattr(kind, "_ipc_wraps", False):  # the leak check's wrapper (_shmlog.Followed)
            yield from _reachable((obj.target,))
        elif kind is RunOf:  # a Process subclass's own run: what the process holds
            yield from _reachable([v for k, v in vars(obj.proc).items() if k != "run"][:_REACH_LIMIT])
        elif kind is FunctionType:
            for cell in obj.__closure__ or ():
                try:
                    yield cell.cell_contents
                except ValueError:  # an empty cell
                    pass


def stop_code_points() -> None:
    global _code_points, _code_points_due
    _code_points_due = None
    points, _code_points = _code_points, None
    if points is None:
        return
    points.stop()
    if sys.gettrace() is points:
        sys.settrace(None)


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
    stop_code_points()


def is_active() -> bool:
    return _amp is not None


class Amplified:
    """A ``Process`` target that switches amplification on in its own process first."""

    _ipc_wraps = True  # its target is in ``target`` (see _reachable)

    def __init__(self, target: Callable[..., Any], seed: int, index: int, p: float) -> None:
        self.target = target
        self.seed = seed
        self.index = index
        self.p = p
        if target is not None:
            take_names(self, target)

    def __reduce__(self) -> tuple[Any, ...]:
        # The target travels as state, unpickled after _unpickled() has run:
        # the patches are in before its module is imported (see _shared).
        state = {k: v for k, v in self.__dict__.items() if k not in ("seed", "index", "p")}
        return (_unpickled, (self.seed, self.index, self.p), state)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        # Its own children get seeds of their own, derived from its stream's key.
        seed = int(random.Random(f"{self.seed}:{self.index}").getrandbits(32))
        activate(seed, self.index, self.p, (self.target, *args, *kwargs.values()))
        try:
            return self.target(*args, **kwargs)
        finally:
            # What runs after the target (multiprocessing's exit handlers, a
            # spawn child's interpreter shutdown) is not the code under test.
            stop_code_points()


# ``guarded``, where given, is asked about the method's ``self``: see point().


def _unpickled(seed: int, index: int, p: float) -> Amplified:
    install()
    return Amplified(None, seed, index, p)  # type: ignore[arg-type]  # the target follows as state


def _wrap_after(
    func: Callable[..., Any],
    on_result: Callable[[Any], None] | None = None,
    guarded: Callable[[Any], bool] | None = None,
) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        result = func(*args, **kwargs)
        if on_result is not None:
            on_result(result)
        point(guarded, args[0])
        return result

    wrapper.__wrapped__ = func  # type: ignore[attr-defined]
    return wrapper


def _wrap_before(func: Callable[..., Any], guarded: Callable[[Any], bool] | None = None) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        point(guarded, args[0])
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


def _feeder(feed: Callable[..., Any]) -> Callable[..., Any]:
    def _feed(*args: Any, **kwargs: Any) -> Any:
        _thread_start()
        return feed(*args, **kwargs)

    _feed._ipc_feeder = True  # type: ignore[attr-defined]
    _feed.__wrapped__ = feed  # type: ignore[attr-defined]
    return _feed


def _patch(cls: type, name: str, wrap: Callable[[Callable[..., Any]], Callable[..., Any]]) -> None:
    original = cls.__dict__.get(name)
    if original is None or hasattr(original, "__wrapped__"):
        return
    setattr(cls, name, wrap(original))


def _lock_init(init: Callable[..., Any]) -> Callable[..., Any]:
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        self._ipc_pid = os.getpid()  # see _shared()

    __init__.__wrapped__ = init  # type: ignore[attr-defined]
    return __init__


def _lock_enter(enter: Callable[..., Any]) -> Callable[..., Any]:
    def __enter__(self: Any) -> Any:
        point(_holds, self)  # quiet if it is taken again: then it is no boundary
        result = enter(self)
        if _amp is not None and _shared(self):
            _shared_held.append(self)
        return result

    __enter__.__wrapped__ = enter  # type: ignore[attr-defined]
    return __enter__


def _lock_exit(exit_: Callable[..., Any]) -> Callable[..., Any]:
    def __exit__(self: Any, *args: Any) -> Any:
        try:
            _shared_held.remove(self)
        except ValueError:  # a lock of this process's own, or entered before amplification began
            pass
        result = exit_(self, *args)
        point(_holds, self)
        return result

    __exit__.__wrapped__ = exit_  # type: ignore[attr-defined]
    return __exit__


def _patch_property(
    cls: type,
    name: str,
    on_get: Callable[[Any], None] | None = None,
    guarded: Callable[[Any], bool] | None = None,
) -> None:
    prop = cls.__dict__.get(name)
    if not isinstance(prop, property) or getattr(prop.fget, "__wrapped__", None):
        return
    fget, fset = prop.fget, prop.fset
    # A point after the read and one before the write: both fall inside
    # the window of ``v.value += 1``, which is where updates get lost.
    getter = _wrap_after(fget, on_get, guarded)
    setter = _wrap_before(fset, guarded) if fset else None
    setattr(cls, name, property(getter, setter, prop.fdel, prop.__doc__))


def _start(original: Callable[..., Any]) -> Callable[..., Any]:
    def start(self: Any) -> Any:
        if _child_p <= 0:
            return original(self)
        return start_wrapped(self, original, Amplified, _amplified)

    start.__wrapped__ = original  # type: ignore[attr-defined]
    return start


def _amplified(work: Callable[..., Any]) -> Amplified:
    """``work`` of the next child this process starts, switching amplification on first.

    For a ``Process`` subclass's own ``run``, a spawn or forkserver child
    imports the subclass's module as it unpickles the process, before the
    wrapper installs the patches: a ``Lock`` made at that module's import
    then counts as shared (see _shared()).
    """
    global _children
    _children += 1
    return Amplified(work, _seed, _children, _child_p)


def install() -> None:
    """Patch the multiprocessing classes once per process; a no-op while inactive."""
    global _installed
    if _installed:
        return
    _installed = True
    os.register_at_fork(after_in_child=_shared_held.clear)  # the parent's locks are not held here

    # Inside a critical section of a lock that other workers share, a sleep
    # only makes them queue for it: on the locked counter such points were
    # most of amplification's cost.  So some points stay quiet there, where
    # being quiet hides no race:
    # - a synchronized Value/Array's, while its own lock is held: a worker
    #   that reads and writes it without that lock has points of its own;
    # - a lock's, while it is already held (an RLock entered again, as a
    #   synchronized Array's accessors do under ``with a.get_lock()``).
    # And code points act at a quarter of their rate under a lock shared with
    # other processes (see CodePoints.act).  A lock the worker made itself,
    # which no other worker takes (the wrong lock), leaves them all on.
    _patch_property(sharedctypes.Synchronized, "value", guarded=_holds_own_lock)
    for name in ("__getitem__", "__getslice__"):
        _patch(sharedctypes.SynchronizedArray, name, functools.partial(_wrap_after, guarded=_holds_own_lock))
    for name in ("__setitem__", "__setslice__"):
        _patch(sharedctypes.SynchronizedArray, name, functools.partial(_wrap_before, guarded=_holds_own_lock))
    _patch(synchronize.SemLock, "__init__", _lock_init)
    _patch(synchronize.SemLock, "__enter__", _lock_enter)
    _patch(synchronize.SemLock, "__exit__", _lock_exit)
    feed = queues.Queue.__dict__["_feed"].__func__
    if not hasattr(feed, "_ipc_feeder"):
        queues.Queue._feed = staticmethod(_feeder(feed))  # type: ignore[method-assign]
    _patch(queues.Queue, "put", _wrap_before)
    _patch(queues.Queue, "get", _wrap_after)
    _patch(connection._ConnectionBase, "send", _wrap_before)
    _patch(connection._ConnectionBase, "send_bytes", _wrap_before)
    _patch(connection._ConnectionBase, "recv", _wrap_after)
    _patch(connection._ConnectionBase, "recv_bytes", _wrap_after)
    _patch(managers.BaseProxy, "_callmethod", _wrap_around)
    _patch(process.BaseProcess, "start", _start)
    _patch_property(shared_memory.SharedMemory, "buf", _buf_fetched)


def _buf_fetched(buf: Any) -> None:
    # The one hook a SharedMemory has: its buffer is about to be used.
    if _code_points_due is not None:
        _code_points_on_demand()

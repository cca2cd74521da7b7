"""Race amplification (issue 4): the seeded stream, where its points reach, and what it catches."""

from __future__ import annotations

import contextlib
import dis
import inspect
import itertools
import json
import re
import shlex
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from sessions import copy_bodies

from pytest_ipc._worker import amplify
from pytest_ipc._worker.amplify import codepoints, stream
from pytest_ipc.config import JITTER_LEVELS

pytest_plugins = ["pytester"]

METHODS = ("fork", "spawn", "forkserver")

# Worker targets live in pytest-free modules so spawn/forkserver workers stay cheap.
# Its own: probes of the amplifier's internals; the scenario bodies are bodies.py's.
HELPERS = '''
import multiprocessing
import os
import random
import sys
import threading

from pytest_ipc._worker import amplify
from pytest_ipc._worker.amplify import codepoints, locks, stream


def points_passed(op):
    """How many preemption points ``op()`` passed, read off this worker's own stream.

    Every point draws from the stream, so replaying choices from the state
    before ``op`` until the state after it counts the points exactly.
    """
    amp = stream._amp
    if amp is None:
        op()
        return None
    before = amp.rng.getstate()
    op()
    after = amp.rng.getstate()
    ref = stream.Amplifier(0, 0, amp.p)
    ref.rng.setstate(before)
    n = 0
    while ref.rng.getstate() != after and n < 10000:
        ref.choose()
        n += 1
    return n


def report_active(flag):
    flag.value = 1 if amplify.is_active() else 0


def probe(method):
    """Objects made here, by the code under test: do their operations pass points?"""
    ctx = multiprocessing.get_context(method)
    v = ctx.Value("i", 0)
    a = ctx.Array("i", 3)
    lock = ctx.Lock()
    q = ctx.Queue()
    mine, theirs = ctx.Pipe()

    def incr():
        v.value += 1

    def array_incr():
        a[1] += 1

    def locked():
        with lock:
            pass

    def queue_round_trip():
        q.put(1)
        q.get(timeout=10)

    def pipe_round_trip():
        mine.send(1)
        theirs.recv()

    flag = ctx.Value("i", -1)
    child = ctx.Process(target=report_active, args=(flag,))
    child.start()
    child.join(30)
    out = {
        "active": amplify.is_active(),
        "value": points_passed(incr),
        "array": points_passed(array_incr),
        "lock": points_passed(locked),
        "queue": points_passed(queue_round_trip),
        "pipe": points_passed(pipe_round_trip),
        "child_active": flag.value,
        "code_points": codepoints.active is not None,
    }
    q.close()
    q.join_thread()
    return out


def main_stream_drew_only_its_own(method, n):
    """Put n items (a point each in this thread; the feeder thread's sends pass points too):
    did this thread's stream move by exactly those n draws?"""
    amp = stream._amp
    ref = random.Random(amp.key)
    q = multiprocessing.get_context(method).Queue()
    for i in range(n):
        q.put(i)
    q.close()
    q.join_thread()  # every item sent: the feeder thread has passed all its points
    fresh = stream.Amplifier(0, 0, amp.p)
    fresh.rng = ref
    for _ in range(n):
        fresh.choose()
    return fresh.rng.getstate() == amp.rng.getstate()


def feeder_waits(method):
    """The waits of the feeder thread of a Queue made here, while it sends one item,
    each with whether the queue's write lock was free."""
    waits, main, wait = [], threading.get_ident(), stream.Amplifier.wait
    q = multiprocessing.get_context(method).Queue()

    def record(amp, choice):
        if threading.get_ident() != main:
            waits.append([choice, q._wlock._semlock._get_value() == 1])
        wait(amp, choice)

    stream.Amplifier.wait = record
    try:
        q.put(1)
        q.close()
        q.join_thread()
    finally:
        stream.Amplifier.wait = wait
    return waits


def first_choices(n):
    return [stream._amp.choose() for _ in range(n)] if stream._amp else None


class ArrayLike:
    """Exposes the NumPy array interface, as a NumPy array on shared memory does."""

    __array_interface__ = {"shape": (1,), "typestr": "|u1", "version": 3}


def code_points_on(*given):
    """Are code points on as the worker starts, given these arguments?"""
    return codepoints.active is not None


def report_code_points(flag, *given):
    flag.value = 1 if codepoints.active is not None else 0


def childs_code_points(method):
    """Are code points on in a child this worker starts with a partial that holds a RawValue?"""
    import functools
    from multiprocessing import sharedctypes

    ctx = multiprocessing.get_context(method)
    flag = ctx.Value("i", -1)
    child = ctx.Process(target=functools.partial(report_code_points, flag, sharedctypes.RawValue("i", 0)))
    child.start()
    child.join(60)
    return flag.value


class HoldsRaw:
    """A Process subclass that keeps what it shares in attributes and works in run()."""

    def __init__(self, flag, raw):
        super().__init__()
        self.flag = flag
        self.raws = [raw]  # one level down, as a target's list argument would be

    def run(self):
        report_code_points(self.flag)


class HoldsRawFork(HoldsRaw, multiprocessing.context.ForkProcess):
    pass


class HoldsRawSpawn(HoldsRaw, multiprocessing.context.SpawnProcess):
    pass


class HoldsRawForkserver(HoldsRaw, multiprocessing.context.ForkServerProcess):
    pass


def subclass_code_points(method):
    """Are code points on in a child of a Process subclass that holds a RawValue?"""
    from multiprocessing import sharedctypes

    flag = multiprocessing.get_context(method).Value("i", -1)
    kind = {"fork": HoldsRawFork, "spawn": HoldsRawSpawn, "forkserver": HoldsRawForkserver}[method]
    child = kind(flag, sharedctypes.RawValue("i", 0))
    child.start()
    child.join(60)
    return flag.value


MODULE_LOCK = multiprocessing.Lock()  # made wherever this module is imported


def lock_kinds(method, shared):
    """Inside ``with`` of a lock given to the worker, one it made, and this module's: under a shared lock?"""
    own = multiprocessing.get_context(method).Lock()
    found = []
    for lock in (shared, own, MODULE_LOCK):
        with lock:
            found.append(locks.under_shared_lock())
    return found


class Recording(stream.Amplifier):
    """A stream whose every point acts (p = 1), recording its draws and waits instead of waiting.

    It records by appending, not by storing through an attribute, so that
    under code points it is no code point itself.
    """

    def __init__(self):
        super().__init__(0, 0, 1.0)
        self.drawn = []
        self.waited = []

    def choose(self, p=None):
        choice = super().choose(p)
        self.drawn.append(choice)
        return choice

    def wait(self, choice):
        self.waited.append(choice)


def ipc_point_counts(op):
    """[draws, waits] of this worker's IPC points while ``op()`` runs, every point acting."""
    recording, old = Recording(), stream._amp
    stream._amp = recording
    try:
        op()
    finally:
        stream._amp = old
    return [len(recording.drawn), len(recording.waited)]


def quiet_points(method, v, a, other):
    """The points around reads and writes of ``v`` and ``a`` (given by the test), with and without locks."""
    own = multiprocessing.get_context(method).Value("i", 0)  # made here: its lock is this worker's own

    def incr():
        v.value += 1

    def incr_locked():
        with v.get_lock():
            v.value += 1

    def array_incr():
        a[1] += 1

    def array_incr_locked():
        with a.get_lock():
            a[1] += 1

    def incr_under_other():
        with other.get_lock():
            v.value += 1

    def own_incr():
        own.value += 1

    def own_incr_locked():
        with own.get_lock():
            own.value += 1

    ops = {"incr": incr, "incr_locked": incr_locked, "array_incr": array_incr,
           "array_incr_locked": array_incr_locked, "incr_under_other": incr_under_other,
           "own_incr": own_incr, "own_incr_locked": own_incr_locked}
    return {name: ipc_point_counts(op) for name, op in ops.items()}


class Counting(stream.Amplifier):
    """The worker's stream at ``p`` with a fixed seed, counting the points that act instead of waiting."""

    def __init__(self, p):
        super().__init__(7, 0, p)
        self.waited = []

    def wait(self, choice):
        self.waited.append(choice)


def check_exits(method, v, boosted, after):
    """Points that act: over ``boosted`` read-only sections of v's lock, then ``after`` more; and as many updates."""
    lock = v.get_lock()

    def sections(n, write):
        for _ in range(n):
            with lock:
                if write:
                    v.value += 1
                else:
                    v.value < 10  # a check: the section reads and does not write

    found = {}
    for name, write in (("checks", False), ("updates", True)):
        amp, old = Counting(0.05), stream._amp
        stream._amp = amp
        try:
            sections(boosted, write)
            first = len(amp.waited)
            sections(after, write)
        finally:
            stream._amp = old
        found[name] = [first, len(amp.waited) - first]
    return found


class Box:
    total = 0


def store_under(lock, box, n):
    for _ in range(n):
        with lock:
            box.total = 1  # a store through an attribute: a code point


def code_point_counts(method, shared, semaphore, n):
    """[draws, waits] of the code points of n stores under each kind of lock, every point acting."""
    points = codepoints.active
    if points is None:
        return None
    own = multiprocessing.get_context(method).Lock()
    box = Box()
    found = {}
    for name, lock in (("shared", shared), ("own", own), ("semaphore", semaphore)):
        recording = Recording()
        points.amp = recording
        store_under(lock, box, n)
        found[name] = [len(recording.drawn), len(recording.waited)]
    return found
'''


def _write_json_test(pytester: pytest.Pytester, body: str) -> None:
    pytester.makepyfile(helpers=HELPERS)
    pytester.makepyfile(
        "import json\nimport pytest\nimport helpers\n\n" + body,
    )


def _read(pytester: pytest.Pytester, name: str = "out.json") -> object:
    return json.loads((pytester.path / name).read_text())


def _probe(pytester: pytest.Pytester, method: str, body: str) -> object:
    """Run the one-test module ``body`` under ``method``; what it wrote to out.json."""
    _write_json_test(pytester, body)
    result = pytester.runpytest_subprocess(f"--ipc-start-method={method}", timeout=60)
    result.assert_outcomes(passed=1)
    return _read(pytester)


ONE_WORKER_TEST = """
@pytest.mark.ipc_race(runs=1{marker})
def test_probe(ipc_workers, ipc_context, ipc_start_method):
    ipc_workers.start({start})
    with open("out.json", "w") as f:
        json.dump(ipc_workers.join()[0], f)
"""


def _one_worker(pytester: pytest.Pytester, method: str, start: str, marker: str = "") -> object:
    """One run of one worker, ``ipc_workers.start(<start>)`` under ``method``: what it returned."""
    return _probe(pytester, method, ONE_WORKER_TEST.format(start=start, marker=marker))


# -- the stream ----------------------------------------------------------------


def _draws(seed: int, index: int, p: float, n: int) -> list[float | None]:
    amp = stream.Amplifier(seed, index, p)
    return [amp.choose() for _ in range(n)]


def test_stream_replays_for_the_same_seed_and_index() -> None:
    """The same (seed, index) gives the same sequence of choices, every time."""
    assert _draws(1234, 3, 0.25, 2000) == _draws(1234, 3, 0.25, 2000)


@pytest.mark.parametrize(("seed", "index"), [(1235, 3), (1234, 4), (4321, 3)])
def test_stream_differs_for_another_seed_or_index(seed: int, index: int) -> None:
    """Another seed or another worker index gives another sequence."""
    assert _draws(seed, index, 0.25, 2000) != _draws(1234, 3, 0.25, 2000)


def test_stream_with_p_zero_never_acts() -> None:
    """p = 0: no point ever yields or sleeps."""
    assert _draws(99, 0, 0.0, 20000) == [None] * 20000


@pytest.mark.parametrize("level", ["low", "high"])
def test_stream_acts_at_the_share_p(level: str) -> None:
    """Over many draws the share of acting points is p, and sleeps are bounded by MAX_SLEEP."""
    p = JITTER_LEVELS[level]
    n = 40000
    draws = _draws(7, 1, p, n)
    acting = [d for d in draws if d is not None]
    # 5 standard deviations of a binomial share: a false alarm is ~1e-6 and the
    # stream is deterministic anyway, so this either always passes or never does.
    sigma = (p * (1 - p) / n) ** 0.5
    assert abs(len(acting) / n - p) < 5 * sigma
    sleeps = [d for d in acting if d > 0]
    share = stream.SLEEP_SHARE
    assert abs(len(sleeps) / len(acting) - share) < 5 * (share * (1 - share) / len(acting)) ** 0.5
    assert all(0 < d <= stream.MAX_SLEEP for d in sleeps)


def test_seed_replays_each_workers_choices(pytester: pytest.Pytester) -> None:
    """--ipc-seed replays every worker's choice sequence; another seed changes it."""
    _write_json_test(
        pytester,
        """
@pytest.mark.ipc_race(runs=1)
def test_choices(ipc_workers):
    ipc_workers.start(helpers.first_choices, args=(50,), count=3)
    with open("out.json", "w") as f:
        json.dump(ipc_workers.join(), f)
""",
    )
    runs = []
    for seed in ("11", "11", "12"):
        result = pytester.runpytest_subprocess("--ipc-start-method=fork", f"--ipc-seed={seed}", timeout=60)
        result.assert_outcomes(passed=1)
        runs.append(_read(pytester))
    first, again, other = runs
    assert first == again
    assert first != other
    # Each worker has a stream of its own.
    assert len({json.dumps(w) for w in first}) == 3  # type: ignore[arg-type]
    assert any(c is not None for c in first[0])  # type: ignore[index]


@pytest.mark.parametrize("method", METHODS)
def test_a_workers_other_threads_leave_its_stream_alone(pytester: pytest.Pytester, method: str) -> None:
    """A Queue's feeder thread draws from a stream of its own: the worker's sequence replays whatever the threads do."""
    found = _one_worker(
        pytester, method, "helpers.main_stream_drew_only_its_own, args=(ipc_start_method, 40)", ', jitter="high"'
    )
    assert found is True


@pytest.mark.parametrize("method", METHODS)
def test_a_queues_feeder_thread_sleeps_before_its_first_write(pytester: pytest.Pytester, method: str) -> None:
    """The feeder thread of a Queue made in a worker sleeps THREAD_START_SLEEP as it starts, not holding the write lock."""
    waits = _one_worker(pytester, method, "helpers.feeder_waits, args=(ipc_start_method,)")
    # One item, then close(): after the start sleep, the feeder passes one
    # point, before its one write, where the stream may or may not act.
    assert waits[0] == [stream.THREAD_START_SLEEP, True]  # type: ignore[index]
    assert len(waits) <= 2  # type: ignore[arg-type]


@contextlib.contextmanager
def _amplified() -> Iterator[stream.Amplifier]:
    """The IPC points switched on in this thread as in a worker's main thread (p = 0: none acts)."""
    amplify.install()
    old = stream._amp, stream._amp_thread, stream._other_threads
    amp = stream.Amplifier(0, 0, 0.0)
    stream._amp, stream._amp_thread, stream._other_threads = amp, threading.get_ident(), itertools.count(1)
    try:
        yield amp
    finally:
        stream._amp, stream._amp_thread, stream._other_threads = old


def test_each_other_thread_has_a_stream_of_its_own() -> None:
    """The n-th other thread to pass a point draws from the n-th stream derived from the worker's."""
    states: list[object] = []

    def elsewhere() -> None:
        for _ in range(30):
            stream.point()
        states.append(stream.current().rng.getstate())  # type: ignore[union-attr]

    with _amplified() as amp:
        main_state = amp.rng.getstate()
        for name in ("first", "second"):
            thread = threading.Thread(target=elsewhere, name=name)
            thread.start()
            thread.join()
        assert amp.rng.getstate() == main_state  # the main thread's stream did not move
    expected = []
    for n in (1, 2):
        derived = amp.derived(f"thread{n}")
        for _ in range(30):
            derived.choose()
        expected.append(derived.rng.getstate())
    assert states == expected


def test_a_threads_first_point_sleeps_and_only_that_one(monkeypatch: pytest.MonkeyPatch) -> None:
    """Even where no point acts (p = 0), another thread sleeps THREAD_START_SLEEP at its first point."""
    waits: list[tuple[str, float]] = []
    monkeypatch.setattr(stream.Amplifier, "wait", lambda self, choice: waits.append((self.key, choice)))

    def elsewhere() -> None:
        for _ in range(30):
            stream.point()

    with _amplified() as amp:
        for _ in range(30):
            stream.point()
        for _ in range(2):
            thread = threading.Thread(target=elsewhere)
            thread.start()
            thread.join()
    sleep = stream.THREAD_START_SLEEP
    assert waits == [(f"{amp.key}:thread1", sleep), (f"{amp.key}:thread2", sleep)]


# -- code points: the worker's own instructions -------------------------------------

# Before Python 3.12 code points use sys.settrace, and a trace function slows
# the whole worker: below jitter high they come on demand, when a worker
# touches shared memory no lock guards.  They step aside for a trace function
# that is already set, coverage.py's under tox -e coverage.
MONITORING = sys.version_info >= (3, 12)
STEP_ASIDE = not MONITORING and sys.gettrace() is not None
CODE_POINTS_AT_LOW = MONITORING
NEEDS_CODE_POINTS = pytest.mark.skipif(
    STEP_ASIDE, reason="a trace function (coverage.py?) is set: code points step aside"
)


def _sum_to(n: int) -> int:
    total = 0
    for i in range(n):
        total += i
    return total


class _Box:
    total = 0


def _fill(n: int) -> int:
    box = _Box()
    box.total = 0  # a store through an attribute: a code point
    items = [0] * n
    for i in range(n):
        items[i] = i  # through a subscript: a code point
        box.total += items[i]  # read, add, then a store: a code point before the write
    return box.total


class _Counting(stream.Amplifier):
    """The code points' stream, counting the points that draw from it (p = 0: none acts)."""

    calls = 0

    def choose(self) -> float | None:
        self.calls += 1
        return super().choose()


def _under(trace: Any, func: Callable[..., Any], *args: Any) -> tuple[Any, Any]:
    """``func(*args)`` with ``trace`` as the trace function: its result, and the trace function after it."""
    old = sys.gettrace()
    sys.settrace(trace)
    try:
        result = func(*args)
        after = sys.gettrace()
    finally:
        sys.settrace(old)
    return result, after


@contextlib.contextmanager
def _code_points(budget: int = 10**6) -> Iterator[codepoints.CodePoints]:
    """Code points switched on in this process as in a worker, with a counting stream."""
    codepoints.trace_own_code(3, 1, 0.0)
    points = codepoints.active
    if points is None and MONITORING:
        # Something else in this test process holds both tool ids (a worker is a fresh process).
        owners = [sys.monitoring.get_tool(t) for t in (3, 4)]  # type: ignore[attr-defined]
        pytest.skip(f"sys.monitoring tool ids 3 and 4 are taken in this process: {owners}")
    try:
        assert points is not None
        points.left = budget
        points.amp = _Counting(3, 1, 0.0)
        yield points
    finally:
        amplify.stop_code_points()


@NEEDS_CODE_POINTS
def test_code_points_fall_on_each_store_through_a_subscript_or_attribute() -> None:
    """One point before each STORE_SUBSCR/STORE_ATTR the worker's own code runs, the same every time."""
    for _ in range(2):
        with _code_points() as points:
            assert _fill(10) == sum(range(10))
        assert points.amp.calls == 1 + 10 * 2  # type: ignore[attr-defined]


@NEEDS_CODE_POINTS
def test_functions_without_stores_are_not_watched() -> None:
    """A function that stores through no subscript or attribute is not watched and costs no events."""
    with _code_points() as idle:
        pass
    with _code_points() as points:
        assert _sum_to(1000) == sum(range(1000))
        assert _fill(3) == 3  # beside one that does
        assert _sum_to.__code__ not in points.watched  # (stopping forgets them on 3.12+)
        assert _fill.__code__ in points.watched
    assert points.amp.calls == 1 + 3 * 2  # type: ignore[attr-defined]  # _fill's stores only
    if MONITORING:  # there only stores are events: _sum_to cost none
        assert points.left == idle.left - 7


def _bump(shm: Any, n: int) -> None:
    for _ in range(n):
        shm.buf[0] += 1  # fetch .buf, read, add, then a store: a code point before it


@NEEDS_CODE_POINTS
@pytest.mark.skipif(MONITORING, reason="from Python 3.12 code points are on from the start")
def test_code_points_come_when_the_worker_touches_a_shared_memory_buffer(monkeypatch: pytest.MonkeyPatch) -> None:
    """At jitter low before 3.12, the first SharedMemory.buf fetch switches code points on, for that very statement too."""
    from multiprocessing import shared_memory

    class Counted(codepoints.CodePoints):
        def __init__(self, *args: Any) -> None:
            super().__init__(*args)
            self.amp = _Counting(3, 1, 0.0)

    monkeypatch.setattr(codepoints, "CodePoints", Counted)
    shm = shared_memory.SharedMemory(create=True, size=8)
    try:
        amplify.activate(3, 1, 0.05)
        try:
            _fill(10)  # stores, but no shared memory: nothing due yet
            assert codepoints.active is None and sys.gettrace() is None
            _bump(shm, 10)
            points = codepoints.active
            assert points is not None and sys.gettrace() is points
        finally:
            amplify.deactivate()
        assert sys.gettrace() is None
        assert points.amp.calls == 10  # type: ignore[attr-defined]
        assert shm.buf[0] == 10
    finally:
        shm.close()
        shm.unlink()


@pytest.mark.skipif(MONITORING, reason="from Python 3.12 code points are on from the start")
def test_code_points_on_demand_wait_for_shared_memory() -> None:
    """At jitter low before 3.12, a worker that touches no unguarded shared memory has no trace function."""
    from multiprocessing import sharedctypes

    synced = sharedctypes.Value("i", 0)
    amplify.activate(3, 1, 0.05, (_fill, synced, [synced], {"v": synced}))
    try:
        _fill(10)
        synced.value += 1
        assert codepoints.active is None
        assert sys.gettrace() is None or STEP_ASIDE
    finally:
        amplify.deactivate()


def _stores_by_dis(code: Any) -> frozenset[int]:
    return frozenset(
        i.offset for i in dis.get_instructions(code) if i.opname in ("STORE_SUBSCR", "STORE_ATTR", "STORE_SLICE")
    )


def test_stores_read_off_the_bytecode_are_the_ones_dis_finds() -> None:
    """The byte scan finds exactly dis's stores, in plain, specialized and instrumented code alike."""
    import _pytest.fixtures
    import _pytest.python

    def functions(*modules: Any) -> Iterator[Any]:
        for module in modules:
            for obj in vars(module).values():
                if inspect.isfunction(obj):
                    yield obj
                elif inspect.isclass(obj):
                    yield from (f for f in vars(obj).values() if inspect.isfunction(f))

    def check() -> None:
        found = 0
        for func in (_fill, _sum_to, *functions(textwrap, _pytest.python, _pytest.fixtures)):
            stores = codepoints._store_offsets(func.__code__)
            assert stores == _stores_by_dis(func.__code__), func.__qualname__
            found += bool(stores)
        assert found > 50

    check()
    if not STEP_ASIDE:  # (under coverage.py's tracer before 3.12 nothing is watched)
        with _code_points():
            for _ in range(100):
                _fill(10)
            check()  # _fill watched: instrumented by sys.monitoring on 3.12+
    for _ in range(100):
        _fill(10)
    check()  # _fill hot: specialized


@NEEDS_CODE_POINTS
def test_stores_past_the_256th_name_are_points_too() -> None:
    """A store whose argument needs an EXTENDED_ARG prefix (reported at the prefix before 3.12) is a point."""
    names = [f"a{i}" for i in range(300)]
    namespace: dict[str, Any] = {}
    exec(compile("def many(o):\n" + "".join(f"    o.{n} = 1\n" for n in names), __file__, "exec"), namespace)
    with _code_points() as points:
        namespace["many"](_Box())
    assert points.amp.calls == 300  # type: ignore[attr-defined]


def test_lines_of_stores_agree_with_a_plain_scan() -> None:
    """The one-pass line lookup gives what checking every line range against every store gives."""
    import _pytest.python

    def plain(code: Any) -> frozenset[Any]:
        offsets = codepoints._store_offsets(code)
        return frozenset(line for start, end, line in code.co_lines() if any(start <= o < end for o in offsets))

    codes = [f.__code__ for _, f in inspect.getmembers(_pytest.python.Function, inspect.isfunction)]
    codes += [f.__code__ for _, f in inspect.getmembers(_pytest.python.Metafunc, inspect.isfunction)]
    codes += [f.__code__ for f in vars(_pytest.python).values() if inspect.isfunction(f)]
    codes += [f.__code__ for f in (_fill, _sum_to, _bump)]
    assert sum(bool(plain(c)) for c in codes) >= 5  # not a vacuous comparison
    for code in codes:
        assert codepoints._lines_of(code, codepoints._store_offsets(code)) == plain(code), code.co_name


class _Raising:
    """An argument whose every attribute lookup fails, or would run user code."""

    def __getattr__(self, name: str) -> Any:
        raise KeyError(name)

    @property
    def __class__(self) -> type:  # type: ignore[override]
        raise RuntimeError("a lazy proxy evaluated")


def test_looking_at_arguments_never_fails_or_evaluates_them() -> None:
    """Whatever a worker is given, switching amplification on looks only at types."""
    from multiprocessing import sharedctypes

    raw = sharedctypes.RawValue("i", 0)
    try:
        amplify.activate(3, 1, 0.05, (_Raising(), [_Raising()], {"k": _Raising()}, list(range(10**6))))
        assert codepoints.active is None or MONITORING
    finally:
        amplify.deactivate()
    # Past the first 64 items of a list nothing is looked at (a raw value there is missed).
    try:
        amplify.activate(3, 1, 0.05, ([0] * 64 + [raw],))
        assert (codepoints.active is not None) is MONITORING
    finally:
        amplify.deactivate()


@pytest.mark.skipif(MONITORING, reason="from Python 3.12 code points are on from the start")
def test_a_forked_childs_activation_drops_its_parents_code_points() -> None:
    """A worker's child inherits the worker's trace function: activating in it starts afresh (on demand)."""
    codepoints.trace_own_code(3, 1, 0.05)  # as in a worker whose code points came
    try:
        amplify.activate(4, 2, 0.05)  # as in its forked child, which touches no shared memory
        assert codepoints.active is None
        assert sys.gettrace() is None or STEP_ASIDE
    finally:
        amplify.deactivate()


@NEEDS_CODE_POINTS
def test_code_points_skip_the_stdlib_and_pytest_ipc() -> None:
    """Stores in the standard library and in pytest-ipc's own code are no code points."""
    with _code_points() as points:
        textwrap.TextWrapper(40)  # its __init__ stores attributes: self.width = width
        stream.Amplifier(1, 1, 0.5)  # so does ours
    assert points.amp.calls == 0  # type: ignore[attr-defined]
    # Skipped for where they live, not for lack of stores.
    assert codepoints._store_offsets(textwrap.TextWrapper.__init__.__code__)
    assert codepoints._store_offsets(stream.Amplifier.__init__.__code__)


@NEEDS_CODE_POINTS
def test_code_points_stop_at_their_budget() -> None:
    """Once the budget is spent no more points pass, and the code still runs right."""
    with _code_points(budget=500) as points:
        assert _fill(10_000) == sum(range(10_000))
        spent = points.amp.calls  # type: ignore[attr-defined]
        assert _fill(100) == sum(range(100))
        assert points.amp.calls == spent  # type: ignore[attr-defined]
    assert points.left <= 0
    assert 0 < spent < 500


def test_an_existing_trace_function_is_kept() -> None:
    """A trace function already set stays set: from 3.12 code points work beside it, before it they step aside."""

    def theirs(frame: Any, event: str, arg: Any) -> None:
        return None

    def switch_on_and_fill() -> tuple[Any, Any]:
        codepoints.trace_own_code(3, 1, 0.0)
        try:
            points = codepoints.active
            if points is not None:
                points.amp = _Counting(3, 1, 0.0)
            _fill(10)
            return points, sys.gettrace()
        finally:
            amplify.stop_code_points()

    (points, during), after = _under(theirs, switch_on_and_fill)
    assert during is theirs and after is theirs
    if sys.version_info >= (3, 12):
        assert points.amp.calls == 21
    else:
        assert points is None


def test_code_stream_replays_and_is_not_the_ipc_stream() -> None:
    """Code points draw from a stream of their own: the IPC points' choices for a seed do not move."""

    def draws(amp: stream.Amplifier) -> list[float | None]:
        return [amp.choose() for _ in range(2000)]

    first = draws(codepoints.CodePoints(5, 2, 0.25).amp)
    assert first == draws(codepoints.CodePoints(5, 2, 0.25).amp)
    assert first != draws(codepoints.CodePoints(5, 3, 0.25).amp)
    assert first != draws(stream.Amplifier(5, 2, 0.25))
    assert any(c is not None for c in first)


@NEEDS_CODE_POINTS
@pytest.mark.parametrize("method", METHODS)
def test_a_workers_child_gets_code_points_for_what_its_target_holds(pytester: pytest.Pytester, method: str) -> None:
    """A child's partial holding a RawValue switches its code points on, through the leak check's wrapper too."""
    assert _one_worker(pytester, method, "helpers.childs_code_points, args=(ipc_start_method,)") == 1


@NEEDS_CODE_POINTS
@pytest.mark.parametrize("method", METHODS)
def test_a_process_subclass_gets_code_points_for_what_it_holds(pytester: pytest.Pytester, method: str) -> None:
    """A Process subclass that overrides run() is amplified in its child, and its attributes are looked at."""
    assert _one_worker(pytester, method, "helpers.subclass_code_points, args=(ipc_start_method,)") == 1


# -- points that stay quiet inside a critical section ----------------------------


@pytest.mark.parametrize("method", METHODS)
def test_points_under_a_values_own_lock_draw_but_stay_quiet(pytester: pytest.Pytester, method: str) -> None:
    """Under ``with v.get_lock()`` the read and write of ``v`` wait nowhere; under another lock, or its own, they do."""
    counts = _one_worker(
        pytester,
        method,
        "helpers.quiet_points, args=(ipc_start_method, ipc_context.Value('i', 0), ipc_context.Array('i', 3), "
        "ipc_context.Value('i', 0))",
    )
    # Unguarded, every point acts: at least one after the read and one before the write.
    for name in ("incr", "array_incr", "own_incr"):
        draws, waits = counts[name]  # type: ignore[index]
        assert draws == waits >= 2, name
    # Guarded by the object's own lock: the points draw as before (the stream
    # moves on alike) plus the two of the user's ``with``, before taking the
    # lock and after leaving it, and only those two act.
    assert counts["incr_locked"] == [counts["incr"][0] + 2, 2]  # type: ignore[index]
    assert counts["array_incr_locked"] == [counts["array_incr"][0] + 2, 2]  # type: ignore[index]
    # The wrong lock, and a lock this worker made (no other worker takes it): all act.
    assert counts["incr_under_other"] == [counts["incr"][0] + 2] * 2  # type: ignore[index]
    assert counts["own_incr_locked"] == [counts["own_incr"][0] + 2] * 2  # type: ignore[index]


@pytest.mark.parametrize("method", METHODS)
def test_the_end_of_a_check_acts_more_often(pytester: pytest.Pytester, method: str) -> None:
    """A section of a shared lock that only read (a check) ends in a point that acts CHECK_BOOST times as often,
    for a worker's first CHECK_BOOSTS; one that also wrote does not.  Seeded: the counts are the same every time."""
    boosted, after = stream.CHECK_BOOSTS, 400
    found = _one_worker(
        pytester, method, f"helpers.check_exits, args=(ipc_start_method, ipc_context.Value('i', 0), {boosted}, {after})"
    )
    checks, updates = found["checks"], found["updates"]  # type: ignore[index]
    # Expected at p = 0.05: checks ~ (0.05 + 0.5) per section, then ~ 0.1 (enter and exit); updates ~ 0.1 throughout.
    assert checks[0] / boosted > 3 * (updates[0] + updates[1]) / (boosted + after), found
    assert checks[0] / boosted > 3 * checks[1] / after, found
    assert abs(checks[1] - updates[1]) < 0.1 * after, found


# A store under a shared lock acts at a quarter of the rate: with every point
# drawing "act" (p = 1), the 200 stores' extra draws decide; the stream is seeded,
# so the count is the same every time, about 50.
CODE_POINT_STORES = 200


@NEEDS_CODE_POINTS
@pytest.mark.parametrize("method", METHODS)
def test_code_points_act_less_under_a_shared_lock(pytester: pytest.Pytester, method: str) -> None:
    """Under a lock other workers share, code points act at a quarter of the rate; under the worker's own, or a Semaphore, at all of it."""
    counts = _one_worker(
        pytester,
        method,
        "helpers.code_point_counts, "
        f"args=(ipc_start_method, ipc_context.Lock(), ipc_context.Semaphore(3), {CODE_POINT_STORES})",
        ', jitter="high"',  # code points on every Python
    )
    n = CODE_POINT_STORES
    shared_draws, shared_waits = counts["shared"]  # type: ignore[index]
    assert shared_draws == n
    assert 0.1 * n < shared_waits < 0.4 * n  # a quarter, give or take the seeded draws
    assert counts["own"] == [n, n]  # type: ignore[index]
    assert counts["semaphore"] == [n, n]  # type: ignore[index]


@pytest.mark.parametrize("method", METHODS)
def test_a_worker_tells_the_locks_it_is_given_from_those_it_makes(pytester: pytest.Pytester, method: str) -> None:
    """Inherited (fork) or unpickled (spawn, forkserver) locks count as shared; those a worker makes do not."""
    found = _one_worker(pytester, method, "helpers.lock_kinds, args=(ipc_start_method, ipc_context.Lock())")
    # A module-level lock is the test process's under fork (its workers share
    # it); a spawn or forkserver worker makes its own as it imports the module.
    assert found == [True, False, method == "fork"]


@pytest.mark.skipif(not MONITORING, reason="sys.monitoring is new in Python 3.12")
def test_code_points_take_no_tool_id_that_others_ask_for() -> None:
    """With tool ids 3 and 4 taken, code points stay off rather than take coverage's or a debugger's."""
    mon = sys.monitoring  # type: ignore[attr-defined]
    others = []
    for tool in (3, 4):
        if mon.get_tool(tool) == codepoints._TOOL_NAME:
            mon.free_tool_id(tool)  # ours from an earlier test of this process
        if mon.get_tool(tool) is None:
            mon.use_tool_id(tool, "another tool")
            others.append(tool)
    try:
        codepoints.trace_own_code(1, 0, 0.05)
        assert codepoints.active is None
        assert codepoints._TOOL_NAME not in [mon.get_tool(t) for t in range(6)]
    finally:
        amplify.stop_code_points()
        for tool in others:
            mon.free_tool_id(tool)


SHM_RACE_TEST = """
from multiprocessing import shared_memory

import bodies

@pytest.fixture
def segment():
    shm = shared_memory.SharedMemory(create=True, size=16)
    shm.buf[0] = 0
    yield shm
    shm.close()
    shm.unlink()

@pytest.mark.ipc_race(runs={runs})
def test_byte(segment, ipc_workers, ipc_outcome):
    ipc_workers.start(bodies.add_to_byte, args=(segment.name, 25), count=9)
    ipc_workers.join()
    ipc_outcome.record(segment.buf[0])
"""

# shm.buf[0] += 1 from 9 workers x 25 (a byte holds the 225), with code points
# at the default jitter: 30 of 30 runs lost updates under each start method and
# Python, ending anywhere from ~25 to ~170, no byte seen in more than 3 of 30
# runs.  Five runs miss only if all five end on the same byte: under
# 0.1 ** 4 = 1e-4, and far less in fact.
SHM_RUNS = 5


@NEEDS_CODE_POINTS
@pytest.mark.parametrize("method", METHODS)
def test_shared_memory_byte_race_is_caught(pytester: pytest.Pytester, method: str) -> None:
    """A read-modify-write of a SharedMemory byte, with no IPC call inside it, is caught in five runs."""
    copy_bodies(pytester)
    _write_json_test(pytester, SHM_RACE_TEST.format(runs=SHM_RUNS))
    result = pytester.runpytest_subprocess(f"--ipc-start-method={method}", timeout=120)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines([f"*RaceDetected: outcomes differ across * runs (start method {method}*"])


# -- where the points reach ---------------------------------------------------------


def test_the_fork_server_preload_brings_every_module_install_patches() -> None:
    """The fork server's preload list imports every module amplification patches; install() imports nothing.

    Otherwise every forkserver worker of a jittered run imports them anew:
    multiprocessing.managers alone is about 5 ms a worker.
    """
    code = (
        "import importlib, sys\n"
        "from pytest_ipc.fixtures import FORK_SERVER_PRELOAD\n"
        "for name in FORK_SERVER_PRELOAD:\n"
        "    importlib.import_module(name)\n"
        "from pytest_ipc._worker import amplify\n"
        "from pytest_ipc._worker.amplify.patches import PATCHES\n"
        "print(sorted(set(PATCHES) - set(sys.modules)))\n"
        "before = set(sys.modules)\n"
        "amplify.install()\n"
        "print(sorted(set(sys.modules) - before))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.split() == ["[]", "[]"], out.stdout


PROBE_TEST = """
@pytest.mark.ipc_race(runs=1{marker})
def test_probe(ipc_workers, ipc_start_method):
    ipc_workers.start(helpers.probe, args=(ipc_start_method,))
    with open("out.json", "w") as f:
        json.dump(ipc_workers.join()[0], f)
"""


@pytest.mark.parametrize("method", METHODS)
def test_points_reach_objects_the_worker_creates(pytester: pytest.Pytester, method: str) -> None:
    """A Value, Array, Lock, Queue and Pipe made inside a worker pass points; its own child is amplified."""
    _write_json_test(pytester, PROBE_TEST.format(marker=""))
    result = pytester.runpytest_subprocess(f"--ipc-start-method={method}", timeout=60)
    result.assert_outcomes(passed=1)
    out = _read(pytester)
    assert out["active"] is True  # type: ignore[index]
    # v.value += 1: a point after the read and one before the write, plus the
    # lock the Synchronized wrapper takes around each of them.
    assert out["value"] >= 2  # type: ignore[index]
    assert out["array"] >= 2  # type: ignore[index]
    assert out["lock"] >= 2  # type: ignore[index]
    assert out["queue"] >= 2  # type: ignore[index]
    assert out["pipe"] >= 2  # type: ignore[index]
    # A process the worker starts itself gets amplification too (the Amplified target).
    assert out["child_active"] == 1  # type: ignore[index]
    # The worker's own code passes code points at jitter low from Python 3.12
    # (before it, only once it touches unguarded shared memory: not here).
    assert out["code_points"] is CODE_POINTS_AT_LOW  # type: ignore[index]


RAW_PROBE_TEST = """
import functools
from multiprocessing import shared_memory, sharedctypes

@pytest.mark.ipc_race(runs=1)
def test_probe(ipc_workers, ipc_context):
    shm = shared_memory.SharedMemory(create=True, size=8)
    try:
        given = {
            "raw": (sharedctypes.RawValue("i", 0),),
            "unlocked": (ipc_context.Value("i", 0, lock=False),),
            "raw_in_list": ([sharedctypes.RawArray("i", 3)],),
            "segment": (shm,),
            "array_like": (helpers.ArrayLike(),),
            "synchronized": (ipc_context.Value("i", 0), ipc_context.Array("i", 3)),
            "nothing": (1, "x"),
        }
        out = {}
        for kind, args in given.items():
            ipc_workers.start(helpers.code_points_on, args=args)
            out[kind] = ipc_workers.join()[-1]  # join() gives every worker of the run so far
        # Held by a partial rather than passed.
        ipc_workers.start(functools.partial(helpers.code_points_on, sharedctypes.RawArray("i", 3)))
        out["partial"] = ipc_workers.join()[-1]
    finally:
        shm.close()
        shm.unlink()
    with open("out.json", "w") as f:
        json.dump(out, f)
"""


@NEEDS_CODE_POINTS
@pytest.mark.parametrize("method", METHODS)
def test_code_points_start_with_a_worker_given_unguarded_shared_memory(pytester: pytest.Pytester, method: str) -> None:
    """Raw ctypes objects and SharedMemory among a worker's arguments bring code points from its start."""
    _write_json_test(pytester, RAW_PROBE_TEST)
    result = pytester.runpytest_subprocess(f"--ipc-start-method={method}", timeout=120)
    result.assert_outcomes(passed=1)
    out = _read(pytester)
    assert out == {  # before 3.12 on demand; from 3.12 always
        "raw": True,
        "unlocked": True,
        "raw_in_list": True,
        "segment": True,
        "array_like": True,
        "partial": True,
        "synchronized": MONITORING,
        "nothing": MONITORING,
    }


@NEEDS_CODE_POINTS
def test_jitter_high_brings_code_points_on_every_python(pytester: pytest.Pytester) -> None:
    """At jitter high the worker's own stores are points whatever the Python (from 3.12 at low too)."""
    _write_json_test(pytester, PROBE_TEST.format(marker=', jitter="high"'))
    result = pytester.runpytest_subprocess("--ipc-start-method=fork", timeout=60)
    result.assert_outcomes(passed=1)
    assert _read(pytester)["code_points"] is True  # type: ignore[index]


@pytest.mark.parametrize(
    ("args", "marker"),
    [(("--ipc-jitter=off",), ""), ((), ", jitter=0"), ((), ', jitter="off"')],
    ids=["option-off", "marker-0", "marker-off"],
)
def test_jitter_off_really_turns_it_off(pytester: pytest.Pytester, args: tuple[str, ...], marker: str) -> None:
    """--ipc-jitter=off or jitter=0: no point is active in the worker or in its children."""
    _write_json_test(pytester, PROBE_TEST.format(marker=marker))
    result = pytester.runpytest_subprocess("--ipc-start-method=fork", *args, timeout=60)
    result.assert_outcomes(passed=1)
    out = _read(pytester)
    assert out == {  # no stream at all: points_passed() returns None
        "active": False,
        "value": None,
        "array": None,
        "lock": None,
        "queue": None,
        "pipe": None,
        "child_active": 0,
        "code_points": False,
    }


@pytest.mark.parametrize("method", METHODS)
def test_processes_the_test_starts_itself_are_amplified(pytester: pytest.Pytester, method: str) -> None:
    """A Process started by the test (not ipc_workers) runs with amplification on, and only in race runs."""
    _write_json_test(
        pytester,
        f"""
import multiprocessing

def _child_active():
    ctx = multiprocessing.get_context({method!r})
    flag = ctx.Value("i", -1)
    p = ctx.Process(target=helpers.report_active, args=(flag,))
    p.start()
    p.join(30)
    return flag.value

@pytest.mark.ipc_race(runs=1)
def test_in_race(ipc_outcome):
    ipc_outcome.record(_child_active())
    with open("race.json", "w") as f:
        json.dump(_child_active(), f)

def test_plain():
    with open("plain.json", "w") as f:
        json.dump(_child_active(), f)
""",
    )
    result = pytester.runpytest_subprocess(timeout=60)
    result.assert_outcomes(passed=2)
    assert _read(pytester, "race.json") == 1
    assert _read(pytester, "plain.json") == 0


# -- what it catches ------------------------------------------------------------------------

# The tutorial's main(): 9 Processes started one by one, each v.value += 1 fifty times.
TUTORIAL_TEST = """
import multiprocessing
from multiprocessing import Process, Value

import pytest
import bodies

def main():
    share_value = Value("i", 0)
    processes = []
    for _ in range(1, 10):
        p = Process(target=bodies.add, args=(share_value, 50))
        p.start()
        processes.append(p)
    for p in processes:
        p.join()
    return share_value.value

@pytest.mark.ipc_race(runs=3, expect=450)
def test_main(ipc_outcome):
    multiprocessing.set_start_method({method!r}, force=True)
    ipc_outcome.record(main())
"""


@pytest.mark.parametrize("method", METHODS)
def test_race_in_the_tutorials_main_is_caught(pytester: pytest.Pytester, method: str) -> None:
    """The tutorial's own main(), Processes started one by one, is reported as a race in three runs."""
    # Without amplification this main() lost updates in 0 of 4 spawn runs and
    # 0 of 12 forkserver runs (bench/detection.py, plain mode).  With jitter low
    # every run lost updates (measured: fork 30/30, forkserver 20/20, spawn 8/8,
    # totals spread over 100-380 with no value seen more than twice in 30), so
    # three runs that all agree on one total would be a ~1e-3 event at worst.
    copy_bodies(pytester)
    pytester.makepyfile(TUTORIAL_TEST.format(method=method))
    result = pytester.runpytest_subprocess(timeout=120)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines([f"*RaceDetected: outcomes differ across * runs (start method {method}, *jitter low)*"])


RACY_TEST = """
import pytest
import bodies

@pytest.mark.ipc_race(runs={runs})
def test_counter(shared_value, ipc_workers):
    ipc_workers.start(bodies.add, args=(shared_value, 50), count=9)
    ipc_workers.join()
"""

# The unlocked 9 x 50 counter with jitter low lost updates in every run measured
# on the loaded 2-core machine (bench/detection.py: fork 30/30, forkserver 12/12,
# spawn 4/4; here in the tutorial test fork 30/30, forkserver 20/20, spawn 8/8),
# with totals spread over ~100-380 and no total seen more than twice in 30 runs.
# Three runs miss only if all three agree on one total: ~1e-3 at the very worst.
RACY_RUNS = 3


@pytest.mark.parametrize("method", METHODS)
def test_unlocked_counter_is_caught_in_a_few_runs(pytester: pytest.Pytester, method: str) -> None:
    """The seed's unlocked 9 x 50 counter is reported as a race within three runs."""
    copy_bodies(pytester)
    pytester.makepyfile(RACY_TEST.format(runs=RACY_RUNS))
    result = pytester.runpytest_subprocess(f"--ipc-start-method={method}", timeout=120)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [f"*RaceDetected: totals differ across * runs (start method {method}, seed *, jitter low)*"]
    )


def test_failure_names_the_amplification_and_the_rerun_reproduces_it(pytester: pytest.Pytester) -> None:
    """The race report names the jitter level, and its rerun line replays the same verdict and seed."""
    copy_bodies(pytester)
    pytester.makepyfile(RACY_TEST.format(runs=RACY_RUNS))
    result = pytester.runpytest_subprocess("--ipc-start-method=fork", "--ipc-seed=4242", timeout=60)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*totals differ across * runs (start method fork, seed 4242, jitter low)*"])
    rerun = next(line for line in result.outlines if line.startswith("rerun: pytest "))
    argv = shlex.split(rerun[len("rerun: pytest ") :])
    assert "--ipc-seed=4242" in argv
    again = pytester.runpytest_subprocess(*argv, timeout=60)
    again.assert_outcomes(failed=1)
    again.stdout.fnmatch_lines(["*totals differ across * runs (start method fork, seed 4242, jitter low)*"])


def test_failure_names_a_marker_jitter_level(pytester: pytest.Pytester) -> None:
    """jitter="high" on the marker is what the report names and what the rerun line carries."""
    copy_bodies(pytester)
    pytester.makepyfile(RACY_TEST.format(runs=f'{RACY_RUNS}, jitter="high"'))
    result = pytester.runpytest_subprocess("--ipc-start-method=fork", "--ipc-seed=7", timeout=60)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*totals differ across * runs (start method fork, seed 7, jitter high)*"])
    rerun = next(line for line in result.outlines if line.startswith("rerun: pytest "))
    assert re.search(r"--ipc-jitter=(high|0\.25)\b", rerun), rerun


# -- what it must not report -------------------------------------------------------------------

CORRECT_TEST = """
import multiprocessing

import pytest
import bodies


@pytest.fixture(scope="module")
def manager():
    with multiprocessing.get_context("fork").Manager() as m:
        yield m


@pytest.mark.ipc_race(runs={runs}, expect=450)
def test_locked_counter(shared_value, ipc_workers):
    ipc_workers.start(bodies.add_locked, args=(shared_value, 50), count=9)
    ipc_workers.join()


@pytest.mark.ipc_race(runs={runs})
def test_sentinel_fan_in(fanin_queue, ipc_workers, ipc_outcome):
    ipc_workers.start(bodies.produce, args=(fanin_queue, 25), count=4)
    items = fanin_queue.collect(producers=4)
    ipc_workers.join()
    ipc_outcome.record(tuple(sorted(items)))


@pytest.mark.ipc_race(runs={runs}, expect=100)
def test_ping_pong(pipe_pair, ipc_workers, ipc_outcome):
    ipc_workers.start(bodies.pong, args=(pipe_pair.child, 50))
    x = 0
    for _ in range(50):
        pipe_pair.parent.send(x)
        x = pipe_pair.parent.recv() + 1
    ipc_workers.join()
    ipc_outcome.record(x)


@pytest.mark.ipc_race(runs={manager_runs}, expect=90)
def test_manager_dict_with_manager_lock(manager, ipc_workers, ipc_outcome):
    d = manager.dict({{"n": 0}})
    ipc_workers.start(bodies.add_to_dict_locked, args=(d, manager.Lock(), 10), count=9)
    ipc_workers.join()
    ipc_outcome.record(d["n"])
"""

CORRECT_RUNS = 100
CORRECT_MANAGER_RUNS = 20


def test_correct_code_is_never_reported(pytester: pytest.Pytester) -> None:
    """Locked counter, sentinel fan-in, ping-pong pipe and a Manager dict under a manager Lock pass every run."""
    copy_bodies(pytester)
    pytester.makepyfile(CORRECT_TEST.format(runs=CORRECT_RUNS, manager_runs=CORRECT_MANAGER_RUNS))
    # jitter high: more points act than by default, so this is the harder check.
    result = pytester.runpytest_subprocess("--ipc-start-method=fork", "--ipc-jitter=high", timeout=240)
    result.assert_outcomes(passed=4)
    result.stdout.fnmatch_lines(
        [
            f"*test_locked_counter * {CORRECT_RUNS} runs *1 outcome*passed*",
            f"*test_sentinel_fan_in * {CORRECT_RUNS} runs *1 outcome*passed*",
            f"*test_ping_pong * {CORRECT_RUNS} runs *1 outcome*passed*",
            f"*test_manager_dict_with_manager_lock * {CORRECT_MANAGER_RUNS} runs *1 outcome*passed*",
        ]
    )

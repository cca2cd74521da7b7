"""The start gate of ``ipc_race`` runs: the workers of separate ``start()`` calls begin together.

Each test writes a small session and runs it in a pytest subprocess under
fork, spawn and forkserver, then checks what the workers recorded and that
nothing outlived the session (processes, /dev/shm entries, worker group
directories; the inner session's own leak check fails a test that leaves a
pipe open).  That the gate held the workers is read from a shared tick
counter, never from timing: the test takes a tick after its last
``start()`` returned, and every worker takes one as it begins; a worker that
began before the gate opened would hold a smaller tick.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from sessions import InnerRun as Run
from sessions import inner_sessions

METHODS = ["fork", "spawn", "forkserver"]

# No pytest here: spawn workers import it.  Every worker records its pid.
# Its own: a tick log and the waits that the gate's tests are about.
HELPERS = '''
import time

from bodies import record_pid as record

# Index 0 of a tick log is the counter, 1 the test's tick, then a begin and an
# end tick for each worker slot (-1 until taken).
def new_log(ctx, slots):
    return ctx.Array("i", [0, -1] + [-1] * (2 * slots), lock=False)


def tick(log, lock):
    with lock:
        n = log[0]
        log[0] = n + 1
    return n


def span(log, lock, slot, slots):
    """Take a begin tick, stay until every slot has begun (at most 20 s), take an end tick."""
    record()
    log[2 + 2 * slot] = tick(log, lock)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        with lock:
            if all(log[2 + 2 * s] >= 0 for s in range(slots)):
                break
    log[3 + 2 * slot] = tick(log, lock)


def wait_until(check, what):
    """Spin until check() is true (at most 20 s): a wait the gate cannot see."""
    deadline = time.monotonic() + 20
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"still waiting for {what}")


def busy(seconds):
    """The test at work in its own process for a while (not waiting for anyone)."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass


def echo(conn):
    record()
    conn.send(conn.recv())


def produce(q, n):
    record()
    for i in range(n):
        q.put(i)
    q.put(q.DONE)


def answer(how, obj):
    """The worker's side of each kind of wait in test_each_kind_of_wait_opens_the_gate."""
    record()
    if how == "barrier":
        obj.wait(8)
    elif how == "event":
        obj.set()
    elif how == "semaphore":
        obj.release()
    elif how == "joinable":
        obj.get(timeout=8)
        obj.task_done()


def double(x):
    return 2 * x


def put_one(q):
    record()
    q.put("one")

'''

# What every session below checks of a tick log: the gate held every worker
# until the test had taken its tick (after its last start() returned), and
# the workers' spans overlap: each began before any other ended (span() waits
# for all to begin, so with the gate this is certain, not a matter of luck).
CHECKS = """
def held_then_overlapped(log, slots):
    begins = [log[2 + 2 * s] for s in range(slots)]
    ends = [log[3 + 2 * s] for s in range(slots)]
    assert min(begins) > log[1], f"a worker began before the gate opened: {begins}, test tick {log[1]}"
    assert max(begins) < min(ends), f"spans do not overlap: begins {begins}, ends {ends}"
"""

GATED = (
    """
import multiprocessing.connection as mpc
import pytest
import bodies
import helpers
from helpers import new_log, span, tick
"""
    + CHECKS
    + """

@pytest.mark.ipc_race(runs=3)
def test_join_opens_the_gate(ipc_context, ipc_workers, ipc_outcome):
    lock, log = ipc_context.Lock(), new_log(ipc_context, 3)
    for slot in range(3):
        ipc_workers.start(span, args=(log, lock, slot, 3), name=f"slot{slot}")
    log[1] = tick(log, lock)
    ipc_workers.join()
    held_then_overlapped(log, 3)
    ipc_outcome.record("ok")


@pytest.mark.ipc_race(runs=3)
def test_release_opens_the_gate(ipc_context, ipc_workers, ipc_outcome):
    lock, log = ipc_context.Lock(), new_log(ipc_context, 2)
    ipc_workers.start(span, args=(log, lock, 0, 2), name="writer")
    ipc_workers.start(span, args=(log, lock, 1, 2), name="reader")
    log[1] = tick(log, lock)
    ipc_workers.release()
    ipc_workers.release()  # opening an open gate does nothing
    helpers.wait_until(lambda: log[3] >= 0 and log[5] >= 0, "both workers to end")
    ipc_workers.join()
    held_then_overlapped(log, 2)
    ipc_outcome.record("ok")


@pytest.mark.ipc_race(runs=3)
def test_collect_opens_the_gate(ipc_context, ipc_workers, fanin_queue, ipc_outcome):
    lock, log = ipc_context.Lock(), new_log(ipc_context, 2)
    ipc_workers.start(span, args=(log, lock, 0, 2))
    ipc_workers.start(helpers.produce, args=(fanin_queue, 5), name="producer")
    ipc_workers.start(span, args=(log, lock, 1, 2))
    log[1] = tick(log, lock)
    assert fanin_queue.collect(producers=1) == [0, 1, 2, 3, 4]
    ipc_workers.join()
    held_then_overlapped(log, 2)
    ipc_outcome.record("ok")


@pytest.mark.ipc_race(runs=3)
def test_talk_before_the_second_start(ipc_context, ipc_workers, pipe_pair, shared_value, ipc_outcome):
    # Talking to the first worker opens the gate: no deadlock, and the
    # second worker, started after, goes at once.
    ipc_workers.start(helpers.echo, args=(pipe_pair.child,), name="echo")
    pipe_pair.parent.send("hello")
    assert pipe_pair.parent.poll(20)
    assert pipe_pair.parent.recv() == "hello"
    ipc_workers.start(bodies.record_then_add_locked, args=(shared_value, 1))
    helpers.wait_until(lambda: shared_value.value == 1, "the second worker")
    ipc_workers.join()
    ipc_outcome.record("ok")


@pytest.mark.ipc_race(runs=3)
def test_a_blocking_recv_alone_opens_the_gate(ipc_context, ipc_workers, pipe_pair, ipc_outcome):
    # The worker only answers: the test's recv() is what lets it go.
    bumped = ipc_context.Value("i", 0)
    ipc_workers.start(bodies.record_then_add_locked, args=(bumped, 1))
    mine, theirs = ipc_context.Pipe()
    try:
        ipc_workers.start(helpers.echo, args=(theirs,), name="echo")
        lock = ipc_context.Lock()
        with lock:  # a lock that does not block leaves the gate shut
            pass
        assert lock.acquire(timeout=5)
        lock.release()
        event = ipc_context.Event()
        event.set()
        assert event.wait(5)  # a set Event does not wait
        assert bumped.value == 0  # so the gate is still shut
        assert mine.poll() is False  # nothing there: this opens the gate
        mine.send("ping")
        assert mine.recv() == "ping"
    finally:
        mine.close()
        theirs.close()
    ipc_workers.join()
    ipc_outcome.record("ok")


@pytest.mark.ipc_race(runs=3)
def test_a_thread_of_the_test_talking_opens_the_gate(ipc_context, ipc_workers, pipe_pair, ipc_outcome):
    import threading

    answers = []

    def talk():
        pipe_pair.parent.send("from a thread")
        answers.append(pipe_pair.parent.recv())

    ipc_workers.start(helpers.echo, args=(pipe_pair.child,), name="echo")
    thread = threading.Thread(target=talk)
    thread.start()
    thread.join(20)  # Thread.join is not one of the gate's waits: the thread's send opens it
    assert answers == ["from a thread"]
    ipc_workers.join()
    ipc_outcome.record("ok")


@pytest.mark.ipc_race(runs=3)
def test_a_queue_feeder_thread_leaves_the_gate_shut(ipc_context, ipc_workers, fanin_queue, ipc_outcome):
    lock, log = ipc_context.Lock(), new_log(ipc_context, 2)
    ipc_workers.start(span, args=(log, lock, 0, 2))
    fanin_queue.put("work")  # its feeder thread writes the item into the pipe
    fanin_queue.close()
    fanin_queue.join_thread()  # ... and has, by now
    ipc_workers.start(span, args=(log, lock, 1, 2))
    log[1] = tick(log, lock)
    ipc_workers.join()
    held_then_overlapped(log, 2)
    ipc_outcome.record("ok")


@pytest.mark.ipc_race(runs=2)
def test_a_manager_proxy_get_opens_the_gate_and_setting_up_does_not(
    ipc_context, ipc_workers, ipc_manager, ipc_outcome
):
    lock, log = ipc_context.Lock(), new_log(ipc_context, 2)
    q = ipc_manager.Queue()
    ipc_workers.start(span, args=(log, lock, 0, 2))
    items = ipc_manager.list([1])  # talking to the Manager's server is not waiting for the workers
    items.append(2)
    ipc_workers.start(helpers.put_one, args=(q,))
    ipc_workers.start(span, args=(log, lock, 1, 2))
    log[1] = tick(log, lock)
    assert q.get(timeout=20) == "one"
    ipc_workers.join()
    held_then_overlapped(log, 2)
    assert list(items) == [1, 2]
    ipc_outcome.record("ok")


@pytest.mark.ipc_race(runs=2)
def test_processes_the_test_starts_itself_are_not_held(ipc_context, ipc_workers, shared_value, ipc_outcome):
    lock, log = ipc_context.Lock(), new_log(ipc_context, 1)
    ipc_workers.start(span, args=(log, lock, 0, 1))
    own = ipc_context.Process(target=bodies.record_then_add_locked, args=(shared_value, 1))
    own.start()
    helpers.wait_until(lambda: shared_value.value == 1, "the test's own process")
    pool = ipc_context.Pool(2)
    try:
        assert pool.map(helpers.double, [1, 2, 3]) == [2, 4, 6]  # its threads' traffic leaves the gate shut
        log[1] = tick(log, lock)
    finally:
        pool.close()
        pool.join()  # waits on processes: this opens the gate
    own.join()
    ipc_workers.join()
    held_then_overlapped(log, 1)
    ipc_outcome.record("ok")


# Each of these waits would last until the gate's deadline (ipc_timeout 10 s)
# if it did not open the gate: the 8 s ones fail first, the JoinableQueue's
# join() (which has no timeout) fails naming the held worker.
@pytest.mark.ipc_race(runs=2)
@pytest.mark.ipc_timeout(10)
@pytest.mark.parametrize("how", ["barrier", "event", "semaphore", "joinable", "sentinel"])
def test_each_kind_of_wait_opens_the_gate(ipc_context, ipc_workers, how, ipc_outcome):
    make = {
        "barrier": lambda: ipc_context.Barrier(2),
        "event": ipc_context.Event,
        "semaphore": lambda: ipc_context.Semaphore(0),
        "joinable": ipc_context.JoinableQueue,
        "sentinel": lambda: None,
    }
    obj = make[how]()
    if how == "joinable":
        obj.put("job")
    [worker] = ipc_workers.start(helpers.answer, args=(how, obj))
    if how == "barrier":
        obj.wait(8)
    elif how == "event":
        assert obj.wait(8)
    elif how == "semaphore":
        assert obj.acquire(timeout=8)
    elif how == "joinable":
        obj.join()
        obj.close()
        obj.join_thread()
    else:
        assert mpc.wait([worker.process.sentinel], 8)
    ipc_workers.join()
    ipc_outcome.record("ok")


@pytest.mark.ipc_race(runs=2)
def test_the_patches_are_in_only_while_workers_are_held(ipc_context, ipc_workers, pipe_pair, ipc_outcome):
    before = mpc._ConnectionBase.__dict__["recv"], mpc.wait
    ipc_workers.start(helpers.echo, args=(pipe_pair.child,))
    assert mpc._ConnectionBase.__dict__["recv"] is not before[0]
    pipe_pair.parent.send("x")
    assert (mpc._ConnectionBase.__dict__["recv"], mpc.wait) == before
    assert pipe_pair.parent.recv() == "x"
    ipc_workers.join()
    ipc_outcome.record("ok")


def test_without_ipc_race_each_start_goes_at_once(ipc_context, ipc_workers, shared_value):
    before = mpc._ConnectionBase.__dict__["recv"]
    ipc_workers.start(bodies.record_then_add_locked, args=(shared_value, 1))
    assert mpc._ConnectionBase.__dict__["recv"] is before
    helpers.wait_until(lambda: shared_value.value == 1, "the first worker, before the second start")
    ipc_workers.start(bodies.record_then_add_locked, args=(shared_value, 1))
    ipc_workers.join()
    assert shared_value.value == 2
"""
)

HUNG = """
import time
import pytest
import bodies
import helpers


@pytest.mark.ipc_race(runs=1)
@pytest.mark.ipc_timeout(2)
def test_waits_where_the_gate_cannot_see(ipc_workers, shared_value):
    ipc_workers.start(bodies.record_then_add_locked, args=(shared_value, 1), name="first")
    ipc_workers.start(bodies.record_then_add_locked, args=(shared_value, 1), name="second")
    helpers.wait_until(lambda: shared_value.value == 2, "the workers")
    ipc_workers.join()
"""

# Each start() moves the gate's deadline on: 3 s of work after each of two
# starts keeps the workers held for more than the 5 s ipc_timeout in all, and
# the test is not reported (a start() would have to take 2 s to spoil it).
SLOW_STARTS = """
import time
import pytest
import bodies
import helpers


@pytest.mark.ipc_race(runs=1)
@pytest.mark.ipc_timeout(5)
def test_slow_starts(ipc_workers, shared_value):
    first = time.monotonic()
    ipc_workers.start(bodies.record_then_add_locked, args=(shared_value, 1), name="first")
    helpers.busy(3)
    ipc_workers.start(bodies.record_then_add_locked, args=(shared_value, 1), name="second")
    helpers.busy(3)
    assert time.monotonic() - first > 5
    assert shared_value.value == 0  # both still held
    ipc_workers.join()
    assert shared_value.value == 2
"""

HUNG_TIMEOUT = """
import time
import pytest
import bodies
import helpers


@pytest.mark.ipc_race(runs=1)
@pytest.mark.ipc_timeout(1)
@pytest.mark.timeout(4, method="signal")
def test_hangs(ipc_workers, shared_value):
    ipc_workers.start(bodies.record_then_add_locked, args=(shared_value, 1), name="held")
    time.sleep(60)
"""


@pytest.fixture
def run_inner(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Callable[..., Run]:
    """Runs the session written in ``pytester`` under a start method and checks nothing is left."""
    return inner_sessions(pytester, monkeypatch, tmp_path, HELPERS, timeout=120)


@pytest.mark.parametrize("method", METHODS)
def test_workers_of_separate_starts_wait_at_one_gate(
    pytester: pytest.Pytester, run_inner: Callable[..., Run], method: str
) -> None:
    """join(), release(), collect(), blocking waits (recv, Barrier, Event, Semaphore, JoinableQueue,
    sentinels, a Manager queue's get) and talk (a thread's too) open the gate.

    What does not wait leaves it shut (a lock free to take, a set Event, a
    Queue's feeder thread, a Manager's set-up, a Pool's traffic), processes
    the test starts itself are not held, and outside ipc_race nothing changes.
    """
    pytester.makepyfile(test_gated=GATED)
    run = run_inner(method=method)
    run.result.assert_outcomes(passed=16)
    # 3 runs x (3 + 2 + 3 + 2 + 2 + 1 + 2) workers, 2 runs x (3 + 2 + 5 x 1 + 1), and 2
    # outside ipc_race (the Pool's workers record nothing).
    assert len(run.pids) == 3 * 15 + 2 * 11 + 2


@pytest.mark.parametrize("method", METHODS)
def test_a_gate_that_never_opens_is_reported_naming_the_held_workers(
    pytester: pytest.Pytester, run_inner: Callable[..., Run], method: str
) -> None:
    """A test that waits where the gate cannot see is let go at its ipc_timeout, and fails naming the workers."""
    pytester.makepyfile(test_hung=HUNG)
    run = run_inner(method=method)
    run.result.assert_outcomes(failed=1)
    run.result.stdout.fnmatch_lines(
        [
            "*RunsFailed: failed in 1 of 1 runs*",
            "E * pytest_ipc.WorkerTimeout: the start gate was still closed *s after the last "
            "ipc_workers.start() (ipc_timeout 2s): worker 'first-0' (pid *), worker 'second-1' (pid *) "
            "were held there, because the test had neither waited on them, talked to them nor returned; "
            "they let themselves go at the timeout.*call ipc_workers.release() before it waits",
        ]
    )
    assert len(run.pids) == 2
    # The gate's deadline, then the rest of the test; not the 20 s of wait_until.
    assert run.elapsed < 2 + 15


@pytest.mark.parametrize("method", ["fork", "forkserver"])
def test_each_start_moves_the_gates_deadline_on(
    pytester: pytest.Pytester, run_inner: Callable[..., Run], method: str
) -> None:
    """A test that spends longer than its ipc_timeout starting workers, but never that long idle, passes."""
    pytester.makepyfile(test_slow=SLOW_STARTS)
    run = run_inner(method=method)
    run.result.assert_outcomes(passed=1)
    assert len(run.pids) == 2


def test_a_hung_test_body_reports_the_workers_held_at_the_gate(
    pytester: pytest.Pytester, run_inner: Callable[..., Run]
) -> None:
    """pytest-timeout ends a test that hangs before it waits: its teardown names the held worker."""
    pytest.importorskip("pytest_timeout")
    pytester.makepyfile(test_hung=HUNG_TIMEOUT)
    run = run_inner("-p", "pytest_timeout", method="fork")
    run.result.stdout.fnmatch_lines(
        [
            "*Failed: Timeout*",
            "E * pytest_ipc.WorkerTimeout: the start gate was still closed *s after the last "
            "ipc_workers.start() (ipc_timeout 1s): worker 'held-0' (pid *) was held there*",
        ]
    )
    run.result.stdout.no_fnmatch_line("*passed*")
    assert len(run.pids) == 1

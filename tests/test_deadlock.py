"""The lock report of a hang: the wait-for cycle of a deadlock, printed before the stacks.

Each test writes a small session whose workers hang on ``multiprocessing``
locks (or not on locks at all) and runs it in a pytest subprocess under fork,
spawn and forkserver, plain and under ``ipc_race``; it checks the report
line by line, with the user's line numbers, the same facts on the
``WorkerTimeout`` (``deadlock``, ``lock_waits``, written to a JSON file by
the inner test), and that nothing outlived the session: no worker process,
no semaphore in /dev/shm, no worker group directory (``run_inner``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import pytest
from sessions import InnerRun as Run
from sessions import inner_sessions

METHODS = ["fork", "spawn", "forkserver"]

# The workers' targets, in a module that does not import pytest (spawn
# workers start fast).  Every target records its pid first.  The tags in the
# comments mark the lines the report must name.
HELPERS = """
import os
import signal
import threading
import time


def record():
    with open(os.environ["IPC_TEST_PIDFILE"], "a") as f:
        f.write(f"{os.getpid()}\\n")


def left(lock_a, lock_b, barrier):
    record()
    with lock_a:  # LEFT-TAKES-A
        barrier.wait()
        with lock_b:  # LEFT-WAITS-B
            pass


def right(lock_a, lock_b, barrier):
    record()
    lock_b.acquire()  # RIGHT-TAKES-B
    barrier.wait()
    lock_a.acquire()  # RIGHT-WAITS-A


def ring(mine, theirs, barrier):
    record()
    with mine:  # RING-TAKES
        barrier.wait()
        theirs.acquire()  # RING-WAITS


def wait_for(lock):
    record()
    lock.acquire()  # WAIT-FOR


def hold_and_sleep(lock, taken):
    record()
    with lock:  # HOLD-AND-SLEEP
        taken.set()
        time.sleep(600)


def wait_after(taken, lock):
    record()
    taken.wait()
    with lock:  # WAIT-AFTER
        pass


def crossed(lock_a, lock_b):
    record()
    barrier = threading.Barrier(2)

    def other():
        with lock_b:  # OTHER-TAKES-B
            barrier.wait()
            lock_a.acquire()  # OTHER-WAITS-A

    threading.Thread(target=other, name="other", daemon=True).start()
    with lock_a:  # MAIN-TAKES-A
        barrier.wait()
        lock_b.acquire()  # MAIN-WAITS-B


def spawner(method, lock_a, lock_b):
    # Starts the pair itself, as code under test does, and waits for it.
    import multiprocessing

    record()
    ctx = multiprocessing.get_context(method)
    barrier = ctx.Barrier(2)
    pair = [ctx.Process(target=f, args=(lock_a, lock_b, barrier)) for f in (left, right)]
    for p in pair:
        p.start()
    for p in pair:
        p.join()


def spin():
    record()
    while True:
        pass


def deaf():
    record()
    signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGURG])  # blocks pytest-ipc's query
    time.sleep(600)  # DEAF
"""

# A private prefix for the inner session's named semaphores, so that what it
# leaves in /dev/shm can be told apart from other processes' entries.
CONFTEST = """
import multiprocessing
import os

multiprocessing.current_process()._config["semprefix"] = "/" + os.environ["IPC_TEST_SEMPREFIX"]
"""

# The inner tests write what the WorkerTimeout carries into facts-<test>.json.
PAIR = """
import json
import pytest
import pytest_ipc
import helpers


def keep_facts(name, exc):
    with open(f"facts-{name}.json", "w") as f:
        json.dump({"deadlock": exc.deadlock, "lock_waits": exc.lock_waits}, f)


@pytest.mark.ipc_timeout(2)
def test_pair(ipc_workers, ipc_context):
    lock_a = ipc_context.Lock()  # CREATE-A
    lock_b = ipc_context.Lock()  # CREATE-B
    barrier = ipc_context.Barrier(2)
    ipc_workers.start(helpers.left, args=(lock_a, lock_b, barrier), name="left")
    ipc_workers.start(helpers.right, args=(lock_a, lock_b, barrier), name="right")
    try:
        ipc_workers.join()
    except pytest_ipc.WorkerTimeout as exc:
        keep_facts("pair", exc)
        raise
"""


def lines_of(path: Path) -> Callable[[str], int]:
    """The line number in ``path`` of the line carrying a tag."""
    text = path.read_text().splitlines()

    def line(tag: str) -> int:
        found = [n for n, line in enumerate(text, start=1) if f"# {tag}" in line]
        assert len(found) == 1, (tag, found)
        return found[0]

    return line


def reports(run: Run) -> list[list[str]]:
    """Each WorkerTimeout message of the session, as lines, from its headline to its first stack."""
    out: list[list[str]] = []
    current: list[str] | None = None
    indent = 0
    for line in run.result.stdout.lines:
        if "pytest_ipc.WorkerTimeout: " in line and line.startswith("E "):
            # pytest indents an exception's lines as deep as the line that raised it.
            indent = line.index("pytest_ipc.WorkerTimeout: ")
            current = [line[indent:]]
            out.append(current)
        elif current is not None and line.startswith("E "):
            current.append(line[indent:])
            if line[indent:].startswith("--- stack of"):
                current = None
        else:
            current = None
    return out


def facts(pytester: pytest.Pytester, name: str) -> dict[str, list[dict[str, object]]]:
    with open(pytester.path / f"facts-{name}.json") as f:
        return json.load(f)  # type: ignore[no-any-return]


@pytest.fixture
def run_inner(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Callable[..., Run]:
    """Runs the session written in ``pytester`` under a start method and checks nothing is left."""
    return inner_sessions(pytester, monkeypatch, tmp_path, HELPERS, CONFTEST, timeout=90)


def pair_report(pytester: pytest.Pytester, test_file: str) -> list[str]:
    h = lines_of(pytester.path / "helpers.py")
    t = lines_of(pytester.path / test_file)
    lock_a = f"lock_a (Lock, created at {test_file}:{t('CREATE-A')})"
    lock_b = f"lock_b (Lock, created at {test_file}:{t('CREATE-B')})"
    return [
        "deadlock: a wait-for cycle of 2 workers",
        f"  'left-0'  holds {lock_a}, taken at helpers.py:{h('LEFT-TAKES-A')} in left",
        f"            waits for {lock_b} at helpers.py:{h('LEFT-WAITS-B')} in left",
        f"  'right-1' holds {lock_b}, taken at helpers.py:{h('RIGHT-TAKES-B')} in right",
        f"            waits for {lock_a} at helpers.py:{h('RIGHT-WAITS-A')} in right",
    ]


@pytest.mark.parametrize("method", METHODS)
def test_two_workers_taking_two_locks_in_opposite_orders_show_the_cycle_before_their_stacks(
    pytester: pytest.Pytester, run_inner: Callable[..., Run], method: str
) -> None:
    """Each worker holds one Lock and waits for the other: who holds which, taken and waited for where."""
    pytester.makepyfile(test_pair=PAIR)
    run = run_inner(method=method)
    run.result.assert_outcomes(failed=1)
    [report] = reports(run)
    assert report[0].endswith("still running after the 2s timeout; ended them.")
    assert report[1:-1] == pair_report(pytester, "test_pair.py")
    assert report[-1].startswith("--- stack of worker 'left-0'")
    h = lines_of(pytester.path / "helpers.py")
    t = lines_of(pytester.path / "test_pair.py")
    [left, right] = facts(pytester, "pair")["deadlock"]
    assert left == {
        "worker": "left-0",
        "pid": left["pid"],
        "holds": [
            {
                "lock": "lock_a",
                "kind": "Lock",
                "created": f"test_pair.py:{t('CREATE-A')}",
                "taken_at": f"helpers.py:{h('LEFT-TAKES-A')} in left",
            }
        ],
        "waits_for": {
            "lock": "lock_b",
            "kind": "Lock",
            "created": f"test_pair.py:{t('CREATE-B')}",
            "at": f"helpers.py:{h('LEFT-WAITS-B')} in left",
            "thread": "MainThread",
            "held_by": "right-1",
        },
    }
    assert right["worker"] == "right-1" and right["waits_for"]["held_by"] == "left-0"
    assert right["holds"][0]["taken_at"] == f"helpers.py:{h('RIGHT-TAKES-B')} in right"
    assert left["pid"] in run.pids and right["pid"] in run.pids
    waits = facts(pytester, "pair")["lock_waits"]
    assert [(w["worker"], w["waits_for"]["lock"]) for w in waits] == [("left-0", "lock_b"), ("right-1", "lock_a")]
    assert len(run.pids) == 2


@pytest.mark.parametrize("method", METHODS)
def test_a_deadlock_in_an_ipc_race_run_shows_the_same_cycle(
    pytester: pytest.Pytester, run_inner: Callable[..., Run], method: str
) -> None:
    """Under ipc_race (amplification's lock patches over the recording) the first failure's report names the same lines."""
    pytester.makepyfile(
        test_race_pair=PAIR.replace(
            "@pytest.mark.ipc_timeout(2)", "@pytest.mark.ipc_race(runs=1)\n@pytest.mark.ipc_timeout(2)"
        )
    )
    run = run_inner("--ipc-report=report.json", method=method)
    run.result.assert_outcomes(failed=1)
    run.result.stdout.fnmatch_lines(["RunsFailed: failed in 1 of 1 runs*", "first failure (run 0, *"])
    first = reports(run)[0]
    assert first[1:-1] == pair_report(pytester, "test_race_pair.py")
    # The same cycle in the test's JSON entry.
    [entry] = json.loads((pytester.path / "report.json").read_text())["tests"]
    waits = [(w["worker"], w["holds"][0]["lock"], w["waits_for"]["lock"]) for w in entry["deadlock"]]
    assert waits == [("left-0", "lock_a", "lock_b"), ("right-1", "lock_b", "lock_a")]


RING_AND_HOLDERS = """
import pytest
import helpers


@pytest.mark.ipc_timeout(2)
def test_ring(ipc_workers, ipc_context):
    r1, r2, r3 = ipc_context.RLock(), ipc_context.BoundedSemaphore(1), ipc_context.Lock()  # CREATE-RING
    barrier = ipc_context.Barrier(3)
    for mine, theirs in ((r1, r2), (r2, r3), (r3, r1)):
        ipc_workers.start(helpers.ring, args=(mine, theirs, barrier), name="ring")
    ipc_workers.join()


@pytest.fixture
def guard(ipc_context):
    return ipc_context.Lock()  # CREATE-GUARD


@pytest.mark.ipc_timeout(2)
def test_no_cycle(ipc_workers, ipc_context, shared_value, guard):
    shared_value.get_lock().acquire()  # TEST-TAKES
    taken = ipc_context.Event()
    ipc_workers.start(helpers.wait_for, args=(shared_value.get_lock(),), name="waiter")
    ipc_workers.start(helpers.hold_and_sleep, args=(guard, taken), name="sleeper")
    ipc_workers.start(helpers.wait_after, args=(taken, guard), name="late")
    ipc_workers.join()


@pytest.mark.ipc_timeout(2)
def test_threads(ipc_workers, ipc_context):
    first = ipc_context.Lock()  # CREATE-FIRST
    second = ipc_context.RLock()  # CREATE-SECOND
    ipc_workers.start(helpers.crossed, args=(first, second), name="threads")
    ipc_workers.join()
"""


@pytest.mark.parametrize("method", METHODS)
def test_a_ring_of_three_and_waits_outside_any_cycle_name_each_lock_and_its_holder(
    pytester: pytest.Pytester, run_inner: Callable[..., Run], method: str
) -> None:
    """A cycle of RLock, BoundedSemaphore(1) and Lock; waits for locks the test process and a sleeper hold; two threads."""
    pytester.makepyfile(test_ring=RING_AND_HOLDERS)
    run = run_inner(method=method)
    run.result.assert_outcomes(failed=3)
    ring, no_cycle, threads = reports(run)
    h = lines_of(pytester.path / "helpers.py")
    t = lines_of(pytester.path / "test_ring.py")
    created = f"test_ring.py:{t('CREATE-RING')}"
    r1, r2, r3 = (
        f"r1 (RLock, created at {created})",
        f"r2 (BoundedSemaphore, created at {created})",
        f"r3 (Lock, created at {created})",
    )
    takes, waits = f"helpers.py:{h('RING-TAKES')} in ring", f"helpers.py:{h('RING-WAITS')} in ring"
    assert ring[1:-1] == [
        "deadlock: a wait-for cycle of 3 workers",
        f"  'ring-0' holds {r1}, taken at {takes}",
        f"           waits for {r2} at {waits}",
        f"  'ring-1' holds {r2}, taken at {takes}",
        f"           waits for {r3} at {waits}",
        f"  'ring-2' holds {r3}, taken at {takes}",
        f"           waits for {r1} at {waits}",
    ]
    value_lock = "shared_value's lock (RLock, created by the shared_value fixture)"
    guard = f"guard (Lock, created at test_ring.py:{t('CREATE-GUARD')} in the guard fixture)"
    assert no_cycle[1:-1] == [
        "blocked on locks, with no wait-for cycle:",
        f"  'waiter-0' waits for {value_lock} at helpers.py:{h('WAIT-FOR')} in wait_for",
        f"             held by the test process, taken at test_ring.py:{t('TEST-TAKES')} in test_no_cycle",
        f"  'late-2'   waits for {guard} at helpers.py:{h('WAIT-AFTER')} in wait_after",
        f"             held by 'sleeper-1', taken at helpers.py:{h('HOLD-AND-SLEEP')} in hold_and_sleep",
    ]
    first = f"first (Lock, created at test_ring.py:{t('CREATE-FIRST')})"
    second = f"second (RLock, created at test_ring.py:{t('CREATE-SECOND')})"
    assert threads[1:-1] == [
        "deadlock: a wait-for cycle of 1 worker",
        # Holds in the order of their lines, waits the main thread's first.
        f"  'threads-0' holds {second}, taken at helpers.py:{h('OTHER-TAKES-B')} in other",
        f"              holds {first}, taken at helpers.py:{h('MAIN-TAKES-A')} in crossed",
        f"              waits for {second} at helpers.py:{h('MAIN-WAITS-B')} in crossed",
        f"              waits for {first} at helpers.py:{h('OTHER-WAITS-A')} in other (thread 'other')",
    ]
    assert len(run.pids) == 7


NOT_ON_LOCKS = """
import pytest
import pytest_ipc
import helpers
from test_pair import keep_facts


@pytest.mark.ipc_timeout(2)
def test_spin(ipc_workers, ipc_context):
    lock = ipc_context.Lock()
    with lock:  # the test process holds a lock that nobody waits for
        ipc_workers.start(helpers.spin, name="spin")
        try:
            ipc_workers.join()
        except pytest_ipc.WorkerTimeout as exc:
            keep_facts("spin", exc)
            raise


@pytest.mark.ipc_timeout(2)
def test_deaf(ipc_workers):
    ipc_workers.start(helpers.deaf, name="deaf")
    ipc_workers.join()
"""


@pytest.mark.parametrize("method", METHODS)
def test_a_hang_that_is_no_lock_wait_prints_no_cycle_and_an_unanswered_query_one_line(
    pytester: pytest.Pytester, run_inner: Callable[..., Run], method: str
) -> None:
    """An endless loop: its stack and nothing about locks; a worker that blocks the query: one line."""
    pytester.makepyfile(test_pair=PAIR, test_not_on_locks=NOT_ON_LOCKS)
    run = run_inner("test_not_on_locks.py", method=method)
    run.result.assert_outcomes(failed=2)
    spin, deaf = reports(run)
    h = lines_of(pytester.path / "helpers.py")
    assert spin[1:] == ["--- stack of worker 'spin-0' (pid " + spin[-1].split("(pid ", 1)[1]]
    run.result.stdout.fnmatch_lines(['E *File "*helpers.py", line * in spin'])  # the loop's head or body
    run.result.stdout.no_fnmatch_line("*deadlock*")
    run.result.stdout.no_fnmatch_line("*blocked on locks*")
    assert facts(pytester, "spin") == {"deadlock": [], "lock_waits": []}
    assert deaf[1:-1] == ["(no lock state: no hung worker answered pytest-ipc's query within 1s)"]
    run.result.stdout.fnmatch_lines([f'E *File "*helpers.py", line {h("DEAF")} in deaf'])
    assert len(run.pids) == 2


STARTED_BY_A_WORKER = """
import pytest
import helpers


@pytest.mark.ipc_timeout(2)
def test_children(ipc_workers, ipc_context, ipc_start_method):
    lock_a = ipc_context.Lock()  # CREATE-A
    lock_b = ipc_context.Lock()  # CREATE-B
    ipc_workers.start(helpers.spawner, args=(ipc_start_method, lock_a, lock_b), name="spawner")
    ipc_workers.join()
"""


@pytest.mark.parametrize("method", METHODS)
def test_processes_a_worker_starts_itself_are_in_the_cycle(
    pytester: pytest.Pytester, run_inner: Callable[..., Run], method: str
) -> None:
    """The pair deadlocks in two processes that a worker started with Process(): they are named, with their pids."""
    pytester.makepyfile(test_children=STARTED_BY_A_WORKER)
    run = run_inner(method=method)
    run.result.assert_outcomes(failed=1)
    [report] = reports(run)
    assert report[0].endswith("still running after the 2s timeout; ended them.")
    h = lines_of(pytester.path / "helpers.py")
    t = lines_of(pytester.path / "test_children.py")
    lock_a = f"lock_a (Lock, created at test_children.py:{t('CREATE-A')})"
    lock_b = f"lock_b (Lock, created at test_children.py:{t('CREATE-B')})"
    child = r"'[\w:-]+' \(pid (\d+), started by 'spawner-0'\)"
    assert report[1] == "deadlock: a wait-for cycle of 2 workers", report
    first = re.fullmatch(rf"  ({child}) holds (.*), taken at (.*)", report[2])
    second = re.fullmatch(rf"  ({child}) holds (.*), taken at (.*)", report[4])
    assert first and second, report
    assert (first.group(3), first.group(4)) == (lock_a, f"helpers.py:{h('LEFT-TAKES-A')} in left"), report
    assert report[3].strip() == f"waits for {lock_b} at helpers.py:{h('LEFT-WAITS-B')} in left", report
    assert (second.group(3), second.group(4)) == (lock_b, f"helpers.py:{h('RIGHT-TAKES-B')} in right"), report
    assert report[5].strip() == f"waits for {lock_a} at helpers.py:{h('RIGHT-WAITS-A')} in right", report
    # The worker and both of its children recorded their pids; the children's are the report's.
    assert {int(first.group(2)), int(second.group(2))} < set(run.pids) and len(run.pids) == 3

"""The leak check: what a pytest-ipc test leaves behind fails that test, and is cleaned up.

Every inner session runs in a pytest subprocess.  Each inner test writes the
pid of every process it starts and the name of every segment it creates to
files, and the outer test checks afterwards that none of them survived:
reporting a leak is not enough, the plugin must also end it.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
from leftovers import still_alive
from sessions import copy_bodies, run

METHODS = ["fork", "spawn", "forkserver"]

# Targets and helpers of the inner sessions.  Not importing pytest keeps
# spawn children fast.  Its own: leaks to make and note, Process subclasses.
HELPERS = '''
import json
import multiprocessing.context
import os
import time


def note(kind, value):
    """Record a pid or a segment name for the outer test to check."""
    with open(os.environ["LEAK_TEST_NOTES"], "a") as f:
        f.write(json.dumps([kind, value]) + "\\n")


def make_segment(unlink, **kwargs):
    """Create a segment in this worker; leak it unless ``unlink``."""
    from multiprocessing import shared_memory

    shm = shared_memory.SharedMemory(create=True, size=64, **kwargs)
    note("shm", shm.name)
    shm.close()  # unmaps it; only unlink() removes it
    if unlink:
        shm.unlink()


def tracker_of_new_segment():
    """The resource tracker this process's segments are registered with: the pipe to it, or None.

    The pipe, not the tracker's pid: from Python 3.14 a fork child that
    keeps its parent's tracker forgets the pid (it cannot wait for it), and
    keeps the pipe.
    """
    from multiprocessing import resource_tracker, shared_memory

    shm = shared_memory.SharedMemory(create=True, size=16)
    shm.close()
    shm.unlink()
    return tracker_pipe()


def tracker_pipe():
    """The pipe to this process's resource tracker (Linux: "pipe:[inode]"), or None."""
    from multiprocessing import resource_tracker

    fd = resource_tracker._resource_tracker._fd
    return None if fd is None else os.readlink(f"/proc/self/fd/{fd}")


def make_segment_amplified(record="amplified.txt"):
    """Leak a segment, and say in ``record`` whether amplification is on in this process."""
    from pytest_ipc._worker import amplify

    with open(record, "a") as f:
        f.write(str(amplify.is_active()))
    make_segment(False)


class WorkInRun:
    """A Process subclass that does its work in run(), as many tutorials write one."""

    def __init__(self, record):
        super().__init__()
        self.record = record

    def run(self):
        make_segment_amplified(self.record)


class WorkInRunFork(WorkInRun, multiprocessing.context.ForkProcess):
    pass


class WorkInRunSpawn(WorkInRun, multiprocessing.context.SpawnProcess):
    pass


class WorkInRunForkserver(WorkInRun, multiprocessing.context.ForkServerProcess):
    pass


WORK_IN_RUN = {"fork": WorkInRunFork, "spawn": WorkInRunSpawn, "forkserver": WorkInRunForkserver}


class NeedsTargetName:
    """A Process whose run() needs its target's name, as a logging subclass might."""

    def run(self):
        if self._target.__name__ != "noop":
            raise SystemExit(3)
        super().run()


class NamedFork(NeedsTargetName, multiprocessing.context.ForkProcess):
    pass


class NamedSpawn(NeedsTargetName, multiprocessing.context.SpawnProcess):
    pass


class NamedForkserver(NeedsTargetName, multiprocessing.context.ForkServerProcess):
    pass


NAMED = {"fork": NamedFork, "spawn": NamedSpawn, "forkserver": NamedForkserver}


def start_and_join(method, target, *args):
    import multiprocessing

    p = multiprocessing.get_context(method).Process(target=target, args=args)
    p.start()
    p.join()


def attach(name):
    from multiprocessing import shared_memory

    shm = shared_memory.SharedMemory(name=name)
    shm.buf[0] += 1
    shm.close()
'''

# Kept module-level in the inner test file: reachable after the test, so a
# real leak and not garbage.
LEAKS = """
import multiprocessing
import multiprocessing.connection
from multiprocessing import shared_memory

import pytest

import bodies
import helpers

KEEP = []


def test_process_still_running(ipc_context):
    event = ipc_context.Event()
    KEEP.append(event)
    # A daemon, so that with the check off the session still ends (multiprocessing
    # joins non-daemon children at exit).
    p = ipc_context.Process(target=bodies.wait_for, args=(event,), name="stuck-worker", daemon=True)
    p.start()
    helpers.note("pid", p.pid)


def test_process_exited_never_joined(ipc_context):
    p = ipc_context.Process(target=bodies.noop, name="unjoined-worker")
    p.start()
    helpers.note("pid", p.pid)
    KEEP.append(p)
    multiprocessing.connection.wait([p.sentinel])  # it has exited; never joined


def test_shared_memory_never_unlinked(ipc_context):
    shm = shared_memory.SharedMemory(create=True, size=64)
    helpers.note("shm", shm.name)
    shm.close()


def test_shared_memory_a_worker_never_unlinked(ipc_workers):
    ipc_workers.start(helpers.make_segment, args=(False,))
    ipc_workers.join()


def test_pipe_never_closed(ipc_context):
    KEEP.append(ipc_context.Pipe())


def test_manager_never_shut_down(ipc_context):
    manager = ipc_context.Manager()
    helpers.note("pid", manager._process.pid)
    KEEP.append(manager.dict())
"""


def _check_nothing_left(notes: Path, strict: bool = True) -> None:
    """Every pid noted is gone and every segment noted is unlinked (not ``strict``: make it so)."""
    if not notes.exists():
        return
    entries = [json.loads(line) for line in notes.read_text().splitlines()]
    notes.unlink()
    alive = still_alive(v for k, v in entries if k == "pid")
    segments = [v for k, v in entries if k == "shm" and Path("/dev/shm", v.lstrip("/")).exists()]
    for name in segments:
        Path("/dev/shm", name.lstrip("/")).unlink()
    if strict:
        assert not alive, f"processes outlived the session: {alive}"
        assert not segments, f"segments left in /dev/shm: {segments}"


@pytest.fixture
def inner(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")
    notes = tmp_path / "notes.jsonl"
    monkeypatch.setenv("LEAK_TEST_NOTES", str(notes))
    copy_bodies(pytester)
    pytester.makepyfile(helpers=HELPERS)

    def run_inner(*args: str, plugins: tuple[str, ...] = (), strict: bool = True) -> pytest.RunResult:
        extra = [a for p in plugins for a in ("-p", p)]
        result = run(pytester, *extra, *args, timeout=120, cache=False)
        result.stdout.no_fnmatch_line("*INTERNALERROR*")
        _check_nothing_left(notes, strict)
        return result

    yield run_inner
    _check_nothing_left(notes)


@pytest.mark.parametrize("method", METHODS)
def test_each_leak_fails_its_test_naming_it(pytester: pytest.Pytester, inner, method: str) -> None:
    pytester.makepyfile(test_leaks=LEAKS)
    result = inner(f"--ipc-start-method={method}")
    result.assert_outcomes(passed=6, errors=6)
    result.stdout.fnmatch_lines_random(
        [
            "ERROR test_leaks.py::test_process_still_running - pytest_ipc.LeakError*",
            "*process never joined: stuck-worker (pid *) was still running; call join() on it*",
            "*process never joined: unjoined-worker (pid *) had exited with code 0; call join() on it*",
            "*SharedMemory never unlinked: '*' in /dev/shm; call unlink() on it*",
            "test_leaks.py::test_shared_memory_a_worker_never_unlinked left 1 thing(s) behind*",
            "*Pipe never closed: a Connection over a *, fd * (duplex); call close() on both ends*",
            "*Manager never shut down: its server process SyncManager-* (pid *) was still running*",
        ]
    )
    # Only what each test leaked is its error: one process, segment or Manager,
    # or the two ends of one Pipe.  Count the reports' own first lines: the
    # short summary repeats the message, cut to the terminal's width except on
    # CI (pytest never cuts it when $CI is set), so counting anywhere in the
    # output would depend on where the suite runs.
    heads = [line for line in result.stdout.lines if re.match(r"test_leaks\.py::\w+ left \d+ thing\(s\) behind", line)]
    assert sum("left 1 thing(s) behind" in line for line in heads) == 5, heads
    assert len(heads) == 6, heads
    result.stdout.fnmatch_lines(["*test_pipe_never_closed left 2 thing(s) behind*"])
    # The reports are the plugin's message, not a traceback from inside it.
    result.stdout.no_fnmatch_line("*pytest_ipc/leaks.py*")


UNTRACKED = """
from multiprocessing import shared_memory

import helpers


def test_untracked_segment_never_unlinked(ipc_context):
    shm = shared_memory.SharedMemory(create=True, size=64, track=False)
    helpers.note("shm", shm.name)
    shm.close()


def test_untracked_segment_unlinked(ipc_context):
    shm = shared_memory.SharedMemory(create=True, size=64, track=False)
    helpers.note("shm", shm.name)
    shm.close()
    shm.unlink()


def test_untracked_segment_a_worker_never_unlinked(ipc_workers):
    ipc_workers.start(helpers.make_segment, args=(False,), kwargs={"track": False})
    ipc_workers.join()
"""


@pytest.mark.skipif(sys.version_info < (3, 13), reason="SharedMemory(track=False) is new in Python 3.13")
def test_an_untracked_segment_left_behind_is_a_leak(pytester: pytest.Pytester, inner) -> None:
    """SharedMemory(track=False) has no resource-tracker registration to be seen by: it is noted as it is made."""
    pytester.makepyfile(test_untracked=UNTRACKED)
    result = inner()
    result.assert_outcomes(passed=3, errors=2)
    result.stdout.fnmatch_lines_random(
        [
            "*test_untracked_segment_never_unlinked left 1 thing(s) behind*",
            "*test_untracked_segment_a_worker_never_unlinked left 1 thing(s) behind*",
        ]
    )
    assert result.stdout.str().count("SharedMemory never unlinked") >= 2


# A process the test starts itself, not through ipc_workers, under the test's
# start method; and one that an ipc_workers worker starts under the same.
OWN_PROCESSES = """
import pytest

import bodies
import helpers


def test_own_process_never_unlinked(ipc_context):
    p = ipc_context.Process(target=helpers.make_segment, args=(False,))
    p.start()
    p.join()


def test_workers_process_never_unlinked(ipc_workers, ipc_start_method):
    ipc_workers.start(helpers.start_and_join, args=(ipc_start_method, helpers.make_segment, False))
    ipc_workers.join()


def test_pool_worker_never_unlinked(ipc_context):
    with ipc_context.Pool(1) as pool:
        pool.apply(helpers.make_segment, (False,))
    pool.join()


def test_a_targets_name_is_kept(ipc_context):
    p = helpers.NAMED[ipc_context.get_start_method()](target=bodies.noop)
    p.start()
    p.join()
    assert p.exitcode == 0  # 3: the child saw another name


def test_own_process_unlinks(ipc_context):
    p = ipc_context.Process(target=helpers.make_segment, args=(True,))
    p.start()
    p.join()


@pytest.mark.ipc_race(runs=2)  # amplification wraps the target too
def test_amplified_own_process_never_unlinked(ipc_context):
    p = ipc_context.Process(target=helpers.make_segment_amplified)
    p.start()
    p.join()


def test_subclass_never_unlinked(ipc_context):
    p = helpers.WORK_IN_RUN[ipc_context.get_start_method()]("subclass.txt")
    p.start()
    assert "run" not in vars(p)  # the wrapper went with the child only
    p.join()


@pytest.mark.ipc_race(runs=2)  # and a subclass's run
def test_amplified_subclass_never_unlinked(ipc_context):
    p = helpers.WORK_IN_RUN[ipc_context.get_start_method()]("subclass_amplified.txt")
    p.start()
    assert "run" not in vars(p)
    p.join()
"""


@pytest.mark.parametrize("method", METHODS)
def test_segments_of_processes_the_code_under_test_starts_are_seen(
    pytester: pytest.Pytester, inner, method: str
) -> None:
    """A segment leaked by a process the test or a worker starts itself (a Pool's too) is that test's leak.

    So is one leaked by a ``Process`` subclass that does its work in an
    overridden ``run``, whatever the start method.
    """
    pytester.makepyfile(test_own=OWN_PROCESSES)
    result = inner(f"--ipc-start-method={method}")
    result.assert_outcomes(passed=6, errors=4, failed=2)
    result.stdout.fnmatch_lines_random(
        [
            "test_own.py::test_own_process_never_unlinked left 1 thing(s) behind*",
            "test_own.py::test_pool_worker_never_unlinked left 1 thing(s) behind*",
            "test_own.py::test_workers_process_never_unlinked left 1 thing(s) behind*",
            "test_own.py::test_subclass_never_unlinked left 1 thing(s) behind*",
            "*RunsFailed: failed in 2 of 2 runs*",
            "FAILED test_own.py::test_amplified_own_process_never_unlinked*",
            "FAILED test_own.py::test_amplified_subclass_never_unlinked*",
            "*failed (LeakError in teardown)*",
        ]
    )
    # The children of the ipc_race tests were amplified as well as followed;
    # outside a race test, no process is.
    assert (pytester.path / "amplified.txt").read_text() == "True" * 2
    assert (pytester.path / "subclass_amplified.txt").read_text() == "True" * 2
    assert (pytester.path / "subclass.txt").read_text() == "False"


# Correct code must never be reported (the check must not cry wolf).
CORRECT = """
import gc
from multiprocessing import shared_memory

import pytest

import bodies
import helpers


def test_joined_processes(ipc_context):
    ps = [ipc_context.Process(target=bodies.noop) for _ in range(3)]
    for p in ps:
        p.start()
    for p in ps:
        p.join()


def test_unlinked_segment(ipc_context):
    shm = shared_memory.SharedMemory(create=True, size=64)
    shm.close()
    shm.unlink()


def test_closed_pipe_and_garbage_pipe(ipc_context):
    a, b = ipc_context.Pipe()
    a.close()
    b.close()
    ipc_context.Pipe()  # dropped at once: garbage, closed when collected


def test_queue_used_and_dropped(ipc_context):
    q = ipc_context.Queue()
    for i in range(100):
        q.put(i)  # starts the feeder thread, which closes the pipe itself later
    assert [q.get(timeout=10) for _ in range(100)] == list(range(100))


def test_manager_in_with(ipc_context):
    with ipc_context.Manager() as m:
        d = m.dict()
        d["x"] = 1


def test_fixtures_and_workers(shared_value, pipe_pair, fanin_queue, ipc_workers):
    ipc_workers.start(bodies.noop, count=2)
    ipc_workers.join()


@pytest.fixture(scope="module")
def module_segment():
    shm = shared_memory.SharedMemory(create=True, size=16)
    yield shm
    shm.close()
    shm.unlink()


def test_workers_make_and_unlink_segments(ipc_workers):
    ipc_workers.start(helpers.make_segment, args=(True,), count=2)
    ipc_workers.join()


def test_workers_attach_to_a_module_segment(module_segment, ipc_workers):
    # Attaching is not creating: the segment is the module fixture's, not this test's.
    ipc_workers.start(helpers.attach, args=(module_segment.name,), count=2)
    ipc_workers.join()


@pytest.fixture(scope="module")
def module_pipe():
    import multiprocessing
    a, b = multiprocessing.Pipe()
    yield a, b
    a.close()
    b.close()


@pytest.fixture(scope="module")
def module_manager():
    import multiprocessing
    with multiprocessing.Manager() as m:
        yield m


def test_module_fixtures_are_not_this_tests_leak(module_pipe, module_manager, ipc_context):
    module_manager.dict()


def test_module_fixtures_again(module_pipe, module_manager, ipc_context):
    pass


@pytest.mark.ipc_race(runs=5)
def test_race_runs_clean(ipc_context, ipc_outcome):
    with ipc_context.Manager() as m:
        ipc_outcome.record(len(m.list([1, 2])))
"""


@pytest.mark.parametrize("method", METHODS)
def test_correct_code_is_never_reported(pytester: pytest.Pytester, inner, method: str) -> None:
    pytester.makepyfile(test_correct=CORRECT)
    # Several rounds: a feeder thread or a collector running late must not make it flaky.
    result = inner(f"--ipc-start-method={method}", "--count=3", plugins=("pytest_repeat",))
    result.assert_outcomes(passed=33)


def test_warn_and_off_modes(pytester: pytest.Pytester, inner) -> None:
    pytester.makepyfile(test_leaks=LEAKS)
    warned = inner("--ipc-leak-check=warn", "-W", "always")
    warned.assert_outcomes(passed=6, warnings=6)
    # Attributed to the test that leaked, not to the plugin's code.
    warned.stdout.fnmatch_lines(["*test_leaks.py:*: LeakWarning: test_leaks.py::test_process_still_running left 1*"])
    warned.stdout.no_fnmatch_line("*pytest_ipc/leaks.py*")
    # Off: nothing reported or cleaned up; what leaked stays the user's problem.
    pytester.makeini("[pytest]\nipc_leak_check = off\n")
    off = inner(strict=False)
    off.assert_outcomes(passed=6)
    off.stdout.no_fnmatch_line("*Leak*")


def test_failing_test_is_not_blamed_twice_but_cleaned_up(pytester: pytest.Pytester, inner) -> None:
    pytester.makepyfile(
        """
        import bodies
        import helpers

        def test_fails(ipc_context):
            event = ipc_context.Event()
            p = ipc_context.Process(target=bodies.wait_for, args=(event,))
            p.start()
            helpers.note("pid", p.pid)
            assert False, "the test's own failure"
        """
    )
    result = inner()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*AssertionError: the test's own failure*"])
    result.stdout.no_fnmatch_line("*left * thing(s) behind*")


def test_leak_in_race_runs_fails_the_runs(pytester: pytest.Pytester, inner) -> None:
    pytester.makepyfile(
        """
        import pytest
        import helpers

        KEEP = []

        @pytest.mark.ipc_race(runs=3)
        def test_leaks_every_run(ipc_context):
            KEEP.append(ipc_context.Pipe())
        """
    )
    result = inner()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*RunsFailed: failed in 3 of 3 runs*", "*failed (LeakError in teardown)*"])


def test_tests_not_using_the_plugin_are_not_checked(pytester: pytest.Pytester, inner) -> None:
    pytester.makepyfile(
        """
        import multiprocessing

        KEEP = []

        def test_plain():
            KEEP.append(multiprocessing.Pipe())
        """
    )
    inner().assert_outcomes(passed=1)


def test_bad_mode_is_a_usage_error(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("def test_nothing():\n    pass\n")
    result = pytester.runpytest("-p", "pytest_ipc", "--ipc-leak-check=loud")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--ipc-leak-check=loud: expected one of off, warn, fail; got 'loud'*"])


def test_without_the_tmpdir_plugin_the_check_still_works(pytester: pytest.Pytester, inner) -> None:
    """-p no:tmpdir leaves no basetemp for workers to note their segments in: the test process's own are still seen."""
    pytester.makepyfile(
        """
        from multiprocessing import shared_memory
        import bodies
        import helpers

        def test_clean(ipc_context):
            p = ipc_context.Process(target=bodies.noop)
            p.start()
            p.join()

        def test_leaks_a_segment(ipc_context):
            shm = shared_memory.SharedMemory(create=True, size=64)
            helpers.note("shm", shm.name)
            shm.close()
        """
    )
    result = inner("-p", "no:tmpdir")
    result.assert_outcomes(passed=2, errors=1)
    result.stdout.fnmatch_lines(["*test_leaks_a_segment left 1 thing(s) behind*", "*SharedMemory never unlinked*"])


def test_a_pytester_session_inside_a_test_does_not_hide_its_workers_leaks(pytester: pytest.Pytester, inner) -> None:
    """The leak check of an in-process pytest session run by a test ends; the outer test's own goes on."""
    pytester.makepyfile(
        """
        import helpers

        pytest_plugins = ["pytester"]

        def test_outer(ipc_workers, pytester):
            ipc_workers.start(helpers.make_segment, args=(False,))
            ipc_workers.join()
            pytester.makepyfile("def test_inner(ipc_context):\\n    pass\\n")
            pytester.runpytest_inprocess("-p", "pytest_ipc", "-p", "no:cacheprovider").assert_outcomes(passed=1)
        """
    )
    result = inner("--ipc-start-method=fork")
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(["*test_outer left 1 thing(s) behind*", "*SharedMemory never unlinked*"])


def test_fork_workers_share_the_test_processs_resource_tracker(pytester: pytest.Pytester, inner) -> None:
    """So a segment a fork worker leaks outlives the worker until the check sees it, in a session's first test too.

    A fork child with no tracker running in its parent starts its own, which
    unlinks the child's leaked segments when the child exits: whether the
    check saw them would then depend on timing.
    """
    pytester.makepyfile(
        """
        import helpers

        def test_first(ipc_workers):
            ipc_workers.start(helpers.tracker_of_new_segment)
            (child_tracker,) = ipc_workers.join()
            assert child_tracker is not None
            assert child_tracker == helpers.tracker_pipe()
        """
    )
    inner("--ipc-start-method=fork").assert_outcomes(passed=1)


# Process subclasses of unusual shapes: wrapping their run() must not change
# what they do, in a race test (amplified) or not, under any start method.
SHAPES = '''
import copy
import multiprocessing.context
import os


def ran(tag):
    with open(os.environ["SHAPES_OUT"], "a") as f:
        f.write(tag + "\\n")


def _static():
    ran("static")


class StaticRun:
    run = staticmethod(_static)


class ClassRun:
    @classmethod
    def run(cls):
        ran("classmethod")


class DeepCopiedState:
    def __getstate__(self):
        return copy.deepcopy(self.__dict__)

    def run(self):
        ran("deepcopied state")


def _rebuild(cls, state):
    obj = cls.__new__(cls)
    obj.__dict__.update(state)
    return obj


class ReducedWithDict:
    def __reduce__(self):
        return (_rebuild, (type(self), self.__dict__))

    def run(self):
        ran("reduced with dict")


class Frozen:
    def __init__(self):
        super().__init__()
        self._frozen = True

    def __setattr__(self, name, value):
        if getattr(self, "_frozen", False) and not name.startswith("_"):
            raise AttributeError(f"frozen: {name}")
        super().__setattr__(name, value)

    def run(self):
        ran("frozen")


class OwnRunAttribute:
    """Overrides run, and the test gives an instance its own run too."""

    def run(self):
        ran("class run")


def own_run():
    ran("own run")


SHAPES = [StaticRun, ClassRun, DeepCopiedState, ReducedWithDict, Frozen, OwnRunAttribute]
BASES = {
    "fork": multiprocessing.context.ForkProcess,
    "spawn": multiprocessing.context.SpawnProcess,
    "forkserver": multiprocessing.context.ForkServerProcess,
}
# One class per shape and start method, module-level so that spawn can pickle them.
for _shape in SHAPES:
    for _method, _base in BASES.items():
        _name = f"{_shape.__name__}_{_method}"
        globals()[_name] = type(_name, (_shape, _base), {"__module__": __name__, "__qualname__": _name})
'''

SHAPES_TEST = """
import pytest

import shapes

NAMES = [s.__name__ for s in shapes.SHAPES]


def start_and_join(name, method):
    p = getattr(shapes, f"{name}_{method}")()
    if name == "OwnRunAttribute":
        vars(p)["run"] = shapes.own_run
    p.start()
    # The parent's object is as it was: no wrapper left, its own run kept.
    assert vars(p).get("run") is (shapes.own_run if name == "OwnRunAttribute" else None)
    p.join()
    assert p.exitcode == 0


@pytest.mark.parametrize("name", NAMES)
def test_shape(name, ipc_context, ipc_start_method):
    start_and_join(name, ipc_start_method)


@pytest.mark.ipc_race(runs=2)
@pytest.mark.parametrize("name", NAMES)
def test_shape_amplified(name, ipc_context, ipc_start_method):
    start_and_join(name, ipc_start_method)
"""


@pytest.mark.parametrize("method", METHODS)
def test_process_subclasses_of_every_shape_do_what_they_did(
    pytester: pytest.Pytester, method: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A staticmethod or classmethod run, a __getstate__/__reduce__ of its own, a frozen __setattr__, an own run."""
    out = pytester.path / "ran.txt"
    monkeypatch.setenv("SHAPES_OUT", str(out))
    pytester.makepyfile(shapes=SHAPES, test_shapes=SHAPES_TEST)
    result = pytester.runpytest_subprocess(f"--ipc-start-method={method}", "-p", "no:cacheprovider", timeout=120)
    result.assert_outcomes(passed=12)
    # Each shape ran once in the plain test and once in each of the race test's runs.
    counts: dict[str, int] = {}
    for line in out.read_text().splitlines():
        counts[line] = counts.get(line, 0) + 1
    assert counts == {
        tag: 3 for tag in ("static", "classmethod", "deepcopied state", "reduced with dict", "frozen", "own run")
    }

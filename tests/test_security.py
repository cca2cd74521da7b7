"""Security of what pytest-ipc creates (issue #7).

Each test runs a real pytest session in a subprocess and looks at what the
session made, from the inside while it exists and from the outside after:

- ``ipc_manager`` listens on an AF_UNIX socket in a directory only the
  current user can enter (on loopback where AF_UNIX is missing), on no TCP or
  UDP port, and refuses clients without the session's random key;
- shared-memory segments, the named semaphores behind locks, the files
  behind ``Value``/``Array`` and the workers' directories are private to the
  user;
- a session that uses every fixture writes nothing outside the paths it was
  given and pytest's own temporary directories.

The inner sessions run with umask 0, so every mode checked comes from the
code that creates the object, not from a umask that hides group and other
bits.  Linux only: the checks read /proc and /dev/shm.
"""

from __future__ import annotations

import getpass
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sessions import SEMPREFIX_CONFTEST, copy_bodies, isolate, run

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc and /dev/shm")

# Worker targets and the inner sessions' checks, in a module that does not
# import pytest, so that spawn workers start fast.  Its own: what each
# security check looks at (modes, owners, sockets, the files a session makes).
HELPERS = '''
import ctypes
import json
import multiprocessing
import os
import resource
import stat
from multiprocessing import shared_memory


def record(**facts):
    """Append ``facts`` to the file the outer test reads."""
    with open(os.environ["IPC_TEST_OUT"], "a") as f:
        f.write(json.dumps(facts) + "\\n")


def records():
    with open(os.environ["IPC_TEST_OUT"]) as f:
        return [json.loads(line) for line in f]


def problems(*paths):
    """The paths whose owner is not the current user or whose mode has group or other bits."""
    found = []
    for path in paths:
        st = os.stat(path)
        if st.st_uid != os.getuid() or stat.S_IMODE(st.st_mode) & 0o077:
            found.append(f"{path}: mode {oct(stat.S_IMODE(st.st_mode))}, uid {st.st_uid}")
    return found


def manager_server():
    """The one Manager server process among the test process's children."""
    [server] = [p for p in multiprocessing.active_children() if p.name.startswith("SyncManager-")]
    return server


def connections(pid, kind):
    import psutil

    process = psutil.Process(pid)
    return getattr(process, "net_connections", process.connections)(kind=kind)


def gone(pid):
    import psutil

    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def semaphores():
    """This session's named semaphores in /dev/shm (the conftest gives them a private prefix)."""
    prefix = "sem." + os.environ["IPC_TEST_SEMPREFIX"]
    return [os.path.join("/dev/shm", n) for n in os.listdir("/dev/shm") if n.startswith(prefix)]


def arena_files():
    """The open files behind this process's Value/Array heap (unlinked at once, so found by fd)."""
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if os.path.basename(target).startswith(f"pym-{os.getpid()}-"):
            found.append(f"/proc/self/fd/{fd}")
    return found


def listing():
    """Every path under the directories in IPC_TEST_ROOTS, as they are now."""
    found = []
    for root in os.environ["IPC_TEST_ROOTS"].split(os.pathsep):
        for dirpath, dirnames, filenames in os.walk(root):
            found.extend(os.path.join(dirpath, name) for name in dirnames + filenames)
    return found


def private_segment():
    """Create a SharedMemory segment; return its mode and owner as /dev/shm shows them."""
    shm = shared_memory.SharedMemory(create=True, size=64)
    try:
        st = os.stat(os.path.join("/dev/shm", shm.name.lstrip("/")))
        return stat.S_IMODE(st.st_mode), st.st_uid
    finally:
        shm.close()
        shm.unlink()


def bump_received(source):
    """Take a Manager proxy from a Queue or a Connection and add 1 through it."""
    counter = source.recv() if hasattr(source, "recv") else source.get(timeout=30)
    counter.value += 1


def append_to_nested(d):
    d["inner"].append(1)


def send(conn, item):
    conn.send(item)


def crash():
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # a stack file, no core file
    ctypes.string_at(0)
'''

CONFTEST = SEMPREFIX_CONFTEST + "\nos.umask(0)\n"

# The longest AF_UNIX socket path the plugin puts under basetemp (sun_path
# holds 104 bytes on macOS and the BSDs, 108 on Linux, NUL included), and
# what it appends to basetemp: "/ipc-manager-" + 8 random characters + "/sock".
UNIX_PATH_MAX = 104
MANAGER_SUFFIX = len("/ipc-manager-12345678/sock")


def _facts(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


@pytest.fixture
def session(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> Iterator[Callable[..., tuple[pytest.RunResult, list[dict]]]]:
    """Runs the session written in ``pytester``; returns its result and the facts it recorded.

    Checks afterwards that the session left none of its named semaphores in
    /dev/shm.
    """
    isolation = isolate(monkeypatch, tmp_path)
    out = tmp_path / "facts.jsonl"
    monkeypatch.setenv("IPC_TEST_OUT", str(out))
    pytester.makepyfile(helpers=HELPERS)
    pytester.makeconftest(CONFTEST)

    def run_session(*args: str) -> tuple[pytest.RunResult, list[dict]]:
        out.unlink(missing_ok=True)
        result = run(pytester, *args, timeout=120, cache=False)
        leftovers = isolation.left_in_shm()
        assert not leftovers, f"left in /dev/shm: {leftovers}"
        result.stdout.no_fnmatch_line("*INTERNALERROR*")
        return result, _facts(out)

    yield run_session


def _multiprocessing_socket_path(tmpdir: Path) -> tuple[str, str]:
    """Where multiprocessing makes its private ``pymp-*`` directory, and a socket path in it, under TMPDIR ``tmpdir``.

    Asked of a fresh interpreter of this Python, whose private directory is
    removed when it exits.
    """
    probe = (
        "import os; from multiprocessing import connection, util; "
        "print(os.path.dirname(util.get_temp_dir())); print(connection.arbitrary_address('AF_UNIX'))"
    )
    env = {**os.environ, "TMPDIR": str(tmpdir)}
    done = subprocess.run(
        [sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True, timeout=60
    )
    base, address = done.stdout.split()
    return base, address


SOCKET_TESTS = """
import os
import stat
from multiprocessing import connection, util

import helpers


def test_manager_socket(ipc_manager, ipc_start_method, tmp_path_factory):
    address = ipc_manager.address
    assert connection.address_type(address) == "AF_UNIX"
    directory = os.path.dirname(address)
    if os.environ["IPC_TEST_WHERE"] == "basetemp":
        assert os.path.dirname(directory) == str(tmp_path_factory.getbasetemp())
    else:  # too long a path under basetemp: multiprocessing's own private directory
        assert directory == util.get_temp_dir()
    assert stat.S_ISSOCK(os.stat(address).st_mode)
    assert helpers.problems(address, directory) == []
    server = helpers.manager_server()
    # psutil does see the server's sockets: its AF_UNIX one is there.
    assert address in [c.laddr for c in helpers.connections(server.pid, "unix")]
    assert helpers.connections(server.pid, "inet") == []
    helpers.record(method=ipc_start_method, pid=server.pid, address=address)


def test_manager_gone_after_teardown():
    records = helpers.records()
    assert sorted(r["method"] for r in records) == ["fork", "forkserver", "spawn"]
    for r in records:
        assert helpers.gone(r["pid"]), f"the Manager's server process {r['pid']} outlived its test"
        assert not os.path.exists(r["address"])
        if os.environ["IPC_TEST_WHERE"] == "basetemp":
            assert not os.path.exists(os.path.dirname(r["address"]))
"""


@pytest.mark.parametrize("where", ["basetemp", "pymp"])
def test_manager_listens_on_a_private_unix_socket_only(
    pytester: pytest.Pytester,
    session: Callable[..., tuple[pytest.RunResult, list[dict]]],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    where: str,
) -> None:
    """The socket and its directory are the user's alone, no port is open, and all is gone at teardown.

    The Manager's server process has ended, and its socket (and directory)
    are gone, by the time the next test starts.  Under a short basetemp the socket is in a directory of its own there;
    under one too deep for a socket path, in multiprocessing's private
    ``pymp-*`` directory.
    """
    basetemp = tmp_path / ("b" if where == "basetemp" else "d" * 80)
    fits = len(os.fsencode(str(basetemp))) + MANAGER_SUFFIX < UNIX_PATH_MAX
    if fits != (where == "basetemp"):
        pytest.skip(f"{basetemp} is {'too long' if where == 'basetemp' else 'short enough'} for this case")
    monkeypatch.setenv("IPC_TEST_WHERE", where)
    pytester.makepyfile(SOCKET_TESTS)
    result, facts = session("--ipc-start-method=all", f"--basetemp={basetemp}")
    result.assert_outcomes(passed=4)
    assert len(facts) == 3


def test_no_socket_path_short_enough_is_a_clear_error(
    pytester: pytest.Pytester,
    session: Callable[..., tuple[pytest.RunResult, list[dict]]],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    """With basetemp and TMPDIR both too deep for a socket path, the test errors saying so.

    From Python 3.14 multiprocessing itself ignores a TMPDIR too deep for a
    socket path and makes its private directory under /tmp: there the
    Manager listens, and the test passes.  (Fork only: multiprocessing's
    forkserver needs a socket in TMPDIR too.)
    """
    deep = tmp_path / ("t" * 80)
    deep.mkdir()
    monkeypatch.setenv("TMPDIR", str(deep))
    pytester.makepyfile(
        """
        import os

        def test_manager(ipc_manager):
            print("socket in", os.path.dirname(os.path.dirname(ipc_manager.address)))
        """
    )
    result, _ = session("--ipc-start-method=fork", f"--basetemp={deep / 'basetemp'}", "-s")
    base, address = _multiprocessing_socket_path(deep)
    if len(os.fsencode(address)) < UNIX_PATH_MAX:  # Python 3.14+: under /tmp
        assert base != str(deep)
        result.assert_outcomes(passed=1)
        result.stdout.fnmatch_lines([f"*socket in {base}"])
        return
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(
        [
            "*ipc_manager: no AF_UNIX socket path is short enough: '*/basetemp/ipc-manager-*/sock' (under pytest's"
            " basetemp) and '*/pymp-*/listener-*' (multiprocessing's temporary directory, from TMPDIR) are both"
            " longer than the 103 bytes a socket path may have; set TMPDIR to a shorter directory",
        ]
    )
    assert not list((deep / "basetemp").glob("ipc-manager-*"))


AUTHKEY_TESTS = """
import hashlib
import multiprocessing
import os
from multiprocessing import connection
from multiprocessing.managers import SyncManager

import pytest

import helpers


def test_only_the_session_key_is_accepted(ipc_manager):
    key = bytes(multiprocessing.current_process().authkey)
    helpers.record(length=len(key), sha256=hashlib.sha256(key).hexdigest())
    nearly = key[:-1] + bytes([key[-1] ^ 1])
    for wrong in (b"", nearly, os.urandom(32)):
        with pytest.raises(multiprocessing.AuthenticationError):
            connection.Client(ipc_manager.address, authkey=wrong)
        with pytest.raises(multiprocessing.AuthenticationError):
            SyncManager(address=ipc_manager.address, authkey=wrong).connect()
    right = SyncManager(address=ipc_manager.address, authkey=key)
    right.connect()
    assert right.dict(n=1)["n"] == 1
"""


def test_manager_key_is_random_per_session_and_wrong_keys_are_refused(
    pytester: pytest.Pytester, session: Callable[..., tuple[pytest.RunResult, list[dict]]]
) -> None:
    """The Manager takes the session's key (32 random bytes, new in every session) and no other.

    A client with an empty key, the key with one bit flipped, or a random
    key gets ``AuthenticationError``; the right key connects.
    """
    pytester.makepyfile(AUTHKEY_TESTS)
    keys = []
    for _ in range(2):
        result, facts = session("--ipc-start-method=fork")
        result.assert_outcomes(passed=1)
        [fact] = facts
        keys.append(fact)
    assert [k["length"] for k in keys] == [32, 32]
    assert keys[0]["sha256"] != keys[1]["sha256"], "two sessions used the same Manager key"
    constants = {hashlib.sha256(b).hexdigest() for b in (b"", bytes(32), b"\xff" * 32)}
    assert not constants & {k["sha256"] for k in keys}


LOOPBACK_TESTS = """
import socket

import psutil  # noqa: F401  (imported while socket.AF_UNIX still exists: psutil needs it)
import pytest

import helpers


@pytest.fixture
def no_af_unix(monkeypatch):
    # A platform without AF_UNIX (Windows' Python has none).
    monkeypatch.delattr(socket, "AF_UNIX")


@pytest.mark.ipc_start_methods("fork", "spawn")
def test_loopback(no_af_unix, ipc_manager):
    host, port = ipc_manager.address
    assert (host, port > 0) == ("127.0.0.1", True)
    listening = helpers.connections(helpers.manager_server().pid, "inet")
    assert [(c.laddr.ip, c.laddr.port, c.status) for c in listening] == [("127.0.0.1", port, "LISTEN")]
    assert ipc_manager.dict(n=1)["n"] == 1
"""


def test_without_af_unix_the_manager_listens_on_loopback_only(
    pytester: pytest.Pytester, session: Callable[..., tuple[pytest.RunResult, list[dict]]]
) -> None:
    """Where AF_UNIX is missing the Manager listens on 127.0.0.1 alone, never on all interfaces.

    (Not forkserver: it needs AF_UNIX itself.)
    """
    pytester.makepyfile(LOOPBACK_TESTS)
    result, _ = session()
    result.assert_outcomes(passed=2)


PROXY_TESTS = """
import multiprocessing
import os
from multiprocessing.managers import SyncManager

import pytest

import helpers
import pytest_ipc


def test_ipc_manager_proxies_travel(ipc_manager, fanin_queue, pipe_pair, ipc_workers):
    parent, child = pipe_pair
    by_queue, by_pipe = ipc_manager.Value("i", 0), ipc_manager.Value("i", 0)
    d = ipc_manager.dict()
    d["inner"] = ipc_manager.list()
    fanin_queue.put(by_queue)
    parent.send(by_pipe)
    ipc_workers.start(helpers.bump_received, args=(fanin_queue,), name="via_queue")
    ipc_workers.start(helpers.bump_received, args=(child,), name="via_pipe")
    ipc_workers.start(helpers.append_to_nested, args=(d,), name="nested")
    ipc_workers.join()
    assert (by_queue.value, by_pipe.value, list(d["inner"])) == (1, 1, [1])


def test_a_manager_key_of_its_own_breaks_them(ipc_context, fanin_queue, ipc_workers):
    manager = SyncManager(authkey=os.urandom(32), ctx=ipc_context)
    manager.start()
    try:
        fanin_queue.put(manager.Value("i", 0))
        ipc_workers.start(helpers.bump_received, args=(fanin_queue,), name="via_queue")
        with pytest.raises(pytest_ipc.WorkerFailed, match="raised AuthenticationError"):
            ipc_workers.join()
        d = manager.dict()
        d["inner"] = manager.list()
        with pytest.raises(multiprocessing.AuthenticationError):
            d["inner"]
    finally:
        manager.shutdown()
"""


def test_manager_proxies_reach_workers_which_a_manager_key_would_break(
    pytester: pytest.Pytester, session: Callable[..., tuple[pytest.RunResult, list[dict]]]
) -> None:
    """Why ``ipc_manager`` has no key of its own, under every start method.

    Its proxies work when sent to a worker through a Queue or a Pipe, and
    nested in another proxy.  A manager with a random key of its own breaks
    exactly those: a proxy unpickled outside process start-up authenticates
    with the receiving process's key.  If that second test ever fails,
    Python has changed and a per-manager key has become possible.
    """
    pytester.makepyfile(PROXY_TESTS)
    result, _ = session("--ipc-start-method=all")
    result.assert_outcomes(passed=6)


MODE_TESTS = """
import os
from multiprocessing import shared_memory

import helpers


def test_modes(ipc_start_method, ipc_context, shared_value, shared_array, ipc_workers, tmp_path_factory):
    lock = ipc_context.Lock()
    own = shared_memory.SharedMemory(create=True, size=64)
    try:
        assert helpers.problems(os.path.join("/dev/shm", own.name.lstrip("/"))) == []
    finally:
        own.close()
        own.unlink()
    ipc_workers.start(helpers.private_segment, name="segment")
    [(mode, uid)] = ipc_workers.join()
    assert (oct(mode & 0o077), uid) == ("0o0", os.getuid()), oct(mode)
    semaphores = helpers.semaphores()
    if ipc_start_method == "fork":
        assert semaphores == []  # unlinked as soon as they are made
    else:
        assert len(semaphores) >= 3  # the locks of shared_value, shared_array and lock
        assert helpers.problems(*semaphores) == []
    arenas = helpers.arena_files()
    assert arenas, "found no file behind shared_value and shared_array"
    assert helpers.problems(*arenas) == []
    workdirs = list(tmp_path_factory.getbasetemp().glob("ipc-workers-*"))
    assert len(workdirs) == 1
    assert helpers.problems(*workdirs) == []
    helpers.record(method=ipc_start_method, semaphores=len(semaphores), arenas=len(arenas))
"""


def test_shared_memory_semaphores_heap_files_and_worker_directories_are_private(
    pytester: pytest.Pytester, session: Callable[..., tuple[pytest.RunResult, list[dict]]]
) -> None:
    """Under umask 0, every IPC object a test makes has no group or other permission bits.

    SharedMemory segments made by the test and by a worker (mode 0o600), the
    named semaphores behind locks (spawn and forkserver: under fork they are
    unlinked at once), the files behind ``Value``/``Array`` and the
    ``ipc_workers`` directory under basetemp (0o700).
    """
    pytester.makepyfile(MODE_TESTS)
    result, facts = session("--ipc-start-method=all")
    result.assert_outcomes(passed=3)
    assert sorted(f["method"] for f in facts) == ["fork", "forkserver", "spawn"]


EVERYTHING = """
import pytest

import bodies
import helpers
import pytest_ipc


def test_every_fixture(
    ipc_start_method, ipc_context, shared_value, shared_array, pipe_pair, fanin_queue,
    ipc_workers, ipc_manager, ipc_outcome,
):
    parent, child = pipe_pair
    counter = ipc_manager.Value("i", 0)
    fanin_queue.put(counter)
    ipc_workers.start(helpers.bump_received, args=(fanin_queue,))
    ipc_workers.start(helpers.send, args=(child, "hello"))
    ipc_workers.start(bodies.add_locked, args=(shared_value, 5))
    ipc_workers.start(helpers.private_segment)
    ipc_workers.join()
    shared_array[0] = shared_value.value
    assert (parent.recv(), counter.value, shared_array[0]) == ("hello", 1, 5)
    ipc_outcome.record("done")
    # While every fixture is alive: what exists only until teardown shows here.
    helpers.record(method=ipc_start_method, paths=helpers.listing())


@pytest.mark.ipc_race(runs=3)
def test_race(shared_value, ipc_workers):
    ipc_workers.start(bodies.add_locked, args=(shared_value, 10), count=2)
    ipc_workers.join()


@pytest.mark.xfail(strict=True, raises=pytest_ipc.WorkerFailed)
def test_crashing_worker(ipc_workers):
    ipc_workers.start(helpers.crash)
    ipc_workers.join()
"""


def _snapshot(root: Path) -> dict[str, tuple[int, bool]]:
    """Every path under ``root`` (root included) with its mtime and whether it is a directory."""
    seen = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [".", *dirnames, *filenames]:
            path = os.path.normpath(os.path.join(dirpath, name))
            st = os.lstat(path)
            seen[path] = (st.st_mtime_ns, os.path.isdir(path) and not os.path.islink(path))
    return seen


def _under(path: str, *roots: Path) -> bool:
    return any(path == str(r) or path.startswith(str(r) + os.sep) for r in roots)


@pytest.fixture
def short_tmpdir() -> Iterator[Path]:
    """A fresh directory right under the system's temporary directory, removed afterwards."""
    path = Path(tempfile.mkdtemp(prefix="ipc-sec-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.mark.parametrize("tmpdir_depth", ["short", "deep"])
def test_a_session_writes_nothing_outside_the_given_paths(
    pytester: pytest.Pytester,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    short_tmpdir: Path,
    tmpdir_depth: str,
) -> None:
    """A session using every fixture, a race test, a crashing worker and --ipc-report writes only where allowed.

    The allowed new paths: the report, pytest's basetemp under
    TMPDIR/pytest-of-<user>, .pytest_cache and __pycache__ in the rootdir.
    multiprocessing's pymp-* directories are allowed while the session runs;
    one left behind is a leak.  Nothing existing may change or go, and
    nothing of the plugin's may stay in basetemp or /dev/shm.  With a short
    TMPDIR the Manager's socket is under basetemp, with a deep one in pymp-*.
    """
    home, out = tmp_path / "home", tmp_path / "out"
    tmpdir = short_tmpdir
    pytest_temp = tmpdir / f"pytest-of-{getpass.getuser()}"
    if tmpdir_depth == "deep":
        # Just deep enough that a socket under basetemp (pytest-0, the first)
        # is too long, and short enough for multiprocessing's pymp-*/listener-*.
        basetemp_length = len(os.fsencode(str(pytest_temp / "pytest-0")))
        tmpdir = tmpdir / ("d" * (UNIX_PATH_MAX - MANAGER_SUFFIX - basetemp_length))
        pytest_temp = tmpdir / pytest_temp.name
        tmpdir.mkdir()
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("TMPDIR", str(tmpdir))
    # pytester points pytest's default basetemp elsewhere: leave it default.
    monkeypatch.delenv("PYTEST_DEBUG_TEMPROOT", raising=False)
    isolation = isolate(monkeypatch, tmp_path)
    facts = tmp_path / "facts.jsonl"
    monkeypatch.setenv("IPC_TEST_OUT", str(facts))
    copy_bodies(pytester)
    pytester.makepyfile(helpers=HELPERS, test_everything=EVERYTHING)
    pytester.makeconftest(CONFTEST)
    rootdir = pytester.path
    roots = (rootdir, home, tmpdir)
    monkeypatch.setenv("IPC_TEST_ROOTS", os.pathsep.join(map(str, roots)))
    before = {}
    for root in roots:
        before.update(_snapshot(root))
    report = out / "r.json"
    # Not runpytest_subprocess, which passes its own --basetemp, nor run(),
    # which keeps the output in files in the rootdir.
    started = time.monotonic()
    proc = pytester.popen(
        [sys.executable, "-m", "pytest", "-p", "pytest_ipc", "--ipc-start-method=all", f"--ipc-report={report}"],
        stdin=subprocess.DEVNULL,
        text=True,
    )
    try:
        stdout, stderr = proc.communicate(timeout=180)
    finally:
        proc.kill()
        proc.wait()
    print(stdout, stderr, sep="\n")  # shown when the test fails
    result = pytest.RunResult(proc.returncode, stdout.splitlines(), stderr.splitlines(), time.monotonic() - started)
    result.assert_outcomes(passed=6, xfailed=3)
    after = {}
    for root in roots:
        after.update(_snapshot(root))

    allowed = (pytest_temp, rootdir / ".pytest_cache", rootdir / "__pycache__")
    new = sorted(set(after) - set(before))
    leaked = [p for p in new if _under(p, tmpdir) and os.path.basename(p).startswith("pymp-")]
    assert not leaked, f"multiprocessing's temporary directories were left behind: {leaked}"
    assert [p for p in new if not _under(p, *allowed)] == []
    during = _facts(facts)
    assert sorted(f["method"] for f in during) == ["fork", "forkserver", "spawn"]
    # multiprocessing's pymp-* directories may exist while the session runs.
    pymp = [
        Path(p) for f in during for p in f["paths"] if Path(p).parent == tmpdir and Path(p).name.startswith("pymp-")
    ]
    for fact in during:
        assert [p for p in fact["paths"] if p not in before and not _under(p, *allowed, *pymp)] == []
        sockets = [p for p in fact["paths"] if os.path.basename(os.path.dirname(p)).startswith("ipc-manager-")]
        assert len(sockets) == (1 if tmpdir_depth == "short" else 0), fact["paths"]
    assert sorted(set(before) - set(after)) == []
    # A directory's mtime moves when an entry is added or removed in it (each checked above).
    assert [p for p in before if p in after and after[p] != before[p] and not after[p][1]] == []
    assert sorted(os.listdir(out)) == ["r.json"]
    assert len(json.loads(report.read_text())["tests"]) == 3
    basetemps = [p for p in pytest_temp.iterdir() if p.name.startswith("pytest-") and not p.is_symlink()]
    assert len(basetemps) == 1
    assert sorted(p.name for p in basetemps[0].glob("ipc-*")) == []
    assert isolation.left_in_shm() == []

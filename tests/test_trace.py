"""Where the race is: the conflicting accesses a failing ipc_race verdict names, with the user's lines.

Every test here runs a real pytest session whose workers race for real; the
report is read from its output, its ``--ipc-report`` JSON and its JUnit XML.

Why a miss is vanishingly unlikely: amplification loses updates of the
tutorial's counter (9 workers x 50 ``+= 1``) in every run we have measured,
under every start method (bench/detection.py), so the verdict is certain
after two runs and the first traced run shows a lost update; the trace
then has up to five runs to find one.  The oversell's six sellers check
60 times against a limit of 10 behind one start gate, with high jitter, so
stale checks come by the dozen in each run.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

import pytest
from sessions import report_tests, run

METHODS = ("fork", "spawn", "forkserver")


def line_of(source: str, marker: str) -> int:
    """The line number of the (one) line of ``source`` that carries ``# marker``."""
    lines = [n for n, text in enumerate(source.splitlines(), 1) if text.rstrip().endswith(f"# {marker}")]
    assert len(lines) == 1, (marker, lines)
    return lines[0]


COUNTER = """\
import pytest


def add(counter, n):
    for _ in range(n):
        counter.value += 1  # RMW


@pytest.mark.ipc_race(runs=20)
def test_counter(ipc_workers, shared_value):
    ipc_workers.start(add, args=(shared_value, 50), count=9)
    ipc_workers.join()


def add_locked(counter, n):
    for _ in range(n):
        with counter.get_lock():
            counter.value += 1


@pytest.mark.ipc_race(runs=3)
def test_locked(ipc_workers, shared_value):
    ipc_workers.start(add_locked, args=(shared_value, 50), count=9)
    ipc_workers.join()
"""


@pytest.mark.parametrize("method", METHODS)
def test_lost_update_names_the_object_the_workers_and_the_line(pytester: pytest.Pytester, method: str) -> None:
    pytester.makepyfile(test_counter=COUNTER)
    result = run(pytester, f"--ipc-start-method={method}", "--ipc-report=report.json", "--junitxml=junit.xml")
    result.assert_outcomes(failed=1, passed=1)
    rmw = line_of(COUNTER, "RMW")
    out = result.stdout.str()
    head = re.search(
        r"^lost update on shared_value \(Value\('i'\), created by the shared_value fixture\), "
        r"run (\d+) \(seed (\d+)\):$",
        out,
        re.MULTILINE,
    )
    assert head, out
    rows = out[head.end() :].split("\nrerun:", 1)[0].strip("\n").splitlines()
    # Each row: worker, op, value, the user's line, its source; the last says what it overwrote.
    pattern = rf"^  (add-\d)\s+(read|write)\s+(\d+)\s+test_counter.py:{rmw} in add\s+counter.value \+= 1"
    parsed = [re.match(pattern, row) for row in rows]
    assert all(parsed), rows
    workers = {m.group(1) for m in parsed if m}
    assert len(workers) >= 2, rows
    last = parsed[-1]
    assert last and last.group(2) == "write", rows
    other = re.search(
        r"<- overwrote (?:(add-\d)'s \d+ without reading it|\d+ writes of others without reading them "
        r"\(the last: (add-\d)'s \d+\))$",
        rows[-1],
    )
    assert other and (other.group(1) or other.group(2)) != last.group(1), rows[-1]
    # The race-free twin is never traced, and says nothing of conflicts.
    tests = report_tests(pytester)
    locked = tests["test_counter.py::test_locked"]
    assert locked["verdict"] == "passed" and "conflicts" not in locked and "trace" not in locked
    racy = tests["test_counter.py::test_counter"]
    assert racy["trace"]["found"] and racy["trace"]["traced_runs"] >= 1
    conflict = racy["conflicts"][0]
    assert conflict["kind"] == "lost update" and conflict["order"] == "lock"
    assert conflict["object"].startswith("shared_value (Value('i')")
    assert conflict["run"] == int(head.group(1)) and conflict["seed"] == int(head.group(2))
    assert {(a["file"], a["line"], a["function"]) for a in conflict["accesses"]} == {("test_counter.py", rmw, "add")}
    assert conflict["accesses"][-1]["op"] == "write"
    # JUnit: one shortened property per conflict.
    junit = ET.parse(pytester.path / "junit.xml")
    props = [p.get("value") for p in junit.iter("property") if p.get("name") == "ipc_conflict"]
    assert len(props) == 1 and props[0], props
    assert props[0].startswith("lost update on shared_value") and f"test_counter.py:{rmw}" in props[0], props


OVERSELL = """\
import pytest

LIMIT = 10


def sell(sold, lock, n):
    for _ in range(n):
        if sold.value < LIMIT:  # CHECK
            with lock:
                sold.value += 1  # ACT


@pytest.mark.ipc_race(runs=30, jitter="high", expect=False)
def test_oversell(ipc_workers, ipc_context, ipc_outcome):
    sold = ipc_context.Value("i", 0)  # MADE
    lock = ipc_context.Lock()
    for _slot in range(6):
        ipc_workers.start(sell, args=(sold, lock, 10))
    ipc_workers.join()
    ipc_outcome.record(sold.value > LIMIT)
"""


@pytest.mark.parametrize("method", METHODS)
def test_check_then_act_names_the_check_and_the_act(pytester: pytest.Pytester, method: str) -> None:
    pytester.makepyfile(test_shop=OVERSELL)
    result = run(pytester, f"--ipc-start-method={method}", "--ipc-report=report.json")
    result.assert_outcomes(failed=1)
    check, act, made = (line_of(OVERSELL, m) for m in ("CHECK", "ACT", "MADE"))
    out = result.stdout.str()
    assert re.search(rf"^check-then-act on Value\('i'\) created at test_shop.py:{made}, run \d+", out, re.M), out
    conflict = report_tests(pytester)["test_shop.py::test_oversell"]["conflicts"][0]
    assert conflict["kind"] == "check-then-act"
    accesses = conflict["accesses"]
    seller = accesses[-1]["worker"]
    # The seller's check, at the if line; its act, at the += line; another's write between them.
    mine = [a for a in accesses if a["worker"] == seller]
    assert (mine[0]["op"], mine[0]["line"]) == ("read", check), accesses
    assert mine[0]["source"] == "if sold.value < LIMIT:  # CHECK"
    assert (accesses[-1]["op"], accesses[-1]["line"]) == ("write", act)
    assert any(a["worker"] != seller and a["op"] == "write" and a["line"] == act for a in accesses)
    assert f"acted on the check at line {check}" in conflict["note"]


PROXIES = """\
import pytest


def ns_add(ns, n):
    for _ in range(n):
        ns.total = ns.total + 1  # NS


def dict_add(d, n):
    for _ in range(n):
        d["k"] += 1  # DICT


def value_add(v, n):
    for _ in range(n):
        v.value += 1  # VALUE


def slot_add(a, n):
    for _ in range(n):
        a[2] += 1  # ARRAY


@pytest.mark.ipc_race(runs=20)
def test_namespace(ipc_workers, ipc_manager, ipc_outcome):
    ns = ipc_manager.Namespace()  # NSMADE
    ns.total = 0
    ipc_workers.start(ns_add, args=(ns, 20), count=3)
    ipc_workers.join()
    ipc_outcome.record(ns.total)


@pytest.mark.ipc_race(runs=20)
def test_dict(ipc_workers, ipc_manager, ipc_outcome):
    d = ipc_manager.dict(k=0)  # DICTMADE
    ipc_workers.start(dict_add, args=(d, 20), count=3)
    ipc_workers.join()
    ipc_outcome.record(d["k"])


@pytest.mark.ipc_race(runs=20)
def test_value(ipc_workers, ipc_manager, ipc_outcome):
    v = ipc_manager.Value("i", 0)  # VALUEMADE
    ipc_workers.start(value_add, args=(v, 20), count=3)
    ipc_workers.join()
    ipc_outcome.record(v.value)


@pytest.mark.ipc_race(runs=20)
def test_array(ipc_workers, shared_array):
    ipc_workers.start(slot_add, args=(shared_array, 30), count=4)
    ipc_workers.join()


def raw_add(v, n):
    for _ in range(n):
        v.value += 1  # RAW


@pytest.mark.ipc_race(runs=20)
def test_raw(ipc_workers, ipc_context, ipc_outcome):
    v = ipc_context.RawValue("i", 0)  # RAWMADE
    ipc_workers.start(raw_add, args=(v, 300), count=4)
    ipc_workers.join()
    ipc_outcome.record(v.value)


def shm_add(name, n):
    from multiprocessing import shared_memory

    shm = shared_memory.SharedMemory(name=name)
    try:
        for _ in range(n):
            shm.buf[0] = (shm.buf[0] + 1) % 256
    finally:
        shm.close()


@pytest.mark.ipc_race(runs=20)
def test_shm(ipc_workers, ipc_outcome):
    from multiprocessing import shared_memory

    shm = shared_memory.SharedMemory(create=True, size=1)
    try:
        shm.buf[0] = 0
        ipc_workers.start(shm_add, args=(shm.name, 200), count=4)
        ipc_workers.join()
        ipc_outcome.record(shm.buf[0])
    finally:
        shm.close()
        shm.unlink()
"""


@pytest.mark.parametrize("method", METHODS)
def test_proxies_array_elements_and_raw_memory(pytester: pytest.Pytester, method: str) -> None:
    """Manager proxies and a RawValue (ordered by time), an Array's element, and SharedMemory's one-line note."""
    pytester.makepyfile(test_kinds=PROXIES)
    result = run(pytester, f"--ipc-start-method={method}", "--ipc-report=report.json", "-p", "no:randomly")
    result.assert_outcomes(failed=6)
    out = result.stdout.str()
    tests = report_tests(pytester)

    def made(marker: str) -> str:
        return f"created at test_kinds.py:{line_of(PROXIES, marker)}"

    expected = {
        "test_namespace": (f"Namespace proxy.total {made('NSMADE')}", "NS", "ns_add", "time"),
        "test_dict": (f"dict proxy['k'] {made('DICTMADE')}", "DICT", "dict_add", "time"),
        "test_value": (f"Value proxy {made('VALUEMADE')}", "VALUE", "value_add", "time"),
        "test_array": (
            "shared_array[2] (Array('i', 10), created by the shared_array fixture)",
            "ARRAY",
            "slot_add",
            "lock",
        ),
        "test_raw": (f"RawValue('i') {made('RAWMADE')}", "RAW", "raw_add", "time"),
    }
    for name, (label, marker, function, order) in expected.items():
        entry = tests[f"test_kinds.py::{name}"]
        assert entry["trace"]["found"], (name, entry["trace"])
        conflict = entry["conflicts"][0]
        assert (conflict["kind"], conflict["object"], conflict["order"]) == ("lost update", label, order), conflict
        line = line_of(PROXIES, marker)
        assert {(a["line"], a["function"]) for a in conflict["accesses"]} == {(line, function)}, conflict
        if order == "time":
            assert f"lost update on {label}, run {conflict['run']} (seed {conflict['seed']}) (ordered by time" in out
    shm = tests["test_kinds.py::test_shm"]
    assert shm["conflicts"] == [] and not shm["trace"]["found"]
    assert shm["trace"]["note"].startswith("no trace: 1 run traced, no access"), shm["trace"]
    assert shm["trace"]["note"] in out


def test_shards_merge_keeps_the_conflict(pytester: pytest.Pytester) -> None:
    """Under pytest-xdist with --ipc-shards, the merged verdict shows a shard's conflict, in text and JSON."""
    pytester.makepyfile(test_counter=COUNTER)
    result = run(pytester, "-n", "2", "--ipc-shards=2", "--ipc-start-method=fork", "--ipc-report=report.json")
    out = result.stdout.str()
    assert "lost update on shared_value (Value('i'), created by the shared_value fixture)" in out, out
    merged = report_tests(pytester)["test_counter.py::test_counter"]
    assert merged["shards"] == 2 and merged["verdict"] == "race"
    assert merged["conflicts"] and merged["conflicts"][0]["kind"] == "lost update"
    assert {a["line"] for a in merged["conflicts"][0]["accesses"]} == {line_of(COUNTER, "RMW")}

"""Where the race is: diagnostic runs traced, and the conflicting accesses read from their traces.

Once an ``ipc_race`` test's verdict is certain, its next runs are traced
(:mod:`pytest_ipc._worker.trace`: every read and write of a ``Value`` or an
``Array`` element, synchronized or raw, and every value a ``Manager`` proxy
gets or sets, with its worker, time and the user's line) until one of them shows a
conflict, at most :data:`TRACE_RUNS` runs or :data:`TRACE_SECONDS` after the
proof.  Race-free tests never reach a traced run, so they pay nothing.

The conflicts looked for, on one object (one element of an array, one key of
a proxied dict or namespace), in the order of its accesses:

- lost update: a worker read, another worker wrote, then the first wrote
  without reading again: its write overwrote a value it never read;
- check-then-act: a worker read the object in a decision (an ``if``,
  ``while`` or ``assert`` line, or a comparison), another wrote it, and the
  first then acted on it (wrote it) from another line: it acted on a value
  that was no longer there.

And across two objects:

- torn read: a worker read two objects one after the other (one function,
  the second on a later line) while another worker wrote the same two in
  the same way, and the reads fell across the writes: one value from before
  the other's update and one from after it, a pair that never existed;
- lock-order inversion: a worker took one lock while it held another, and
  another worker took them the other way round (even with a timeout): each
  can hold one while it waits for the other, a deadlock whether or not this
  run hung.  Its facts are the order in which each worker nests its locks,
  not a clock.

Where none is found, the report says which objects the traced runs touched,
and from which lines.  The findings are plain dicts (see
:class:`pytest_ipc.race.schema.Conflict`) so that they travel on the report
to the xdist controller and into the JSON report; :func:`format_findings`
prints them.
"""

from __future__ import annotations

import ast
import bisect
import itertools
import linecache
import os
import shutil
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import pytest

from pytest_ipc.config import safe_repr
from pytest_ipc.deadlock import Variables, lock_names
from pytest_ipc.race.schema import Conflict, ConflictAccess, TraceSummary

# At most this many traced runs after the verdict is certain, and none that
# starts later than this many seconds after the proof (one always runs); and
# none after a traced run that recorded no access at all (its objects have no
# points: more runs would show nothing more).  The first traced runs are the
# histogram's allowance (runner.HISTOGRAM_RUNS); only a search that goes on
# past it costs runs.  The tutorial's counter shows a lost update in the
# first traced run under every start method (bench/detection.py --report).
TRACE_RUNS = 5
TRACE_SECONDS = 2.0
# The most conflicts a verdict prints (one of each kind per object, objects in order).
SHOWN = 3

_DECISIONS = ("if ", "elif ", "while ", "assert ")
# The ops of a lock's rows: the locks a worker held, and the one it took or waited for in vain.
_LOCK_OPS = ("holds", "takes", "waits")
_TOUCHED = {
    "read": "read",
    "write": "written",
    "take": "taken",
    "timeout": "waited for",
    "put": "put to",
    "get": "got from",
    "empty": "asked empty()",
}
_COMPARISONS = ("<", ">", "==", "!=", " in ", " is ")


@dataclass
class Access:
    time: int
    worker: str
    op: str  # "read" or "write"; a lock's "take" or "timeout" (its value: the locks held)
    value: Any
    file: str
    line: int
    function: str


# A conflict across objects before it is a Conflict: its kind, its places (identity, key), the rows, the note.
Finding = tuple[str, list[tuple[str, Any]], list[Access], str]


def names(item: pytest.Item) -> dict[str, tuple[str, str]]:
    """Per object identity: the name the test knows it by (a fixture's, or ""), and where it was made.

    Called in the test process while a traced run's objects still live.
    """
    from pytest_ipc._worker import trace

    variables = Variables()
    known: dict[str, tuple[str, str]] = {}
    for made, (site, pos) in trace.made_here().items():
        file = site.rpartition(":")[0]
        known[made] = (variables.assigned(file, pos) or "", f"created at {_shown_path(item, site)}")
    for name, value in (getattr(item, "funcargs", None) or {}).items():
        try:
            ident = trace.identity(value)
        except Exception:  # a fixture's value with an odd __getattr__: not one of ours
            continue
        if ident is not None:
            known[ident] = (name, f"created by the {name} fixture")
    return known


def _shown_path(item: pytest.Item, path: str) -> str:
    """``path`` as pytest shows a test's: relative to the rootdir when it is under it."""
    file, sep, line = path.rpartition(":")
    if not sep or not line.isdigit():
        file, line = path, ""
    try:
        rel = os.path.relpath(file, item.config.rootpath)
    except ValueError:  # another drive
        rel = file
    shown = file if rel.startswith(os.pardir) else rel
    return f"{shown}:{line}" if line else shown


class Tracer:
    """The diagnostic runs of one ``ipc_race`` item: when to trace, and what the traces showed."""

    def __init__(self, item: pytest.Item) -> None:
        self.item = item
        self.runs = 0  # traced runs made
        self.findings: list[Conflict] = []
        self._touched: dict[str, dict[tuple[str, str, int], set[str]]] = {}
        self._types: dict[str, tuple[str, str, str, str]] = {}  # ident -> (name, type, created, order)
        self._since: float | None = None
        self._events = 0

    def wanted(self, proven: bool) -> bool:
        """Whether the next run is traced: the verdict is certain and no trace has shown its race yet."""
        if not proven or not self.searching:
            return False
        if self._since is None:
            self._since = time.monotonic()
        return True

    @property
    def searching(self) -> bool:
        """Whether more traced runs may still find the conflict (see :data:`TRACE_RUNS`)."""
        if self.findings or (self.runs and not self._events):
            return False
        return self._since is None or (self.runs < TRACE_RUNS and time.monotonic() - self._since < TRACE_SECONDS)

    def begin(self) -> str:
        """A fresh directory for the next run's traces."""
        from pytest_ipc._worker import trace
        from pytest_ipc._worker.amplify import patches

        patches.install()  # the objects the run makes are noted from the start (with jitter off too)
        trace.note_sites(True)
        return tempfile.mkdtemp(prefix="pytest-ipc-trace-")

    def discard(self, directory: str) -> None:
        """Remove a traced run's directory unread (the run was cut short)."""
        from pytest_ipc._worker import trace

        trace.note_sites(False)
        shutil.rmtree(directory, ignore_errors=True)

    def end(self, directory: str, record: Any, known: dict[str, tuple[str, str]]) -> None:
        """Read and remove a traced run's directory; keep what it showed."""
        from pytest_ipc._worker import trace

        trace.note_sites(False)
        self.runs += 1
        try:
            groups = self._read(directory, known)
        finally:
            shutil.rmtree(directory, ignore_errors=True)
        for (ident, key), accesses in groups.items():
            if not ident.startswith("lock:"):
                for kind, shown, note, between in _conflicts(accesses):
                    self.findings.append(self._finding(kind, [(ident, key)], shown, note, between, record))
            self._note_touched(ident, key, accesses)
        for kind, places, shown, note in _torn_reads(groups) + self._inversions(groups) + _empty_checks(groups):
            self.findings.append(self._finding(kind, places, shown, note, 0, record))

    def _read(self, directory: str, known: dict[str, tuple[str, str]]) -> dict[tuple[str, Any], list[Access]]:
        from pytest_ipc._worker import trace

        groups: dict[tuple[str, Any], list[Access]] = defaultdict(list)
        for entry in sorted(os.listdir(directory)):
            if not entry.endswith(".trace"):
                continue
            try:
                worker, objects, events = trace.load(os.path.join(directory, entry))
            except (OSError, EOFError, ValueError, TypeError):  # a worker killed while writing it
                continue
            for ident, (kind, site, order) in objects.items():
                if isinstance(site, dict) or ident.startswith("lock:"):  # a lock: named as a deadlock report does
                    name, created = lock_names(ident[len("lock:") :], kind, site or None)
                else:
                    name, created = known.get(ident, ("", f"created at {_shown_path(self.item, site)}" if site else ""))
                old = self._types.get(ident)
                if old is None or (not old[0] and name) or (not old[2] and created):
                    self._types[ident] = (name, kind, created, order)
            for when, ident, key, op, value, file, line, func in events:
                key = tuple(key) if isinstance(key, list) else key
                groups[(ident, key)].append(Access(when, worker, op, value, file, line, func))
                self._events += 1
        for accesses in groups.values():
            accesses.sort(key=lambda a: (a.time, a.worker))
        return groups

    def _finding(
        self, kind: str, places: list[tuple[str, Any]], shown: list[Access], note: str, between: int, record: Any
    ) -> Conflict:
        """A conflict on one object (one place), or on two (a torn read, a lock-order inversion)."""
        labels, types, made, orders = [], [], [], []
        for ident, key in places:
            name, type_, created, order = self._types.get(ident, ("", "object", "", "time"))
            labels.append(_object_label(name, type_, created, key))
            types.append(type_)
            made.append(created)
            orders.append(order)
        key = places[0][1] if len(places) == 1 else None
        return Conflict(
            kind=kind,
            object=" and ".join(labels),
            type=" and ".join(types),
            created=" and ".join(c for c in made if c),
            key=safe_repr(key) if key is not None else None,
            run=record.index,
            seed=record.seed,
            order="lock" if all(o == "lock" for o in orders) else "time",
            accesses=[self._access(a) for a in shown],
            note=note,
            writes_between=between,
        )

    def _lock_name(self, ident: str) -> str:
        name, type_, created, _order = self._types.get(ident, ("", "Lock", "", "lock"))
        return name or f"the {type_} {created}".rstrip()

    def _inversions(self, groups: dict[tuple[str, Any], list[Access]]) -> list[Finding]:
        """The pairs of locks that two workers nested in opposite orders, each with its four rows.

        A worker's take of lock B while it held lock A is an edge A -> B; an
        edge B -> A of another worker closes the cycle.  The first example
        of each edge and worker is kept.
        """
        edges: dict[tuple[str, str], dict[str, tuple[Access, Access, frozenset[str]]]] = {}
        for (ident, _key), accesses in groups.items():
            if not ident.startswith("lock:"):
                continue
            for take in accesses:
                holding = frozenset(h[0] for h in take.value or ())
                verb = "takes" if take.op == "take" else "waits"
                lock = self._lock_name(ident)
                shown = Access(take.time, take.worker, verb, lock, take.file, take.line, take.function)
                for held, file, line, function in take.value or ():
                    row = Access(take.time, take.worker, "holds", self._lock_name(held), file, line, function)
                    edges.setdefault((held, ident), {}).setdefault(take.worker, (row, shown, holding))
        found = []
        for (a, b), by in sorted(edges.items()):
            back = edges.get((b, a))
            if a >= b or not back:
                continue
            # Two nestings inside a common outer lock cannot deadlock: that lock lets one in at a time.
            pair = next(
                ((w1, w2) for w1 in by for w2 in back if w1 != w2 and not (by[w1][2] & back[w2][2]) - {a, b}),
                None,
            )
            if pair is None:
                continue
            (hold1, take1, _), (hold2, take2, _) = by[pair[0]], back[pair[1]]
            verb = "waited in vain (a timeout) for" if take2.op == "waits" else "takes"
            note = (
                f"<- {verb} {take2.value} while holding {hold2.value}, the opposite order to {take1.worker}'s: "
                "each can hold one while it waits for the other, a deadlock"
            )
            found.append(("lock-order inversion", [(a, None), (b, None)], [hold1, take1, hold2, take2], note))
        return found

    def _access(self, a: Access) -> ConflictAccess:
        return ConflictAccess(
            worker=a.worker,
            op=a.op,
            value=a.value if a.op in _LOCK_OPS else safe_repr(a.value, 30),
            file=_shown_path(self.item, a.file),
            line=a.line,
            function=a.function,
            source=linecache.getline(a.file, a.line).strip(),
        )

    def _note_touched(self, ident: str, key: Any, accesses: list[Access]) -> None:
        lines = self._touched.setdefault(ident, {})
        for a in accesses:
            lines.setdefault((a.op, _shown_path(self.item, a.file), a.line), set()).add(a.worker)

    def shown(self) -> list[Conflict]:
        """The conflicts the verdict prints, one of each kind per object, at most :data:`SHOWN`.

        Of lost updates the tightest, with the fewest writes in its window
        (see :func:`_window`), the plainest to read (the first such).
        Of checks-then-acts the last: an oversell happens at the limit, as the
        last checks pass on a value that is no longer there.
        """
        best: dict[tuple[str, str], Conflict] = {}
        for finding in self.findings:
            place = (finding["kind"], finding["object"])
            if (
                place not in best
                or finding["kind"] == "check-then-act"
                or finding["writes_between"] < best[place]["writes_between"]
            ):
                best[place] = finding
        return list(best.values())[:SHOWN]

    def summary(self, planned_left: bool) -> TraceSummary:
        """What the traced runs showed, in one dict for the JSON report."""
        from pytest_ipc._worker import trace

        if self.findings:
            note = ""
        elif not self.runs:
            note = (
                "not traced: no run was left after the verdict became certain"
                if not planned_left
                else "not traced: the verdict was not certain before the runs ended"
            )
        elif not self._events:
            note = (
                f"no trace: {_runs(self.runs)} traced, no access to a Value, Array, Queue, lock or Manager proxy "
                + (
                    "(plain memory is not traced)"
                    if trace.TRACES_SHARED_MEMORY
                    else "(SharedMemory buffers are traced from Python 3.12; plain memory is not)"
                )
            )
        else:
            touched = "; ".join(self._touched_text(ident) for ident in self._touched)
            note = (
                f"no lost update or check-then-act in {_runs(self.runs)} traced after the verdict; "
                f"they touched {touched}"
            )
        return TraceSummary(traced_runs=self.runs, found=bool(self.findings), note=note)

    def _touched_text(self, ident: str) -> str:
        name, type_, created, _order = self._types.get(ident, ("", "object", "", "time"))
        parts = []
        for (op, file, line), workers in sorted(
            self._touched[ident].items(), key=lambda kv: (kv[0][1], kv[0][2], kv[0][0])
        ):
            parts.append(f"{_TOUCHED.get(op, op)} at {file}:{line} by {_workers(workers)}")
        return f"{_object_label(name, type_, created, None)}: {', '.join(parts)}"


def _runs(n: int) -> str:
    return f"{n} run" if n == 1 else f"{n} runs"


def _workers(workers: set[str]) -> str:
    listed = sorted(workers)
    return ", ".join(listed) if len(listed) <= 3 else f"{len(listed)} workers ({', '.join(listed[:2])}, ...)"


def _object_label(name: str, type_: str, created: str, key: Any) -> str:
    """``shared_value (Value('i'), created by the shared_value fixture)``, or ``Value('i') created at f.py:3``."""
    if key is None or isinstance(key, tuple):  # the object itself, or a slice
        item = ""
    elif type_.startswith("Namespace") and isinstance(key, str):
        item = f".{key}"
    else:
        item = f"[{key!r}]"
    if name:
        return f"{name}{item} ({type_}, {created})" if created else f"{name}{item} ({type_})"
    what = f"{type_}{item}"
    return f"{what} {created}" if created else what


def _is_decision(access: Access) -> bool:
    source = linecache.getline(access.file, access.line).strip()
    return source.startswith(_DECISIONS) or any(c in source for c in _COMPARISONS)


def _conflicts(accesses: list[Access]) -> list[tuple[str, list[Access], str, int]]:
    """The lost updates and checks-then-acts among one object's accesses, in their order.

    Each is (kind, the accesses to show, the note on the last of them, how
    many writes its window holds besides the last access: see :func:`_window`).
    """
    found: list[tuple[str, list[Access], str, int]] = []
    last_own: dict[str, int] = {}
    for i, access in enumerate(accesses):
        prev = last_own.get(access.worker)
        last_own[access.worker] = i
        if prev is None or accesses[prev].op != "read":
            continue
        writes = [j for j in range(prev + 1, i) if accesses[j].op == "write"]  # all another worker's
        if not writes:
            continue
        check = accesses[prev]
        other = accesses[writes[-1]]
        decision = (check.file, check.line) != (access.file, access.line) and _is_decision(check)
        if access.op == "write" and not decision:
            if len(writes) == 1:
                note = f"<- overwrote {other.worker}'s {safe_repr(other.value, 30)} without reading it"
            else:
                note = f"<- overwrote {len(writes)} writes of others without reading them (the last: {_write(other)})"
            shown, span = _window(accesses, prev, writes[-1], i)
            found.append(("lost update", shown, note, span))
        elif decision:
            act = i if access.op == "write" else _next_own_write(accesses, i)
            if act is None:
                continue
            between = (
                f"{other.worker} wrote {safe_repr(other.value, 30)} in between"
                if len(writes) == 1
                else f"{len(writes)} writes of others came in between (the last: {_write(other)})"
            )
            note = f"<- acted on the check at line {check.line}, which read {safe_repr(check.value, 30)}; {between}"
            shown, span = _window(accesses, prev, writes[-1], act)
            found.append(("check-then-act", shown, note, span))
    return found


def _torn_reads(groups: dict[tuple[str, Any], list[Access]]) -> list[Finding]:
    """The first torn read of each pair of objects, with the rows to show.

    A pair is two accesses of one worker in a row, of one kind (two reads, or
    two writes), to two objects, in one function, the second on a later
    line: ``x = a.value`` then ``y = b.value``; ``a.value = i`` then
    ``b.value = i``.  A reader's pair (r1 on X, r2 on Y) is torn by a writer's
    pair (w1 on X, w2 on Y) when one of the reads falls before its write and
    the other after: r1 < w1 < w2 < r2 (it read the old X, the new Y), or
    w1 < r1 < r2 < w2 (the new X, the old Y), and the values agree: the read
    after a write saw that write's value, the read before it another.  Each
    comparison is between two accesses of one object (ordered by its lock
    where it has one) or of one worker.
    """
    by_worker: dict[str, list[tuple[Access, tuple[str, Any]]]] = defaultdict(list)
    for place, accesses in groups.items():
        if not place[0].startswith("lock:"):
            for a in accesses:
                by_worker[a.worker].append((a, place))
    reads: list[tuple[Access, Access, tuple[str, Any], tuple[str, Any]]] = []
    writes: dict[tuple[Any, Any], dict[str, list[tuple[Access, Access]]]] = defaultdict(lambda: defaultdict(list))
    for worker, seq in by_worker.items():
        seq.sort(key=lambda entry: entry[0].time)
        for (a, x), (b, y) in itertools.pairwise(seq):
            if x == y or a.op != b.op or (a.file, a.function) != (b.file, b.function) or b.line <= a.line:
                continue
            if a.op == "read":
                reads.append((a, b, x, y))
            elif a.op == "write":
                writes[(x, y)][worker].append((a, b))
    found: list[Finding] = []
    seen: set[tuple[Any, Any]] = set()
    starts = {(xy, writer): [w1.time for w1, _w2 in pairs] for xy, by in writes.items() for writer, pairs in by.items()}
    for r1, r2, x, y in reads:
        if (x, y) in seen or (x, y) not in writes:
            continue
        for writer, pairs in writes[(x, y)].items():
            if writer == r1.worker:
                continue
            times = starts[((x, y), writer)]
            k = bisect.bisect_right(times, r1.time)  # the writer's first pair that begins after the first read
            j = bisect.bisect_left(times, r2.time) - 1  # its last pair that begins before the second read
            torn: tuple[list[Access], str] | None = None
            # The values must say so too: where the order is by time, a clock's skew must not tear a pair.
            if (
                k <= j
                and pairs[j][1].time < r2.time
                and r1.value != pairs[j][0].value
                and r2.value == pairs[j][1].value
            ):
                w1, w2 = pairs[j]  # a whole pair of the writer's between the two reads
                torn = (
                    [r1, w1, w2, r2],
                    (
                        f"read {_name_of(r1)} before and {_name_of(r2)} after {writer} wrote them "
                        f"(lines {w1.line} and {w2.line})"
                    ),
                )
            elif (
                k > 0
                and pairs[k - 1][1].time > r2.time
                and r2.value != pairs[k - 1][1].value
                and r1.value == pairs[k - 1][0].value
            ):
                w1, w2 = pairs[k - 1]  # the writer's last pair before it, around the reader's
                torn = [w1, r1, r2, w2], f"{r1.worker} read {_name_of(r1)} after and {_name_of(r2)} before this write"
            if torn is not None:
                found.append(("torn read", [x, y], torn[0], f"<- torn: {torn[1]}: a pair that never existed"))
                seen.add((x, y))
                break
    return found


def _empty_checks(groups: dict[tuple[str, Any], list[Access]]) -> list[Finding]:
    """Per queue, a worker that stopped at ``empty()`` while another worker's items were still to come.

    Stopped: the worker's last access to the queue is an ``empty()`` that said
    empty (a loop that asks again, or gets after all, is no stop).  Still to
    come: items another worker had put were not yet got (``put`` returns
    before the queue's feeder thread has written the item, and ``empty()``
    sees only what was written), or another worker put more after it.
    Ordered by time.
    """
    found: list[Finding] = []
    for place, accesses in groups.items():
        if not place[0].startswith("queue:"):
            continue
        last = {a.worker: i for i, a in enumerate(accesses)}
        stops = {i for i in last.values() if accesses[i].op == "empty" and accesses[i].value is True}
        puts = gets = 0
        last_put: Access | None = None
        for i, a in enumerate(accesses):
            if a.op == "put":
                puts, last_put = puts + 1, a
            elif a.op == "get":
                gets += 1
            elif i in stops:
                pending = puts - gets
                if pending > 0 and last_put is not None and last_put.worker != a.worker:
                    items = "an item" if pending == 1 else f"{pending} items"
                    note = (
                        f"<- stopped at empty(), which said empty while {items} put by {last_put.worker} "
                        "had not yet been got: put() returns before the queue's feeder thread writes an item"
                    )
                    found.append(("check-then-act", [place], [last_put, a], note))
                    break
                later = [b for b in accesses[i + 1 :] if b.op == "put" and b.worker != a.worker]
                if later:
                    more = "one more item" if len(later) == 1 else f"{len(later)} more items"
                    note = f"<- stopped at empty(), which said empty; {later[0].worker} put {more} after it"
                    found.append(("check-then-act", [place], [a, later[0]], note))
                    break
    return found


def _name_of(access: Access) -> str:
    """What a line reads or writes, as its source says (``a.value`` of ``x = a.value``), else "one object"."""
    try:
        statement = ast.parse(linecache.getline(access.file, access.line).strip()).body[0]
    except (SyntaxError, ValueError, IndexError):
        return "one object"
    if isinstance(statement, ast.Assign) and len(statement.targets) == 1:
        return ast.unparse(statement.value if access.op == "read" else statement.targets[0])
    return "one object"


def _write(access: Access) -> str:
    return f"{access.worker}'s {safe_repr(access.value, 30)}"


def _next_own_write(accesses: list[Access], i: int) -> int | None:
    """The index of the worker's own next access after ``i`` if it is a write from the same line."""
    me = accesses[i]
    for j in range(i + 1, len(accesses)):
        if accesses[j].worker == me.worker:
            same = (accesses[j].file, accesses[j].line) == (me.file, me.line)
            return j if accesses[j].op == "write" and same else None
    return None


def _window(accesses: list[Access], first: int, write: int, last: int) -> tuple[list[Access], int]:
    """The accesses to show, and how many writes come before the last of them.

    Shown: from the other worker's read before its ``write`` (or the
    worker's own ``first`` access, whichever is earlier) to the worker's
    ``last``: the worker's own accesses, every write (the values change
    only there), and that read; of the writes before ``last`` only the last
    :data:`_SHOWN_WRITES`.
    """
    me, other = accesses[first].worker, accesses[write].worker
    start = first
    for j in range(write - 1, -1, -1):
        if accesses[j].worker == other:
            if accesses[j].op == "read":
                start = min(start, j)
            break
    writes = [k for k in range(start, last) if accesses[k].op == "write"]
    keep = set(writes[-_SHOWN_WRITES:]) | {start, last}
    shown = [a for k, a in enumerate(accesses[start : last + 1], start) if k in keep or (a.worker == me and k >= first)]
    return shown, len(writes)


_SHOWN_WRITES = 4


def summary_line(conflict: Conflict) -> str:
    """One conflict in a line: ``lost update on shared_value at test_counter.py:7 (add-2, add-5), run 3``."""
    places = sorted({f"{a['file']}:{a['line']}" for a in conflict["accesses"]})
    workers = sorted({a["worker"] for a in conflict["accesses"]})
    where = f"at {', '.join(places)} ({', '.join(workers)})"
    return f"{conflict['kind']} on {conflict['object']} {where}, run {conflict['run']}"


def format_findings(findings: list[Conflict], summary: TraceSummary | None) -> str:
    """The report under the histogram: each conflict's accesses, in order; else the summary's note."""
    if not findings:
        return summary["note"] if summary and summary.get("note") else ""
    blocks = []
    for f in findings:
        order = "" if f["order"] == "lock" else " (ordered by time: no lock orders these accesses)"
        head = f"{f['kind']} on {f['object']}, run {f['run']} (seed {f['seed']}){order}:"
        rows = [
            (a["worker"], a["op"], a["value"], f"{a['file']}:{a['line']} in {a['function']}", a["source"])
            for a in f["accesses"]
        ]
        widths = [max(len(r[k]) for r in rows) for k in range(4)]
        lines = [head]
        for n, row in enumerate(rows):
            text = "  " + "  ".join(cell.ljust(widths[k]) for k, cell in enumerate(row[:4])) + "  " + row[4]
            if n == len(rows) - 1 and f["note"]:
                text += f"   {f['note']}"
            lines.append(text.rstrip())
        blocks.append("\n".join(lines))
    return "\n".join(blocks)

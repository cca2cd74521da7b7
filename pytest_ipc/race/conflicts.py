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

Where none is found, the report says which objects the traced runs touched,
and from which lines.  The findings are plain dicts (see
:class:`pytest_ipc.race.schema.Conflict`) so that they travel on the report
to the xdist controller and into the JSON report; :func:`format_findings`
prints them.
"""

from __future__ import annotations

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
_COMPARISONS = ("<", ">", "==", "!=", " in ", " is ")


@dataclass
class Access:
    time: int
    worker: str
    op: str  # "read" or "write"
    value: Any
    file: str
    line: int
    function: str


def names(item: pytest.Item) -> dict[str, tuple[str, str]]:
    """Per object identity: the name the test knows it by (a fixture's, or ""), and where it was made.

    Called in the test process while a traced run's objects still live.
    """
    from pytest_ipc._worker import trace

    known: dict[str, tuple[str, str]] = {
        ident: ("", f"created at {_shown_path(item, site)}") for ident, site in trace.made_here().items() if site
    }
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
            for kind, shown, note, between in _conflicts(accesses):
                self.findings.append(self._finding(kind, ident, key, shown, note, between, record))
            self._note_touched(ident, key, accesses)

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
        self, kind: str, ident: str, key: Any, shown: list[Access], note: str, between: int, record: Any
    ) -> Conflict:
        name, type_, created, order = self._types.get(ident, ("", "object", "", "time"))
        return Conflict(
            kind=kind,
            object=_object_label(name, type_, created, key),
            type=type_,
            created=created,
            key=safe_repr(key) if key is not None else None,
            run=record.index,
            seed=record.seed,
            order=order,
            accesses=[self._access(a) for a in shown],
            note=note,
            writes_between=between,
        )

    def _access(self, a: Access) -> ConflictAccess:
        return ConflictAccess(
            worker=a.worker,
            op=a.op,
            value=safe_repr(a.value, 30),
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
                f"no trace: {_runs(self.runs)} traced, no access to a Value, Array or Manager proxy "
                "(SharedMemory buffers and plain memory are not traced)"
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
            parts.append(f"{'read' if op == 'read' else 'written'} at {file}:{line} by {_workers(workers)}")
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

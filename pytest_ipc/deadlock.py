"""The lock report of a hang: who holds which lock, who waits for which, and the wait-for cycle.

At a hang, before the hung workers are sent SIGABRT for their stacks
(:meth:`pytest_ipc.workers.IpcWorkers._hang`), :func:`examine` asks each of
them for its lock state (:mod:`pytest_ipc._worker.lockstate`: a signal whose
handler writes a file and a byte into a FIFO), waits for the answers with a
deadline, adds the test process's own state, and builds the wait-for graph:
a worker that waits for a lock points to the process that holds it.  A cycle
is a deadlock, printed before the stacks:

```
deadlock: a wait-for cycle of 2 workers
  'left-0'  holds lock_a (Lock, created at test_x.py:12), taken at test_x.py:5 in left
            waits for lock_b (Lock, created at test_x.py:13) at test_x.py:6 in left
  'right-1' holds lock_b (Lock, created at test_x.py:13), taken at test_x.py:9 in right
            waits for lock_a (Lock, created at test_x.py:12) at test_x.py:10 in right
```

Workers blocked on a lock outside any cycle are listed with the lock's
holder (a worker, the test process, or none that answered).  A lock is named
by the variable its creation assigned it to (read from the source at the
position of the call), by the fixture that made it, or by its kind; and
where it was created, the first frame outside ``multiprocessing`` and
pytest-ipc.  The same facts, as plain data, are
:attr:`pytest_ipc.WorkerTimeout.deadlock` and ``lock_waits``.

Nothing here raises: lock state that cannot be collected is one line.
"""

from __future__ import annotations

import ast
import contextlib
import linecache
import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import wait
from typing import Any, NamedTuple

from pytest_ipc._worker import lockstate
from pytest_ipc._worker.protocol import lock_answers_path, lockstate_path

# How long the hung workers get to answer, all together.  A worker answers
# from a signal handler within milliseconds, blocked on a lock or not; one
# that does not (signals blocked, stuck in C code) just has no state.
ANSWER_GRACE = 1.0

TEST_PROCESS = "the test process"


class Asked(NamedTuple):
    """A hung worker to ask: its name, number (its index: its files), pid, and sentinel (it may exit meanwhile).

    A process that a worker started has ``child-<pid>`` for its number, no
    sentinel (it is not the test process's child), and the worker's name as
    its ``parent``.
    """

    name: str
    number: int | str  # its index in the group
    pid: int
    sentinel: Any
    parent: str | None = None

    @property
    def label(self) -> str:
        if self.parent is None:
            return f"'{self.name}'"
        return f"'{self.name}' (pid {self.pid}, started by '{self.parent}')"


def started_by(workdir: str, workers: set[str]) -> list[Asked]:
    """The processes that ``workers`` started and that answer lock-state queries (see lockstate.AnswerQueriesToo)."""
    found = []
    try:
        entries = os.listdir(workdir)
    except OSError:
        return []
    for entry in sorted(entries):
        if not (entry.startswith("child-") and entry.endswith(".answers")):
            continue
        try:
            pid = int(entry[len("child-") : -len(".answers")])
            with open(os.path.join(workdir, entry), encoding="utf-8") as f:
                name, parent = ast.literal_eval(f.read())
        except (OSError, ValueError, SyntaxError, TypeError):
            continue
        if parent in workers and _alive(pid):
            found.append(Asked(str(name), f"child-{pid}", pid, None, parent))
    return found


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs, not a zombie (a child killed before it could remove its file)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):
        return False


@dataclass
class LockReport:
    """What :func:`examine` found: the lines to print before the stacks, and the same as data."""

    text: str = ""
    deadlock: list[dict[str, Any]] = field(default_factory=list)
    lock_waits: list[dict[str, Any]] = field(default_factory=list)


def examine(asked: Sequence[Asked], workdir: str, grace: float = ANSWER_GRACE) -> LockReport:
    """Ask the hung workers for their lock state and report their locks; never raises."""
    if not asked:
        return LockReport()
    try:
        answers = ask(asked, workdir, grace)
        states = {number: state for number, state in answers.items() if "error" not in state}
        if not states:
            errors = [f"'{a.name}': {answers[a.number]['error']}" for a in asked if a.number in answers]
            if errors:
                return LockReport(f"(no lock state: the hung workers could not take theirs: {'; '.join(errors)})")
            return LockReport(f"(no lock state: no hung worker answered pytest-ipc's query within {grace:g}s)")
        parties = [_Party(TEST_PROCESS, None, os.getpid(), lockstate.snapshot())]
        parties += [
            _Party(a.label, a.name if a.parent is None else f"{a.name}:{a.pid}", a.pid, states[a.number])
            for a in asked
            if a.number in states
        ]
        return _report(parties)
    except Exception as exc:
        return LockReport(f"(no lock state: pytest-ipc could not collect it: {type(exc).__name__}: {exc})")


def ask(asked: Sequence[Asked], workdir: str, grace: float) -> dict[int | str, dict[str, Any]]:
    """The lock state of each worker that answered within ``grace`` seconds, by number.

    A worker whose snapshot failed answers ``{"error": "..."}``.
    """
    fifo = lock_answers_path(workdir)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(fifo)
    os.mkfifo(fifo, 0o600)
    try:
        read_end = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
        # A write end of our own: without one, the read end is at EOF (always
        # readable) between two workers' answers.
        write_end = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        try:
            _wait_for_answers(asked, workdir, read_end, time.monotonic() + grace)
        finally:
            os.close(write_end)
            os.close(read_end)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(fifo)
    answers = {}
    for a in asked:
        state = _read_state(lockstate_path(workdir, a.number))
        if state is not None:
            answers[a.number] = state
    return answers


def _wait_for_answers(asked: Sequence[Asked], workdir: str, read_end: int, deadline: float) -> None:
    waiting: dict[int | str, Asked] = {}
    for a in asked:
        path = lockstate_path(workdir, a.number)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)  # an answer to an earlier query
        try:
            os.kill(a.pid, lockstate.QUERY_SIGNAL)
        except (ProcessLookupError, PermissionError):
            continue
        waiting[a.number] = a
    while waiting:
        # The byte comes after the file is in place: a file there is an answer.
        for index in [i for i in waiting if os.path.exists(lockstate_path(workdir, i))]:
            del waiting[index]
        remaining = deadline - time.monotonic()
        if not waiting or remaining <= 0:
            return
        sentinels = {a.sentinel: a for a in waiting.values() if a.sentinel is not None}
        for ready in wait([read_end, *sentinels], timeout=remaining):
            if ready == read_end:
                with contextlib.suppress(BlockingIOError):
                    os.read(read_end, 4096)
            elif ready in sentinels:
                waiting.pop(sentinels[ready].number, None)  # exited: it will not answer


def _read_state(path: str) -> dict[str, Any] | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            state = ast.literal_eval(f.read())
    except (OSError, ValueError, SyntaxError, MemoryError, RecursionError):
        return None
    if not isinstance(state, dict):
        return None
    return state


# -- the report ---------------------------------------------------------------


class _Party:
    """A process in the wait-for graph: the test process or a hung worker."""

    def __init__(self, label: str, worker: str | None, pid: int, state: dict[str, Any]) -> None:
        self.label = label
        self.worker = worker
        self.pid = pid
        holds = [h for h in state.get("holds", ()) if isinstance(h, dict)]
        waits = [w for w in state.get("waits", ()) if isinstance(w, dict)]
        # In a stable order: holds by where they were taken, waits the main thread's first.
        self.holds: list[dict[str, Any]] = sorted(holds, key=lambda h: _line_key(h.get("taken_at")))
        self.waits: list[dict[str, Any]] = sorted(
            waits, key=lambda w: (w.get("thread") != "MainThread", str(w.get("thread")))
        )

    @property
    def ident(self) -> str:
        return self.worker if self.worker is not None else TEST_PROCESS


def _line_key(at: Any) -> tuple[str, int]:
    if isinstance(at, (tuple, list)) and len(at) == 3 and isinstance(at[1], int):
        return str(at[0]), at[1]
    return "", 0


def _report(parties: list[_Party]) -> LockReport:
    names = _Names()
    holders: dict[str, tuple[_Party, dict[str, Any]]] = {}
    for party in parties:
        for hold in party.holds:
            holders.setdefault(str(hold.get("key")), (party, hold))
    # party index -> [(wait, index of the holder or None)]
    edges: dict[int, list[tuple[dict[str, Any], int | None]]] = {}
    for i, party in enumerate(parties):
        for w in party.waits:
            holder = holders.get(str(w.get("key")))
            edges.setdefault(i, []).append((w, None if holder is None else parties.index(holder[0])))
    if not edges:
        return LockReport()
    cycles = _cycles({i: [h for _, h in out if h is not None] for i, out in edges.items()})
    lines: list[str] = []
    deadlock: list[dict[str, Any]] = []
    in_cycle: set[int] = set()
    for cycle in cycles:
        in_cycle.update(cycle)
        count = len(cycle)
        lines.append(f"deadlock: a wait-for cycle of {count} worker{'s' if count != 1 else ''}")
        width = max(len(parties[i].label) for i in cycle)
        for n, i in enumerate(cycle):
            party, next_party = parties[i], cycle[(n + 1) % count]
            wait_ = next(w for w, h in edges[i] if h == next_party)
            lines += _party_lines(party, party.holds, party.waits, names, width)
            deadlock.append(
                {
                    "worker": party.ident,
                    "pid": party.pid,
                    "holds": [names.hold_data(h) for h in party.holds],
                    "waits_for": names.wait_data(wait_, parties[next_party].ident),
                }
            )
    others = [i for i in sorted(edges) if i not in in_cycle]
    if others:
        lines.append("also blocked on locks:" if cycles else "blocked on locks, with no wait-for cycle:")
        width = max(len(parties[i].label) for i in others)
        for i in others:
            for w, h in edges[i]:
                lines += _party_lines(parties[i], [], [w], names, width)
                holder = None if h is None else holders[str(w.get("key"))]
                pad = " " * (2 + width + 1)
                if holder is None:
                    lines.append(f"{pad}held by none of the processes that answered")
                else:
                    lines.append(f"{pad}held by {holder[0].label}, taken at {names.site(holder[1].get('taken_at'))}")
    lock_waits = [
        {
            "worker": parties[i].ident,
            "pid": parties[i].pid,
            "waits_for": names.wait_data(w, None if h is None else parties[h].ident),
        }
        for i in sorted(edges)
        for w, h in edges[i]
    ]
    return LockReport("\n".join(lines), deadlock, lock_waits)


def _party_lines(
    party: _Party, holds: Iterable[dict[str, Any]], waits: Iterable[dict[str, Any]], names: _Names, width: int
) -> list[str]:
    facts = [f"holds {names.label(h)}, taken at {names.site(h.get('taken_at'))}" for h in holds]
    facts += [f"waits for {names.label(w)} at {names.site(w.get('at'))}{_thread(w)}" for w in waits]
    pad = " " * (2 + width + 1)
    return [f"  {party.label.ljust(width)} {fact}" if n == 0 else pad + fact for n, fact in enumerate(facts)]


def _thread(entry: dict[str, Any]) -> str:
    thread = entry.get("thread")
    return "" if thread in (None, "MainThread") else f" (thread {thread!r})"


def _cycles(graph: dict[int, list[int]]) -> list[list[int]]:
    """One cycle of each strongly connected component that has one, each from its lowest node."""
    order: dict[int, int] = {}
    low: dict[int, int] = {}
    stack: list[int] = []
    on_stack: set[int] = set()
    components: list[list[int]] = []

    def strong(v: int) -> None:
        order[v] = low[v] = len(order)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in order:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], order[w])
        if low[v] == order[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            components.append(component)

    for v in sorted(graph):
        if v not in order:
            strong(v)
    cycles = []
    for component in components:
        members = set(component)
        start = min(component)
        if len(component) == 1 and start not in graph.get(start, ()):
            continue
        path, seen, v = [start], {start: 0}, start
        while True:
            v = next(w for w in graph[v] if w in members)
            if v in seen:
                cycle = path[seen[v] :]
                break
            seen[v] = len(path)
            path.append(v)
        first = cycle.index(min(cycle))
        cycles.append(cycle[first:] + cycle[:first])
    return sorted(cycles)


class Variables:
    """The variable a call's result was assigned to, found from its position in its file's syntax tree."""

    def __init__(self) -> None:
        self._trees: dict[str, ast.AST | None] = {}

    def assigned(self, filename: str, pos: Any) -> str | None:
        """The target of the assignment whose value (or an item of it) is the call at ``pos``.

        ``pos`` is (line, end line, column, end column), as ``co_positions``
        gives it; ``one, two = ctx.Lock(), ctx.Lock()`` names each call.
        """
        if not isinstance(pos, (tuple, list)) or len(pos) != 4:
            return None
        if filename not in self._trees:
            try:
                self._trees[filename] = ast.parse("".join(linecache.getlines(filename)))
            except (SyntaxError, ValueError, MemoryError, RecursionError):
                self._trees[filename] = None
        tree = self._trees[filename]
        if tree is None:
            return None
        for node in ast.walk(tree):
            if isinstance(node, ast.Assign) and len(node.targets) == 1:
                target, value = node.targets[0], node.value
            elif isinstance(node, ast.AnnAssign) and node.value is not None:
                target, value = node.target, node.value
            else:
                continue
            pairs: list[tuple[ast.expr, ast.expr]] = [(target, value)]
            if isinstance(target, (ast.Tuple, ast.List)) and isinstance(value, (ast.Tuple, ast.List)):
                if len(target.elts) == len(value.elts):
                    pairs += zip(target.elts, value.elts, strict=True)
            for t, v in pairs:
                span = (v.lineno, v.end_lineno, v.col_offset, v.end_col_offset)
                if span == tuple(pos) and isinstance(t, (ast.Name, ast.Attribute, ast.Subscript)):
                    return ast.unparse(t)
        return None


class _Names:
    """How locks and source lines read in the report, each worked out once."""

    def __init__(self) -> None:
        self._variables = Variables()

    def site(self, at: Any) -> str:
        if not isinstance(at, (tuple, list)) or len(at) != 3:
            return "an unknown line"
        filename, line, function = at
        return f"{_relative(str(filename))}:{line} in {function}"

    def _created(self, entry: dict[str, Any]) -> tuple[str, dict[str, Any] | None]:
        kind = str(entry.get("kind") or "lock")
        created = entry.get("created")
        if not isinstance(created, dict):
            known = lockstate.created(str(entry.get("key")))  # made in the test process
            created = known[1] if known is not None else None
        return kind, created

    def name(self, entry: dict[str, Any]) -> str | None:
        """The lock's name: the variable it was assigned to, or the fixture that made it."""
        _, created = self._created(entry)
        if created is None:
            return None
        if "by" in created:
            return f"{created['by']}'s lock"
        return self._assigned(created) or created.get("fixture")

    def created_text(self, entry: dict[str, Any]) -> str | None:
        _, created = self._created(entry)
        if created is None:
            return None
        if "by" in created:
            return f"the {created['by']} fixture"
        where = f"{_relative(str(created.get('file')))}:{created.get('line')}"
        if created.get("fixture"):
            where += f" in the {created['fixture']} fixture"
        return where

    def label(self, entry: dict[str, Any]) -> str:
        kind = str(entry.get("kind") or "lock")
        name, created = self.name(entry), self.created_text(entry)
        if created is None:
            return f"a {kind} (created where pytest-ipc did not see it)"
        made = f"created by {created}" if created.startswith("the ") else f"created at {created}"
        return f"{name} ({kind}, {made})" if name else f"a {kind} ({made})"

    def hold_data(self, hold: dict[str, Any]) -> dict[str, Any]:
        return {
            "lock": self.name(hold),
            "kind": hold.get("kind"),
            "created": self.created_text(hold),
            "taken_at": self.site(hold.get("taken_at")),
        }

    def wait_data(self, wait_: dict[str, Any], held_by: str | None) -> dict[str, Any]:
        return {
            "lock": self.name(wait_),
            "kind": wait_.get("kind"),
            "created": self.created_text(wait_),
            "at": self.site(wait_.get("at")),
            "thread": wait_.get("thread"),
            "held_by": held_by,
        }

    def _assigned(self, created: dict[str, Any]) -> str | None:
        return self._variables.assigned(str(created.get("file")), created.get("pos"))


def lock_names(key: str, kind: str, created: dict[str, Any] | None) -> tuple[str, str]:
    """A lock's name (its variable, or its fixture's; "" if none) and "created at f.py:3", as the report has them."""
    names = _Names()
    entry = {"key": key, "kind": kind, "created": created}
    where = names.created_text(entry)
    if where is None:
        return names.name(entry) or "", ""
    return names.name(entry) or "", f"created by {where}" if where.startswith("the ") else f"created at {where}"


def _relative(path: str) -> str:
    """``path`` relative to the working directory when it is under it, as pytest shows paths."""
    try:
        rel = os.path.relpath(path)
    except ValueError:  # pragma: no cover - another drive (Windows)
        return path
    return path if rel.startswith(os.pardir) else rel

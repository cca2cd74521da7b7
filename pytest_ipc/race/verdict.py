"""From runs to one verdict: run records, outcome comparison, the histogram and the verdict table.

One table (:func:`decide`) and one set of messages (:func:`headline`) serve
both a single item's runs (:meth:`RaceResult.verdict`) and the merged shards
of one test (:func:`merge`), so that a test gets the same verdict and the
same words however its runs were spread.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import pytest

from pytest_ipc.config import RacePlan, jitter_name, safe_repr, shorten
from pytest_ipc.errors import RaceDetected, RunsFailed, UnexpectedOutcome
from pytest_ipc.race.conflicts import format_findings
from pytest_ipc.race.schema import SHARD_ONLY, Conflict, RaceEntry, TraceSummary


@dataclass(slots=True)
class RunRecord:
    """One run of an ``ipc_race`` test: its outcome, or how it failed."""

    index: int
    seed: int
    outcome: Any = None
    failed: bool = False
    failure: str = ""  # "AssertionError" etc., for the histogram
    auto: bool = False  # the outcome is the automatic total, not ipc_outcome.record()
    reports: list[pytest.TestReport] = field(default_factory=list)
    sections: list[tuple[str, str, str]] = field(default_factory=list)  # this run's captured output


class Kind(enum.StrEnum):
    """A verdict; its value is its name in the JSON report."""

    PASSED = "passed"
    RACE = "race"  # the runs disagree: outcomes differ, or some failed
    FAILED = "failed"  # every run failed: a plain bug
    UNEXPECTED = "unexpected"  # the runs agree on an outcome outside expect=
    INCOMPLETE = "incomplete"  # shards sent no result: the runs are not all known

    def error_class(self) -> type[BaseException]:
        """The failure that reports this verdict."""
        errors: dict[Kind, type[BaseException]] = {Kind.RACE: RaceDetected, Kind.UNEXPECTED: UnexpectedOutcome}
        return errors.get(self, RunsFailed)


def decide(runs: int, failed_runs: int, distinct: int, unexpected: bool) -> Kind:
    """The verdict table: of one item's runs, or of one test's merged shards."""
    if runs and failed_runs == runs:
        return Kind.FAILED
    if failed_runs or distinct > 1:
        return Kind.RACE
    if unexpected:
        return Kind.UNEXPECTED
    return Kind.PASSED


def headline(kind: Kind, *, runs: str, failed_runs: int, label: str, outcome: str, expected: str) -> str:
    """The first line of a verdict's message, after its class; ``runs`` says how many ("20 runs")."""
    if kind is Kind.RACE and not failed_runs:
        return f"{'totals' if label == 'total' else 'outcomes'} differ across {runs}"
    if kind in (Kind.RACE, Kind.FAILED):
        return f"failed in {failed_runs} of {runs}"
    if kind is Kind.UNEXPECTED:
        return f"outcome {outcome} of all {runs} is not the expected {expected}"
    raise ValueError(f"no headline for {kind}")


def message(first: str, rows: list[tuple[str, int]], label: str, rerun: str, detail: str = "") -> str:
    """A verdict's whole message: its first line, the histogram, the detail, the rerun line."""
    parts = [first, format_histogram(rows, label)]
    if detail:
        parts.append(detail)
    parts.append(f"rerun: {rerun}")
    return "\n".join(parts)


def settings_tail(start_method: str | None, seed: int, jitter: float) -> str:
    return f"start method {start_method}, seed {seed}, jitter {jitter_name(jitter)}"


# -- outcomes: how runs are compared and shown --------------------------------


def histogram_label(record: RunRecord) -> str:
    """How a run shows in the histogram: its outcome's repr, shortened, or ``failed (ExceptionType)``."""
    if record.failed:
        return f"failed ({record.failure})"
    try:
        return shorten(_canonical_repr(record.outcome), 80)
    except Exception:  # a raising __repr__, an int too long to print: safe_repr says so
        return safe_repr(record.outcome)


def _canonical_repr(value: Any) -> str:
    """``repr(value)``, but with a frozenset's elements in sorted order, inside tuples too.

    A frozenset prints in hash order, and string hashes are salted per
    process: the shards of one test run in different pytest-xdist workers,
    and the controller merges their histograms by label, so one outcome must
    print alike in every process.  (Other hashable containers print in a
    fixed order; dicts and sets are never outcomes, being unhashable.)
    """
    kind = type(value)
    if kind is frozenset and value:
        return "frozenset({" + ", ".join(sorted(map(_canonical_repr, value))) + "})"
    if kind is tuple:
        inner = ", ".join(map(_canonical_repr, value))
        return f"({inner},)" if len(value) == 1 else f"({inner})"
    fields = _fields_of(value)
    if fields is not None and any(isinstance(v, (frozenset, tuple)) for _, v in fields[1]):
        # A named tuple's or a dataclass's own repr, with its fields' canonical.
        return f"{fields[0]}(" + ", ".join(f"{name}={_canonical_repr(v)}" for name, v in fields[1]) + ")"
    return repr(value)


def _fields_of(value: Any) -> tuple[str, list[tuple[str, Any]]] | None:
    """The class name and the shown fields of a named tuple or a dataclass instance, else None."""
    kind = type(value)
    names = getattr(kind, "_fields", None)
    if isinstance(value, tuple) and isinstance(names, tuple) and len(names) == len(value):
        return kind.__name__, list(zip(names, value, strict=True))
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return kind.__qualname__, [(f.name, getattr(value, f.name)) for f in dataclasses.fields(value) if f.repr]
    return None


def label_order(label: str) -> tuple[int, Any]:
    """Among equally common outcomes: numbers in numeric order, then other values, then failures.

    By the label alone, so that a single item's histogram and the merge of
    its shards' (which send labels, not values) order ties alike.
    """
    if label.startswith("failed ("):
        return (2, label)
    for kind in (int, float):
        try:
            value = kind(label)
        except ValueError:
            continue
        if value == value:  # NaN is no number to order by
            return (0, value)
    return (1, label)


class _NaN:
    """What every NaN float becomes when outcomes are compared (see :func:`_comparable`)."""

    def __repr__(self) -> str:
        return "nan"


_NAN = _NaN()


def _comparable(value: Any) -> Any:
    """``value`` as runs are compared: by ``==``, except that NaN equals NaN.

    ``nan != nan``, so without this every run whose outcome is (or holds) a
    NaN would differ from every other, and a test that reliably computes NaN
    would be reported as a race.  NaNs inside tuples and frozensets count
    too.  Other values are returned as they are; the common cases (numbers,
    strings, tuples without floats) cost one pass over a tuple in C.
    """
    kind = type(value)
    if kind is float:
        return _NAN if value != value else value
    if kind is not tuple and kind is not frozenset:
        return value
    kinds = set(map(type, value))
    if kinds.isdisjoint((float, tuple, frozenset)):
        return value
    if kinds == {float} and not any(map(float.__ne__, value, value)):
        return value
    return kind(map(_comparable, value))


class _Incomparable(Exception):
    """Two runs' outcomes could not be compared: their ``__eq__`` or ``__hash__`` raised."""


def _groups(records: list[RunRecord]) -> list[list[RunRecord]]:
    """The runs grouped by equal outcome (:func:`_comparable`), failed runs by their exception type.

    In order of first appearance.  Outcomes are compared as values, never by
    how they print: two different outcomes with the same repr, or the same
    shortened repr, are two groups.  Raises :class:`_Incomparable` naming
    the runs when comparing outcomes raises.
    """
    index: dict[Any, list[RunRecord]] = {}
    for record in records:
        try:
            key = ("failed", record.failure) if record.failed else ("outcome", _comparable(record.outcome))
            group = index.get(key)
        except Exception as exc:
            raise _Incomparable(
                f"the outcome {safe_repr(record.outcome)} of run {record.index} "
                f"cannot be compared with earlier runs' outcomes: {safe_repr(exc)}"
            ) from None
        if group is None:
            index[key] = [record]
        else:
            group.append(record)
    return list(index.values())


def _sorted_rows(counts: list[tuple[str, int]]) -> list[tuple[str, int]]:
    """(label, runs) rows, most common first, ties by :func:`label_order`; labels told apart with #n."""
    counts = sorted(counts, key=lambda row: (-row[1], label_order(row[0])))
    alike = Counter(label for label, _ in counts)
    seen: Counter[str] = Counter()
    rows = []
    for label, n in counts:
        if alike[label] > 1:  # different outcomes that print alike
            seen[label] += 1
            label = f"{label} #{seen[label]}"
        rows.append((label, n))
    return rows


def histogram(records: list[RunRecord]) -> list[tuple[str, int]]:
    """(label, runs) rows, one per distinct outcome, most common first; ties in the outcomes' own order.

    Outcomes that print alike but differ are separate rows, ``label #1``,
    ``label #2``.  When outcomes cannot be compared (see
    :meth:`RaceResult.verdict`) the rows group the runs by label, so the
    report still has a histogram.
    """
    try:
        groups = _groups(records)
    except _Incomparable:
        by_label: dict[str, list[RunRecord]] = {}
        for record in records:
            by_label.setdefault(histogram_label(record), []).append(record)
        groups = list(by_label.values())
    return _sorted_rows([(histogram_label(g[0]), len(g)) for g in groups])


def _alike_base(row_label: str) -> str | None:
    """The label without its ``#n`` (see :func:`_sorted_rows`), or None when it has none."""
    base, sep, number = row_label.rpartition(" #")
    return base if sep and number.isdigit() else None


def format_histogram(rows: list[tuple[str, int]], label: str) -> str:
    width = max([len(label)] + [len(k) for k, _ in rows])
    lines = [f"  {label:>{width}}   runs"]
    lines += [f"  {k:>{width}}   {n:>4}" for k, n in rows]
    marked = Counter(_alike_base(k) for k, _ in rows)
    if any(n > 1 for base, n in marked.items() if base is not None):
        lines.append(f"  ({label}s marked #1, #2, ... differ but print alike)")
    return "\n".join(lines)


def _expected(plan: RacePlan, value: Any) -> bool:
    """Whether ``value`` is ``expect`` (or one of them), compared as runs are: NaN equals NaN."""
    choices = plan.expect if isinstance(plan.expect, (list, set, frozenset)) else (plan.expect,)
    mine = _comparable(value)
    return any(bool(mine == _comparable(choice)) for choice in choices)


# -- one item's runs -----------------------------------------------------------


def stop_note(runs: int, max_runs: int, reason: str) -> str:
    """The line that says a racing test stopped before its last run, and why."""
    return (
        f"stopped after {runs} of at most {max_runs} runs, as the verdict was certain: {reason}; "
        "all_runs=True or --ipc-all-runs makes every run"
    )


class Proof:
    """Watches the runs as they come in, for the first proof that the test cannot pass.

    The test fails whatever later runs give once a run fails (with a pass
    beside it that is a race, without one a plain failure), two runs'
    outcomes differ, or an outcome falls outside ``expect``.  Outcomes whose
    comparison raises prove nothing here: the verdict says what is wrong
    with them.
    """

    def __init__(self, plan: RacePlan) -> None:
        self.plan = plan
        self.reason: str | None = None  # why the verdict is certain; None while it is not
        self._passed: RunRecord | None = None
        self._first: Any = None  # the first passed run's outcome, as outcomes are compared
        self._seen: set[Any] = set()  # the outcomes so far (for the progress line)

    @property
    def distinct(self) -> int:
        """How many different outcomes the runs so far had (failed runs by their exception type)."""
        return len(self._seen)

    def add(self, record: RunRecord) -> str | None:
        """Take one more run into account; the reason, once the verdict is certain."""
        try:
            self._seen.add(("failed", record.failure) if record.failed else ("outcome", _comparable(record.outcome)))
        except Exception:  # an outcome whose __hash__ or __eq__ raises: not counted
            pass
        if self.reason is None:
            try:
                self.reason = self._why(record)
            except Exception:  # an outcome whose __eq__ raises: no proof from it
                pass
        return self.reason

    def _why(self, record: RunRecord) -> str | None:
        if record.failed:
            if self._passed is not None:
                return f"run {record.index} failed ({record.failure}) and run {self._passed.index} passed"
            return f"run {record.index} failed ({record.failure})"
        if self._passed is None:
            self._passed, self._first = record, _comparable(record.outcome)
            if self.plan.has_expect and not _expected(self.plan, record.outcome):
                return f"the outcome {safe_repr(record.outcome, 30)} of run {record.index} is not the expected one"
            return None
        if not bool(_comparable(record.outcome) == self._first):
            return (
                f"runs {self._passed.index} and {record.index} disagree "
                f"({safe_repr(self._passed.outcome, 30)} and {safe_repr(record.outcome, 30)})"
            )
        return None


@dataclass
class Verdict:
    kind: Kind
    message: str = ""  # the failure's text; "" when passed


@dataclass
class RaceResult:
    """An ``ipc_race`` item's runs so far, and what is needed to judge and report them."""

    nodeid: str
    plan: RacePlan
    start_method: str
    seed: int  # the session seed
    rerun: str  # the command that replays the item
    records: list[RunRecord] = field(default_factory=list)
    duration: float = 0.0
    planned: int = 0  # the most runs this item could make
    stopped: str | None = None  # why it stopped before them: the verdict was certain
    # Where the race is (see race.conflicts): what the runs traced after the verdict showed.
    conflicts: list[Conflict] = field(default_factory=list)
    trace: TraceSummary | None = None
    deadlock: list[dict[str, Any]] = field(default_factory=list)  # a hang's wait-for cycle (WorkerTimeout.deadlock)

    @property
    def label(self) -> str:
        """``total`` when every outcome is the automatic shared_value/shared_array total."""
        ok = [r for r in self.records if not r.failed]
        return "total" if ok and all(r.auto and r.outcome is not None for r in ok) else "outcome"

    @functools.cached_property
    def _rows(self) -> tuple[list[tuple[str, int]], _Incomparable | None]:
        try:
            groups = _groups(self.records)
        except _Incomparable as exc:
            return histogram(self.records), exc
        return _sorted_rows([(histogram_label(g[0]), len(g)) for g in groups]), None

    def verdict(self) -> Verdict:
        """The verdict of the runs (call once all runs are in)."""
        rows, incomparable = self._rows
        records, label = self.records, self.label
        n, failed = len(records), [r for r in records if r.failed]
        tail = settings_tail(self.start_method, self.seed, self.plan.jitter)
        runs = f"{n} runs"
        if incomparable is not None and not failed:
            # Whether the runs agree is the question, and it has no answer.
            return Verdict(
                Kind.FAILED,
                message(
                    f"cannot tell whether {runs} agree ({tail}): {incomparable}; record plain values "
                    "(numbers, strings, tuples of them)",
                    rows,
                    label,
                    self.rerun,
                ),
            )
        unexpected, detail = False, ""
        if self.plan.has_expect and not failed and len(rows) == 1:
            try:  # the runs agree: one of them stands for all
                unexpected = not _expected(self.plan, records[0].outcome)
            except Exception as exc:
                return Verdict(
                    Kind.UNEXPECTED,
                    message(
                        f"outcome {safe_repr(records[0].outcome)} of all {runs} cannot be compared with the "
                        f"expected {safe_repr(self.plan.expect)}: {safe_repr(exc)} ({tail})",
                        rows,
                        label,
                        self.rerun,
                    ),
                )
        kind = decide(n, len(failed), len(rows), unexpected)
        if kind is Kind.PASSED:
            return Verdict(kind)
        if failed:
            first = failed[0]
            call = next((r for r in first.reports if r.failed), None)
            text = _longrepr_text(call.longrepr) if call is not None and call.longrepr is not None else first.failure
            detail = f"first failure (run {first.index}, seed {first.seed}):\n{text}"
        head = headline(
            kind,
            runs=runs,
            failed_runs=len(failed),
            label=label,
            outcome=safe_repr(records[0].outcome),
            expected=safe_repr(self.plan.expect),
        )
        diagnosis = format_findings(self.conflicts, self.trace)
        if diagnosis:
            detail = f"{diagnosis}\n{detail}" if detail else diagnosis
        if self.stopped is not None:
            stop = f"{self.stop_note()}\n"
            detail = stop + detail if detail else stop.rstrip("\n")
        return Verdict(kind, message(f"{head} ({tail})", rows, label, self.rerun, detail))

    def stop_note(self) -> str:
        """Why the item made fewer runs than it could (only when it did)."""
        return stop_note(len(self.records), self.planned, self.stopped or "")

    def entry(self, verdict: Verdict) -> RaceEntry:
        """The facts of these runs, as they travel on the report and into the JSON report."""
        rows, _ = self._rows
        entry = RaceEntry(
            nodeid=self.nodeid,
            runs=len(self.records),
            failed_runs=sum(r.failed for r in self.records),
            distinct=len(rows),
            histogram=[[k, n] for k, n in rows],
            label=self.label,
            verdict=verdict.kind.value,
            start_method=self.start_method,
            seed=self.seed,
            jitter=self.plan.jitter,
            duration=round(self.duration, 4),
            max_runs=self.planned,
            stopped_early=self.stopped,
            **_diagnosis(self.conflicts, self.trace),
        )
        if self.deadlock:
            entry["deadlock"] = self.deadlock
        return entry


def _diagnosis(conflicts: list[Conflict], trace: TraceSummary | None) -> RaceEntry:
    """The entry's ``conflicts`` and ``trace``, when runs were traced."""
    return RaceEntry(conflicts=conflicts, trace=trace) if trace is not None else RaceEntry()


def _longrepr_text(longrepr: Any) -> str:
    """A report's failure text as pytest prints it.

    ``str(longrepr)`` strips the text, which eats the indentation of the
    first source line of the traceback.
    """
    if hasattr(longrepr, "toterminal"):
        import io

        from pytest_ipc._compat import TerminalWriter

        out = io.StringIO()
        longrepr.toterminal(TerminalWriter(file=out))
        return out.getvalue().strip("\n").rstrip()
    return str(longrepr)


# -- one test's shards ---------------------------------------------------------


def merge(shards: list[RaceEntry], parts: str = "shards") -> tuple[RaceEntry, str | None]:
    """One test's entry from its shards' entries, and the merged verdict's message if it is not a pass.

    ``parts`` names what the entries are in the message: ``shards`` of one
    session (--ipc-shards), or CI ``jobs`` (--ipc-job-shard, pytest_ipc.merge).
    """
    first = shards[0]
    counts: Counter[str] = Counter()
    for data in shards:
        for label, n in data["histogram"]:
            counts[str(label)] += int(n)
    rows = _sorted_rows(list(counts.items()))
    runs = sum(d["runs"] for d in shards)
    failed_runs = sum(d["failed_runs"] for d in shards)
    with_outcomes = [d for d in shards if d["failed_runs"] < d["runs"]]
    label = "total" if with_outcomes and all(d["label"] == "total" for d in with_outcomes) else "outcome"
    # Every shard checked the one outcome against expect: any that found it unexpected speaks for all.
    unexpected = any(d["verdict"] == Kind.UNEXPECTED.value for d in shards)
    kind = decide(runs, failed_runs, len(rows), unexpected)
    merged = RaceEntry(**first)
    for key in SHARD_ONLY:
        merged.pop(key, None)  # type: ignore[misc]  # each is a key of RaceEntry that may be absent
    merged.update(
        RaceEntry(
            nodeid=first["base_nodeid"],
            runs=runs,
            failed_runs=failed_runs,
            distinct=len(rows),
            histogram=[[k, n] for k, n in rows],
            label=label,
            verdict=kind.value,
            duration=round(sum(d["duration"] for d in shards), 4),  # run time summed over the shards
            shards=len(shards),
            max_runs=sum(d.get("max_runs", d["runs"]) for d in shards),
            stopped_early=next((d["stopped_early"] for d in shards if d.get("stopped_early")), None),
        )
    )
    # Where the race is: what the first part whose traced runs found one showed, else the first traced part's note.
    traced = [d for d in shards if "trace" in d]
    diagnosed = next((d for d in traced if d.get("conflicts")), traced[0] if traced else None)
    merged.pop("conflicts", None)
    merged.pop("trace", None)
    if diagnosed is not None:
        merged.update(_diagnosis(diagnosed.get("conflicts", []), diagnosed["trace"]))
    if kind is Kind.PASSED:
        return merged, None
    tail = settings_tail(first["start_method"], first["seed"], first["jitter"] or 0.0)
    head = headline(
        kind,
        runs=f"{runs} runs of {len(shards)} {parts}",
        failed_runs=failed_runs,
        label=label,
        outcome=rows[0][0],
        expected=first.get("expected", "one"),
    )
    detail = format_findings(merged.get("conflicts", []), merged.get("trace"))
    return merged, message(f"{kind.error_class().__name__}: {head} ({tail})", rows, label, first["rerun"], detail)

"""The ``ipc_race`` runner: many runs of one test, one verdict.

Each run is a full setup/call/teardown of the item with fresh
function-scoped fixtures; higher-scoped fixtures stay set up between runs
(each run's teardown only goes down to the item's parent).  Per-run reports
are not logged; one set of setup/call/teardown reports carries the verdict,
so one test id gives one result line and ``-x``, ``--lf`` and xfail work.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import multiprocessing
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import pytest
from _pytest._io import TerminalWriter
from _pytest.runner import CallInfo, runtestprotocol

from pytest_ipc import settings as settings_mod
from pytest_ipc import state
from pytest_ipc.errors import RaceDetected, RunsFailed, UnexpectedOutcome

# The hidden argument that --ipc-shards parametrizes; the test function never sees it.
SHARD_ARG = "_ipc_shard"


@dataclass(frozen=True)
class Shard:
    """Item ``index`` (from 0) of ``count``: it runs the runs index, index + count, ..."""

    index: int
    count: int

    @property
    def id(self) -> str:
        return f"shard{self.index + 1}of{self.count}"


def shard_params(shards: int, runs: int) -> list[Any]:
    """The parameters of a sharded test: no more shards than runs, none for one shard."""
    count = min(shards, runs)
    if count < 2:
        return []
    return [pytest.param(Shard(i, count), id=Shard(i, count).id) for i in range(count)]


def shard_of(item: pytest.Item) -> Shard | None:
    callspec = getattr(item, "callspec", None)
    shard = callspec.params.get(SHARD_ARG) if callspec is not None else None
    return shard if isinstance(shard, Shard) else None


def base_nodeid(nodeid: str, shard: Shard) -> str:
    """The node id the test has without --ipc-shards: ``t.py::test[fork-shard1of4]`` -> ``t.py::test[fork]``."""
    token = shard.id
    if nodeid.endswith(f"[{token}]"):
        return nodeid[: -len(token) - 2]
    if nodeid.endswith(f"-{token}]"):
        return nodeid[: -len(token) - 2] + "]"
    # Another plugin parametrized after us: drop the shard from the middle of the id.
    return nodeid.replace(f"-{token}", "", 1).replace(f"{token}-", "", 1)


@dataclass(slots=True)
class RunRecord:
    index: int
    seed: int
    outcome: Any = None
    failed: bool = False
    failure: str = ""  # "AssertionError" etc., for the histogram
    auto: bool = False  # the outcome is the automatic total, not ipc_outcome.record()
    reports: list[pytest.TestReport] = field(default_factory=list)
    sections: list[tuple[str, str, str]] = field(default_factory=list)  # this run's captured output


@dataclass
class RaceRun:
    """What the makereport hook needs to know while an ipc_race test runs."""

    finalizing: bool = False
    phase_excinfo: dict[str, Any] = field(default_factory=dict)


def histogram_label(record: RunRecord) -> str:
    """How a run shows in the histogram: its outcome's repr, shortened, or ``failed (ExceptionType)``."""
    if record.failed:
        return f"failed ({record.failure})"
    try:
        return settings_mod.shorten(_canonical_repr(record.outcome), 80)
    except Exception:  # a raising __repr__, an int too long to print: safe_repr says so
        return settings_mod.safe_repr(record.outcome)


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
        return kind.__name__, list(zip(names, value))
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return kind.__qualname__, [(f.name, getattr(value, f.name)) for f in dataclasses.fields(value) if f.repr]
    return None


def _tie_order(record: RunRecord, label: str) -> tuple[int, Any]:
    """Among equally common outcomes: numbers in numeric order, then other values, then failures."""
    if record.failed:
        return (2, label)
    value = record.outcome
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value == value:
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
                f"the outcome {settings_mod.safe_repr(record.outcome)} of run {record.index} "
                f"cannot be compared with earlier runs' outcomes: {settings_mod.safe_repr(exc)}"
            ) from None
        if group is None:
            index[key] = [record]
        else:
            group.append(record)
    return list(index.values())


def _rows(groups: list[list[RunRecord]]) -> list[tuple[str, int]]:
    """(label, runs) rows of ``groups``, most common first, labels told apart with ``#1``, ``#2``..."""
    labelled = [(histogram_label(g[0]), g) for g in groups]
    labelled.sort(key=lambda lg: (-len(lg[1]), _tie_order(lg[1][0], lg[0])))
    alike = Counter(label for label, _ in labelled)
    seen: Counter[str] = Counter()
    rows = []
    for label, group in labelled:
        if alike[label] > 1:  # different outcomes that print alike
            seen[label] += 1
            label = f"{label} #{seen[label]}"
        rows.append((label, len(group)))
    return rows


def histogram(records: list[RunRecord]) -> list[tuple[str, int]]:
    """(label, runs) rows, one per distinct outcome, most common first; ties in the outcomes' own order.

    Outcomes that print alike but differ are separate rows, ``label #1``,
    ``label #2``.  When outcomes cannot be compared (see :func:`_verdict`)
    the rows group the runs by label, so the report still has a histogram.
    """
    try:
        groups = _groups(records)
    except _Incomparable:
        by_label: dict[str, list[RunRecord]] = {}
        for record in records:
            by_label.setdefault(histogram_label(record), []).append(record)
        groups = list(by_label.values())
    return _rows(groups)


def _alike_base(row_label: str) -> str | None:
    """The label without its ``#n`` (see :func:`_rows`), or None when it has none."""
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


def _expected(spec: settings_mod.RaceSpec, value: Any) -> bool:
    """Whether ``value`` is ``expect`` (or one of them), compared as runs are: NaN equals NaN."""
    choices = spec.expect if isinstance(spec.expect, (list, set, frozenset)) else (spec.expect,)
    mine = _comparable(value)
    return any(bool(mine == _comparable(choice)) for choice in choices)


def _rerun_line(
    item: pytest.Item, cfg: settings_mod.Settings, method: str | None, jitter: float, mark_runs: int | None,
    unsharded: str | None = None,
) -> str:
    """The command that replays ``item``; with ``unsharded``, that test id run as one item."""
    shard = shard_of(item)
    parts = ["pytest", f'"{unsharded or item.nodeid}"']
    if any(p in ("pytest_ipc", "pytest_ipc.plugin") for p in (item.config.getoption("plugins") or [])):
        parts.insert(1, "-p pytest_ipc")
    parts.append(f"--ipc-seed={cfg.seed}")
    if shard is not None and unsharded is None:
        parts.append(f"--ipc-shards={cfg.shards}")  # the shard's id exists only with it
    if mark_runs is None:
        # Without them a rerun could stop before the run that failed.
        if item.config.getoption("ipc_runs") is not None:
            parts.append(f"--ipc-runs={cfg.runs}")
        if unsharded is not None and cfg.budget is not None:
            # Every shard had the budget; one item replaying all their runs needs more.
            parts.append("--ipc-budget=none")
        elif item.config.getoption("ipc_budget") is not None:
            parts.append(f"--ipc-budget={'none' if cfg.budget is None else format(cfg.budget, 'g')}")
    callspec = getattr(item, "callspec", None)
    if method and not (callspec and "ipc_start_method" in callspec.params):
        parts.append(f"--ipc-start-method={method}")
    if jitter != cfg.jitter or item.config.getoption("ipc_jitter") is not None:
        parts.append(f"--ipc-jitter={_jitter_name(jitter)}")
    return " ".join(parts)


def _start_method(item: pytest.Item) -> str:
    callspec = getattr(item, "callspec", None)
    if callspec and "ipc_start_method" in callspec.params:
        return str(callspec.params["ipc_start_method"])
    from pytest_ipc.fixtures import platform_default_start_method

    method = state.settings(item.config).start_method
    if method not in (None, "all") and "ipc_start_method" in getattr(item, "fixturenames", ()):
        return method
    # Processes the test starts itself use multiprocessing's default context.
    return multiprocessing.get_start_method(allow_none=True) or platform_default_start_method()


def _jitter_name(jitter: float) -> str:
    for name, value in settings_mod.JITTER_LEVELS.items():
        if value == jitter:
            return name
    return f"{jitter:g}"


def run_race(item: pytest.Item, nextitem: pytest.Item | None) -> None:
    """Run ``item`` as an ipc_race test and log one set of reports."""
    cfg = state.settings(item.config)
    mark = item.get_closest_marker("ipc_race")
    assert mark is not None
    spec = settings_mod.race_spec(mark, item.nodeid)  # validated at collection already
    runs = spec.runs or cfg.runs
    budget = spec.budget if spec.budget is not None else (None if spec.runs else cfg.budget)
    jitter = spec.jitter if spec.jitter is not None else cfg.jitter

    shard = shard_of(item)
    # A shard runs its share of the runs with the seeds they have unsharded.
    seed_id = item.nodeid if shard is None else base_nodeid(item.nodeid, shard)
    indices = range(runs) if shard is None else range(shard.index, runs, shard.count)

    item.ihook.pytest_runtest_logstart(nodeid=item.nodeid, location=item.location)
    race = RaceRun()
    item.stash[state.race_key] = race
    records: list[RunRecord] = []
    started = time.monotonic()
    parent = item.parent
    interrupted = False
    # The test's own record_property calls count for its last run only, not once per run.
    own_properties = list(item.user_properties)
    try:
        for position, index in enumerate(indices):
            if position and budget is not None and time.monotonic() - started >= budget:
                break
            item.user_properties = list(own_properties)
            record = RunRecord(index, state.derive_seed(cfg.seed, seed_id, index))
            item.stash[state.run_key] = state.RunState(index, record.seed, jitter)
            if state.call_failed_key in item.stash:  # this run has not reported yet
                del item.stash[state.call_failed_key]
            item._report_sections = []  # type: ignore[attr-defined]  # captured output of this run only
            race.phase_excinfo = {}
            record.reports = runtestprotocol(item, log=False, nextitem=parent)  # type: ignore[arg-type]
            _forget_finished_finalizers(item)
            record.sections = list(item._report_sections)  # type: ignore[attr-defined]
            _score(record, race, item)
            records.append(record)
            _forget_details(records)
            if _stop_early(record, position):
                break
    except KeyboardInterrupt:
        interrupted = True
        # What the completed runs found, for the session's race report.
        _keep_interrupted(item, records, spec, cfg, jitter, time.monotonic() - started)
        raise
    finally:
        duration = time.monotonic() - started
        final_teardown = CallInfo.from_call(
            lambda: item.session._setupstate.teardown_exact(None if interrupted else nextitem), when="teardown"
        )
        if not interrupted:
            _log_verdict(item, race, records, spec, cfg, jitter, duration, final_teardown)
        item.ihook.pytest_runtest_logfinish(nodeid=item.nodeid, location=item.location)
        del item.stash[state.race_key]


def _score(record: RunRecord, race: RaceRun, item: pytest.Item) -> None:
    for when in ("setup", "call", "teardown"):
        excinfo = race.phase_excinfo.get(when)
        if excinfo is not None and not isinstance(excinfo.value, pytest.skip.Exception):
            record.failed = True
            record.failure = excinfo.typename if when == "call" else f"{excinfo.typename} in {when}"
            return
    run = item.stash[state.run_key]
    if run.outcome.recorded:
        record.outcome = run.outcome.value
    else:
        record.outcome = run.auto_total
        record.auto = True


def _forget_finished_finalizers(item: pytest.Item) -> None:
    """Drop what this run's function fixtures left registered on higher-scoped ones.

    A function fixture that depends on a session fixture (``tmp_path`` and
    ``ipc_workers`` on ``tmp_path_factory``) registers its own ``finish`` on
    it at every set-up, and pytest keeps those until the session fixture ends
    (pytest issue #4871): each holds that run's requests, about 1 KB a run.
    Once the run is torn down they would do nothing (the fixture is finished),
    so dropping them changes nothing but the memory.  Every wider-scoped
    fixture the session has set up is looked at (the plugin notes them in
    ``pytest_fixture_setup``), not only those the test names: a fixture got
    with ``request.getfixturevalue()`` registers its ``finish`` just the same.
    """
    for fixturedef in item.config.stash.get(state.scoped_fixturedefs_key, ()):
        finalizers = getattr(fixturedef, "_finalizers", None)
        if fixturedef.scope == "function" or not finalizers:
            continue
        finalizers[:] = [f for f in finalizers if not _is_finished_function_fixture(f)]


def _is_finished_function_fixture(finalizer: Any) -> bool:
    owner = getattr(getattr(finalizer, "func", None), "__self__", None)
    return (
        isinstance(finalizer, functools.partial)
        and getattr(owner, "scope", None) == "function"
        and getattr(owner, "cached_result", True) is None
    )


def _forget_details(records: list[RunRecord]) -> None:
    """Drop the reports and output of the run before the newest unless the verdict shows them.

    The verdict logs the first run's setup report, the first failed run's
    traceback and output, and the last run's teardown (or output); keeping
    every run's would grow memory with the number of runs.
    """
    if len(records) < 3:
        return
    previous = records[-2]
    if previous.failed and not any(r.failed for r in records[:-2]):
        return
    previous.reports = []
    previous.sections = []


def _stop_early(record: RunRecord, position: int) -> bool:
    """The first run was skipped or could not set up: report it as it is, once."""
    if position != 0:
        return False
    setup = record.reports[0]
    return not setup.passed or any(r.skipped for r in record.reports)


def _longrepr_text(longrepr: Any) -> str:
    """A report's failure text as pytest prints it.

    ``str(longrepr)`` strips the text, which eats the indentation of the
    first source line of the traceback.
    """
    if hasattr(longrepr, "toterminal"):
        out = io.StringIO()
        longrepr.toterminal(TerminalWriter(file=out))
        return out.getvalue().strip("\n").rstrip()
    return str(longrepr)


def _verdict(
    records: list[RunRecord], spec: settings_mod.RaceSpec, header_tail: str, label: str, rerun: str
) -> BaseException | None:
    n = len(records)
    incomparable: _Incomparable | None = None
    try:
        rows = _rows(_groups(records))
    except _Incomparable as exc:
        incomparable, rows = exc, histogram(records)
    table = format_histogram(rows, label)
    failed = [r for r in records if r.failed]
    if failed:
        first = failed[0]
        call = next((r for r in first.reports if r.failed), None)
        detail = _longrepr_text(call.longrepr) if call is not None and call.longrepr is not None else first.failure
        msg = (
            f"failed in {len(failed)} of {n} runs ({header_tail})\n{table}\n"
            f"first failure (run {first.index}, seed {first.seed}):\n{detail}\nrerun: {rerun}"
        )
        # Runs that all fail are a plain bug; runs that sometimes fail disagree: a race.
        return RunsFailed(msg) if len(failed) == n else RaceDetected(msg)
    if incomparable is not None:
        # Whether the runs agree is the question, and it has no answer.
        return RunsFailed(
            f"cannot tell whether {n} runs agree ({header_tail}): {incomparable}; record plain values "
            f"(numbers, strings, tuples of them)\n{table}\nrerun: {rerun}"
        )
    if len(rows) > 1:
        what = "totals" if label == "total" else "outcomes"
        return RaceDetected(f"{what} differ across {n} runs ({header_tail})\n{table}\nrerun: {rerun}")
    if spec.has_expect:
        outcome = settings_mod.safe_repr(records[0].outcome)
        expected = settings_mod.safe_repr(spec.expect)
        try:  # the runs agree: one of them stands for all
            matches = _expected(spec, records[0].outcome)
        except Exception as exc:
            return UnexpectedOutcome(
                f"outcome {outcome} of all {n} runs cannot be compared with the expected {expected}: "
                f"{settings_mod.safe_repr(exc)} ({header_tail})\n{table}\nrerun: {rerun}"
            )
        if not matches:
            return UnexpectedOutcome(
                f"outcome {outcome} of all {n} runs is not the expected {expected} ({header_tail})\n"
                f"{table}\nrerun: {rerun}"
            )
    return None


def race_data(
    item: pytest.Item, records: list[RunRecord], verdict: BaseException | None, method: str | None,
    seed: int, jitter: float, duration: float, label: str,
) -> dict[str, Any]:
    """The plain-value facts of one race test, as they travel on the report (xdist) and into JSON."""
    if verdict is None:
        name = "passed"
    elif isinstance(verdict, RaceDetected):
        name = "race"
    elif isinstance(verdict, UnexpectedOutcome):
        name = "unexpected"
    else:
        name = "failed"
    return {
        "nodeid": item.nodeid,
        "runs": len(records),
        "failed_runs": sum(r.failed for r in records),
        "distinct": len(histogram(records)),
        "histogram": [[k, n] for k, n in histogram(records)],
        "label": label,
        "verdict": name,
        "start_method": method,
        "seed": seed,
        "jitter": jitter,
        "duration": round(duration, 4),
    }


def _judge(
    item: pytest.Item, records: list[RunRecord], spec: settings_mod.RaceSpec, cfg: settings_mod.Settings,
    jitter: float,
) -> tuple[str, str, BaseException | None]:
    """The start method, the outcome label and the verdict (None: passed) of ``records``."""
    method = _start_method(item)
    ok = [r for r in records if not r.failed]
    # "total" only when every outcome is the automatic shared_value/shared_array total.
    label = "total" if ok and all(r.auto and r.outcome is not None for r in ok) else "outcome"
    header_tail = f"start method {method}, seed {cfg.seed}, jitter {_jitter_name(jitter)}"
    rerun = _rerun_line(item, cfg, method, jitter, spec.runs)
    return method, label, _verdict(records, spec, header_tail, label, rerun)


def _keep_interrupted(
    item: pytest.Item, records: list[RunRecord], spec: settings_mod.RaceSpec, cfg: settings_mod.Settings,
    jitter: float, duration: float,
) -> None:
    """Stash the race data of the runs completed before Ctrl-C or SIGTERM (see report.py)."""
    if not records:
        return
    method, label, verdict = _judge(item, records, spec, cfg, jitter)
    data = race_data(item, records, verdict, method, cfg.seed, jitter, duration, label)
    data["interrupted"] = True
    item.config.stash.setdefault(state.interrupted_key, []).append(data)


def _log_verdict(
    item: pytest.Item, race: RaceRun, records: list[RunRecord], spec: settings_mod.RaceSpec,
    cfg: settings_mod.Settings, jitter: float, duration: float, final_teardown: CallInfo[None],
) -> None:
    if not records:
        return
    hook = item.ihook
    first = records[0]
    if _stop_early(first, 0):
        # A skip or a setup error: report the first run exactly as pytest would.
        for rep in first.reports[:-1]:
            hook.pytest_runtest_logreport(report=rep)
        _log_teardown(item, race, first.reports[-1], final_teardown)
        return
    method, label, verdict = _judge(item, records, spec, cfg, jitter)

    data = race_data(item, records, verdict, method, cfg.seed, jitter, duration, label)
    shard = shard_of(item)
    if shard is not None:
        # What the controller needs to merge the shards into one verdict (see merge_shards).
        base = base_nodeid(item.nodeid, shard)
        data.update(base_nodeid=base, shard=shard.index + 1, shard_count=shard.count,
                    rerun=_rerun_line(item, cfg, method, jitter, spec.runs, unsharded=base))
    item.user_properties.extend(
        [("ipc_runs", data["runs"]), ("ipc_distinct_outcomes", data["distinct"]),
         ("ipc_seed", cfg.seed), ("ipc_verdict", data["verdict"])]
    )

    def raise_verdict() -> None:
        if verdict is not None:
            raise verdict

    race.finalizing = True
    # The captured output shown with the verdict is that of the run whose traceback it shows.
    shown = next((r for r in records if r.failed), records[-1])
    item._report_sections = list(shown.sections)  # type: ignore[attr-defined]
    call = CallInfo.from_call(raise_verdict, when="call")
    call_report = hook.pytest_runtest_makereport(item=item, call=call)
    call_report.duration = duration
    call_report.ipc_race = data
    if verdict is not None:
        _name_verdict(call_report, verdict)
    hook.pytest_runtest_logreport(report=first.reports[0])
    hook.pytest_runtest_logreport(report=call_report)
    _log_teardown(item, race, records[-1].reports[-1], final_teardown)


def _name_verdict(report: pytest.TestReport, verdict: BaseException) -> None:
    """Start the failure text with the verdict's class: ``RaceDetected: totals differ ...``.

    The verdict is a ``pytrace=False`` failure, which pytest prints as the bare
    message; the class is what a user greps for and names in ``xfail(raises=)``.
    """
    entries = getattr(getattr(report.longrepr, "reprtraceback", None), "reprentries", None)
    lines = getattr(entries[-1], "lines", None) if entries else None
    if lines and isinstance(lines[0], str):
        lines[0] = f"{type(verdict).__name__}: {lines[0]}"


def _log_teardown(item: pytest.Item, race: RaceRun, last: pytest.TestReport, final: CallInfo[None]) -> None:
    """Log the last run's teardown report, or the final teardown's error if there was one."""
    race.finalizing = True
    if final.excinfo is not None or last.failed:
        # A failed teardown of the last run is already counted in the verdict:
        # only the final teardown's own error is logged as the test's.
        last = item.ihook.pytest_runtest_makereport(item=item, call=final)
    # junitxml writes a test's properties from its teardown report, which was
    # made before the verdict added the ipc_* properties to the item.
    last.user_properties = list(item.user_properties)
    item.ihook.pytest_runtest_logreport(report=last)


def _label_order(label: str) -> tuple[int, Any]:
    """The tie order of ``histogram`` for a label alone (the shards send labels, not values)."""
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


def _type_name(verdict: str) -> str:
    """The exception class a verdict name stands for."""
    return {"race": RaceDetected, "failed": RunsFailed, "unexpected": UnexpectedOutcome}[verdict].__name__


def merge_shards(shards: list[dict[str, Any]]) -> tuple[dict[str, Any], str | None]:
    """One test's race data from its shards' data, and the merged verdict's message if it is not a pass.

    The rules are those of one unsharded run: failures in some runs or
    differing outcomes are a race, failures in every run are a failure.
    """
    first = shards[0]
    counts: Counter[str] = Counter()
    for data in shards:
        for label, n in data["histogram"]:
            counts[label] += n
    rows = sorted(counts.items(), key=lambda kv: (-kv[1], _label_order(kv[0])))
    runs = sum(d["runs"] for d in shards)
    failed_runs = sum(d["failed_runs"] for d in shards)
    with_outcomes = [d for d in shards if d["failed_runs"] < d["runs"]]
    label = "total" if with_outcomes and all(d["label"] == "total" for d in with_outcomes) else "outcome"
    if failed_runs == runs:
        verdict = "failed"
    elif failed_runs or len(rows) > 1:
        verdict = "race"
    elif any(d["verdict"] == "unexpected" for d in shards):
        verdict = "unexpected"  # every shard checked the one outcome against expect
    else:
        verdict = "passed"
    merged = {
        "nodeid": first["base_nodeid"],
        "runs": runs,
        "failed_runs": failed_runs,
        "distinct": len(rows),
        "histogram": [[k, n] for k, n in rows],
        "label": label,
        "verdict": verdict,
        "start_method": first["start_method"],
        "seed": first["seed"],
        "jitter": first["jitter"],
        "duration": round(sum(d["duration"] for d in shards), 4),  # run time summed over the shards
        "shards": len(shards),
    }
    if verdict == "passed":
        return merged, None
    tail = f"start method {first['start_method']}, seed {first['seed']}, jitter {_jitter_name(first['jitter'])}"
    where = f"{runs} runs of {len(shards)} shards"
    if verdict == "race" and failed_runs:
        head = f"{_type_name(verdict)}: failed in {failed_runs} of {where}"
    elif verdict == "race":
        head = f"{_type_name(verdict)}: {'totals' if label == 'total' else 'outcomes'} differ across {where}"
    elif verdict == "failed":
        head = f"{_type_name(verdict)}: failed in all {where}"
    else:
        head = f"{_type_name(verdict)}: outcome {rows[0][0]} of all {where} is not the expected one"
    table = format_histogram(rows, label)
    return merged, f"{head} ({tail})\n{table}\nrerun: {first['rerun']}"


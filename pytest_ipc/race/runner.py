"""The ``ipc_race`` run loop: many runs of one item, one set of reports.

Each run is a full setup/call/teardown of the item with fresh
function-scoped fixtures; higher-scoped fixtures stay set up between runs
(each run's teardown only goes down to the item's parent).  Per-run reports
are not logged; one set of setup/call/teardown reports carries the verdict
(:mod:`.verdict`), so one test id gives one result line and ``-x``, ``--lf``
and xfail work.
"""

from __future__ import annotations

import functools
import multiprocessing
import time
from dataclasses import dataclass, field
from typing import Any

import pytest

from pytest_ipc import _compat, stash
from pytest_ipc.config import RacePlan, Settings, jitter_name, race_plan, safe_repr, settings
from pytest_ipc.race.conflicts import Tracer, summary_line
from pytest_ipc.race.progress import Progress
from pytest_ipc.race.schema import RaceEntry
from pytest_ipc.race.shards import base_nodeid, job_runs, shard_of
from pytest_ipc.race.verdict import Kind, Proof, RaceResult, RunRecord, Verdict

# Once the verdict is certain (see verdict.Proof), at most this many more runs
# start, for the histogram, and none later than this many seconds after the
# proof: enough to show the spread of a race's outcomes, not enough to cost
# the user seconds.  Measured (bench/peers.py, the tutorial's 9 x 50 counter,
# 2 cores): a run takes about 30 ms under fork and 55 ms under forkserver, so
# all 3 fit in the time; under spawn it takes about 0.35 s, so one more runs.
HISTOGRAM_RUNS = 3
HISTOGRAM_SECONDS = 0.25


@dataclass
class RaceRun:
    """What the makereport hook needs to know while an ipc_race test runs."""

    finalizing: bool = False
    phase_excinfo: dict[str, Any] = field(default_factory=dict)
    # A run's call has failed: later runs' failures need no formatted traceback
    # (the verdict shows the first failed run's), which costs ~20 ms a run.
    call_failed_before: bool = False
    # The first deadlock a run's hang report found (WorkerTimeout.deadlock), for the JSON report.
    deadlock: list[dict[str, Any]] = field(default_factory=list)


def run_race(item: pytest.Item, nextitem: pytest.Item | None) -> None:
    """Run ``item`` as an ipc_race test and log one set of reports."""
    plan = race_plan(item)
    assert plan is not None  # only ipc_race items come here
    cfg = settings(item.config)
    shard = shard_of(item)
    # A shard, and a CI job's share, makes its runs with the seeds they have unsharded.
    seed_id = item.nodeid if shard is None else base_nodeid(item.nodeid, shard)
    indices = job_runs(plan.runs, cfg.job_shard)
    if shard is not None:
        indices = shard.indices(indices)

    item.ihook.pytest_runtest_logstart(nodeid=item.nodeid, location=item.location)
    race = RaceRun()
    item.stash[stash.race_key] = race
    records: list[RunRecord] = []
    started = time.monotonic()
    interrupted = False
    proof = Proof(plan)
    tracer = Tracer(item)  # the diagnostic runs after the verdict is certain (see race.conflicts)
    progress = Progress(item, len(indices))
    proven_at: tuple[int, float] | None = None  # runs made, and the time, when the verdict became certain
    # The test's own record_property calls count for its last run only, not once per run.
    own_properties = list(item.user_properties)
    try:
        for position, index in enumerate(indices):
            if position and plan.budget is not None and time.monotonic() - started >= plan.budget:
                break
            if (
                proven_at is not None
                and (
                    len(records) >= proven_at[0] + HISTOGRAM_RUNS
                    or time.monotonic() - proven_at[1] >= HISTOGRAM_SECONDS
                )
                and not tracer.searching
            ):
                break
            item.user_properties = list(own_properties)
            traced = tracer if tracer.wanted(proof.reason is not None) else None
            record = _run_once(item, race, plan, index, stash.derive_seed(cfg.seed, seed_id, index), traced)
            records.append(record)
            _forget_details(records)
            if position == 0 and _first_run_is_the_report(record):
                break
            if proof.add(record) is not None and proven_at is None and not plan.all_runs:
                proven_at = (len(records), time.monotonic())
            progress.update(len(records), proof.distinct, proof.reason is not None)
    except KeyboardInterrupt:
        interrupted = True
        # What the completed runs found, for the session's race report.
        if records:
            result = _result(item, cfg, plan, records, time.monotonic() - started, len(indices), None)
            entry = result.entry(result.verdict())
            entry["interrupted"] = True
            item.config.stash.setdefault(stash.interrupted_key, []).append(entry)
        raise
    finally:
        progress.close()
        duration = time.monotonic() - started
        final_teardown = pytest.CallInfo.from_call(
            lambda: _compat.teardown_exact(item, None if interrupted else nextitem), when="teardown"
        )
        if not interrupted and records:
            stopped = proof.reason if proven_at is not None and len(records) < len(indices) else None
            result = _result(item, cfg, plan, records, duration, len(indices), stopped)
            result.deadlock = race.deadlock
            if proof.reason is not None:
                result.conflicts = tracer.shown()
                result.trace = tracer.summary(planned_left=len(records) < len(indices))
            _log_verdict(item, race, result, final_teardown)
        item.ihook.pytest_runtest_logfinish(nodeid=item.nodeid, location=item.location)
        del item.stash[stash.race_key]


def _run_once(
    item: pytest.Item, race: RaceRun, plan: RacePlan, index: int, seed: int, tracer: Tracer | None = None
) -> RunRecord:
    """One setup/call/teardown of ``item``, reports kept, not logged; a diagnostic run if ``tracer`` is given."""
    record = RunRecord(index, seed)
    state = stash.RunState(index, seed, plan.jitter)
    state.trace_dir = tracer.begin() if tracer is not None else None
    item.stash[stash.run_key] = state
    if stash.call_failed_key in item.stash:  # this run has not reported yet
        del item.stash[stash.call_failed_key]
    _compat.set_report_sections(item, [])  # captured output of this run only
    race.phase_excinfo = {}
    # The parent stands in for the next item: each run's teardown goes down to it.
    try:
        record.reports = _compat.runtestprotocol(item, log=False, nextitem=item.parent)  # type: ignore[arg-type]  # a node for an item
    except BaseException:  # Ctrl-C, SIGTERM: the run's trace is of no use, and must not be left behind
        if tracer is not None and state.trace_dir is not None:
            tracer.discard(state.trace_dir)
        raise
    forget_finished_finalizers(item)
    record.sections = list(_compat.report_sections(item))
    _score(record, race, item)
    if tracer is not None and state.trace_dir is not None:
        tracer.end(state.trace_dir, record, state.trace_names)
    if "call" in race.phase_excinfo and race.phase_excinfo["call"] is not None:
        race.call_failed_before = True
        if not race.deadlock:
            race.deadlock = list(getattr(race.phase_excinfo["call"].value, "deadlock", None) or ())
    return record


def _score(record: RunRecord, race: RaceRun, item: pytest.Item) -> None:
    for when in ("setup", "call", "teardown"):
        excinfo = race.phase_excinfo.get(when)
        if excinfo is not None and not isinstance(excinfo.value, pytest.skip.Exception):
            record.failed = True
            record.failure = excinfo.typename if when == "call" else f"{excinfo.typename} in {when}"
            return
    run = item.stash[stash.run_key]
    if run.outcome.recorded:
        record.outcome = run.outcome.value
    else:
        record.outcome = run.auto_total
        record.auto = True


def forget_finished_finalizers(item: pytest.Item) -> None:
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
    for fixturedef in item.config.stash.get(stash.scoped_fixturedefs_key, ()):
        finalizers = _compat.fixture_finalizers(fixturedef)
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


def _first_run_is_the_report(record: RunRecord) -> bool:
    """The first run was skipped or could not set up: report it as it is, once."""
    setup = record.reports[0]
    return not setup.passed or any(r.skipped for r in record.reports)


def start_method_of(item: pytest.Item) -> str:
    """The start method the test's runs used: its parametrization, the session's, else multiprocessing's."""
    callspec = getattr(item, "callspec", None)
    if callspec and "ipc_start_method" in callspec.params:
        return str(callspec.params["ipc_start_method"])
    from pytest_ipc.fixtures import platform_default_start_method

    method = settings(item.config).start_method
    if method not in (None, "all") and "ipc_start_method" in getattr(item, "fixturenames", ()):
        return method
    # Processes the test starts itself use multiprocessing's default context.
    return multiprocessing.get_start_method(allow_none=True) or platform_default_start_method()


def rerun_line(
    item: pytest.Item,
    cfg: Settings,
    plan: RacePlan,
    method: str | None,
    unsharded: str | None = None,
    every_job: bool = False,
) -> str:
    """The command that replays ``item``; with ``unsharded``, that test id run as one item.

    With ``every_job``, the runs of every CI job (--ipc-job-shard), not only this job's.
    """
    shard = shard_of(item)
    option = item.config.getoption
    parts = ["pytest", f'"{unsharded or item.nodeid}"']
    if any(p in ("pytest_ipc", "pytest_ipc.plugin") for p in (option("plugins") or [])):
        parts.insert(1, "-p pytest_ipc")
    parts.append(f"--ipc-seed={cfg.seed}")
    if shard is not None and unsharded is None:
        parts.append(f"--ipc-shards={cfg.shards}")  # the shard's id exists only with it
    if cfg.job_shard is not None and not every_job:
        parts.append(f"--ipc-job-shard={cfg.job_shard[0]}/{cfg.job_shard[1]}")  # this job's runs, not all
    if not plan.runs_from_marker:
        # Without them a rerun could stop before the run that failed.
        if option("ipc_runs") is not None:
            parts.append(f"--ipc-runs={cfg.runs}")
        if unsharded is not None and cfg.budget is not None:
            # Every shard had the budget; one item replaying all their runs needs more.
            parts.append("--ipc-budget=none")
        elif option("ipc_budget") is not None:
            parts.append(f"--ipc-budget={'none' if cfg.budget is None else format(cfg.budget, 'g')}")
    callspec = getattr(item, "callspec", None)
    if method and not (callspec and "ipc_start_method" in callspec.params):
        parts.append(f"--ipc-start-method={method}")
    if plan.jitter != cfg.jitter or option("ipc_jitter") is not None:
        parts.append(f"--ipc-jitter={jitter_name(plan.jitter)}")
    return " ".join(parts)


def _result(
    item: pytest.Item,
    cfg: Settings,
    plan: RacePlan,
    records: list[RunRecord],
    duration: float,
    planned: int,
    stopped: str | None,
) -> RaceResult:
    method = start_method_of(item)
    return RaceResult(
        nodeid=item.nodeid,
        plan=plan,
        start_method=method,
        seed=cfg.seed,
        rerun=rerun_line(item, cfg, plan, method),
        records=records,
        duration=duration,
        planned=planned,
        stopped=stopped,
    )


def _log_verdict(item: pytest.Item, race: RaceRun, result: RaceResult, final_teardown: pytest.CallInfo[None]) -> None:
    hook = item.ihook
    first = result.records[0]
    if _first_run_is_the_report(first):
        # A skip or a setup error: report the first run exactly as pytest would.
        for rep in first.reports[:-1]:
            hook.pytest_runtest_logreport(report=rep)
        _log_teardown(item, race, first.reports[-1], final_teardown)
        return
    verdict = result.verdict()
    entry = result.entry(verdict)
    shard = shard_of(item)
    if shard is not None:
        # What the controller needs to merge the shards into one verdict (see verdict.merge).
        base = base_nodeid(item.nodeid, shard)
        entry.update(
            RaceEntry(
                base_nodeid=base,
                shard=shard.index + 1,
                shard_count=shard.count,
                rerun=rerun_line(item, settings(item.config), result.plan, result.start_method, unsharded=base),
            )
        )
    cfg = settings(item.config)
    if cfg.job_shard is not None:
        # What pytest_ipc.merge needs to merge the jobs into one verdict.
        entry["job_shard"] = [cfg.job_shard[0], cfg.job_shard[1]]
        base = entry.get("base_nodeid", item.nodeid)
        entry["rerun"] = rerun_line(item, cfg, result.plan, result.start_method, unsharded=base, every_job=True)
    if (shard is not None or cfg.job_shard is not None) and result.plan.has_expect:
        entry["expected"] = safe_repr(result.plan.expect)
    item.user_properties.extend(_junit_properties(entry))

    def raise_verdict() -> None:
        if verdict.kind is not Kind.PASSED:
            raise verdict.kind.error_class()(verdict.message)

    race.finalizing = True
    # The captured output shown with the verdict is that of the run whose traceback it shows.
    shown = next((r for r in result.records if r.failed), result.records[-1])
    _compat.set_report_sections(item, list(shown.sections))
    call = pytest.CallInfo.from_call(raise_verdict, when="call")
    call_report = hook.pytest_runtest_makereport(item=item, call=call)
    call_report.duration = result.duration
    call_report.ipc_race = entry
    if verdict.kind is not Kind.PASSED:
        _name_verdict(call_report, verdict)
    hook.pytest_runtest_logreport(report=first.reports[0])
    hook.pytest_runtest_logreport(report=call_report)
    _log_teardown(item, race, result.records[-1].reports[-1], final_teardown)


def _junit_properties(entry: RaceEntry) -> list[tuple[str, object]]:
    properties: list[tuple[str, object]] = [
        ("ipc_runs", entry["runs"]),
        ("ipc_distinct_outcomes", entry["distinct"]),
        ("ipc_seed", entry["seed"]),
        ("ipc_verdict", entry["verdict"]),
    ]
    # Where the race is, one property per conflict, shortened (see race.conflicts.summary_line).
    properties.extend(("ipc_conflict", summary_line(c)) for c in entry.get("conflicts", []))
    return properties


def _name_verdict(report: pytest.TestReport, verdict: Verdict) -> None:
    """Start the failure text with the verdict's class: ``RaceDetected: totals differ ...``.

    The verdict is a ``pytrace=False`` failure, which pytest prints as the bare
    message; the class is what a user greps for and names in ``xfail(raises=)``.
    """
    entries = getattr(getattr(report.longrepr, "reprtraceback", None), "reprentries", None)
    lines = getattr(entries[-1], "lines", None) if entries else None
    if lines and isinstance(lines[0], str):
        lines[0] = f"{verdict.kind.error_class().__name__}: {lines[0]}"


def _log_teardown(item: pytest.Item, race: RaceRun, last: pytest.TestReport, final: pytest.CallInfo[None]) -> None:
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

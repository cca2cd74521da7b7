"""The ``ipc race report`` terminal section and the ``--ipc-report`` JSON file.

Both are fed from the call reports that carry ``ipc_race`` data, so under
pytest-xdist they work on the controller from the reports the workers send;
workers themselves print and write nothing.  The shards of a test
(``--ipc-shards``) are merged here into one entry and one verdict; a race
that only the merged histogram shows fails the session.  A shard that failed
without sending its race data (its pytest-xdist worker crashed, or it could
not set up) is a missing shard: the merged entry names it and is never a pass.
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any, cast

import pytest

from pytest_ipc import stash
from pytest_ipc.config import settings
from pytest_ipc.race.schema import SCHEMA_VERSION, MissingShard, RaceEntry


def _missing_reason(report: pytest.TestReport) -> str:
    """One line on why a shard sent no race data: xdist's crash message, or the error."""
    crash = getattr(report.longrepr, "reprcrash", None)
    text = str(crash.message if crash is not None else report.longrepr or "failed").strip()
    line = text.splitlines()[0] if text else "failed"
    if len(line) > 200:
        line = line[:197] + "..."
    if report.when in ("setup", "teardown"):
        return f"error in {report.when}: {line}"
    if report.when == "call":
        return f"failed: {line}"
    return line  # pytest-xdist's crash report (when "???") says it all


class RaceReporter:
    """Collects the race data of every marked test as its report is logged."""

    def __init__(self, config: pytest.Config, seed: int, report_path: str | None) -> None:
        self.config = config
        self.seed = seed
        self.report_path = report_path
        self.results: dict[str, RaceEntry] = {}
        self.shards: dict[str, dict[int, RaceEntry]] = {}  # base node id -> shard -> its entry
        # base node id -> shard -> the shards that crashed or never set up
        self.missing: dict[str, dict[int, MissingShard]] = {}
        self.shard_limit = settings(config).shards  # --ipc-shards: no test has more
        self.merged = False
        self.hidden_races: list[pytest.TestReport] = []  # merged verdicts that no shard's own verdict failed
        self.locations: dict[str, tuple[str, int | None, str]] = {}

    @pytest.hookimpl
    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        data = getattr(report, "ipc_race", None)
        if report.when == "call" and isinstance(data, dict):
            entry = cast(RaceEntry, {**data, "outcome": report.outcome, "xfail": hasattr(report, "wasxfail")})
            base = data.get("base_nodeid")
            if base is None:
                self.results[report.nodeid] = entry
            else:
                self.results.setdefault(base, RaceEntry())  # the test's place in the report; filled by _merge
                self.shards.setdefault(base, {})[data["shard"]] = entry
                self.locations[base] = report.location
        elif report.failed and self.shard_limit > 1 and not isinstance(data, dict):
            self._note_missing(report)

    def _note_missing(self, report: pytest.TestReport) -> None:
        """Remember a failed shard report without race data: a crash (xdist) or a set-up error.

        Shards that later send their data (a crashed shard rescheduled by
        another plugin's ``pytest_handlecrashitem``) are merged as usual.
        """
        from pytest_ipc.race.shards import shard_of_nodeid

        found = shard_of_nodeid(report.nodeid, self.shard_limit)
        if found is None:
            return
        base, number, count = found
        self.results.setdefault(base, RaceEntry())
        self.missing.setdefault(base, {}).setdefault(
            number, MissingShard(shard=number, of=count, nodeid=report.nodeid, reason=_missing_reason(report))
        )

    def _merge(self) -> None:
        """Replace the shards of every sharded test by one merged entry, once."""
        if self.merged:
            return
        self.merged = True
        # The test that Ctrl-C or SIGTERM cut short: what its completed runs found.
        for data in self.config.stash.get(stash.interrupted_key, []):
            self.results.setdefault(data["nodeid"], RaceEntry(**data, outcome="interrupted", xfail=False))

        for base in list(self.results):
            by_shard = self.shards.get(base, {})
            missing = {k: v for k, v in self.missing.get(base, {}).items() if k not in by_shard}
            if not by_shard and not missing:
                continue  # not a sharded test
            gone = [missing[k] for k in sorted(missing)]
            if not by_shard:
                # Every shard crashed or failed to set up: no run's data reached us.
                self.results[base] = RaceEntry(
                    nodeid=base,
                    runs=0,
                    failed_runs=0,
                    distinct=0,
                    histogram=[],
                    label="outcome",
                    verdict="incomplete",
                    start_method=None,
                    seed=self.seed,
                    jitter=None,
                    duration=0.0,
                    shards=0,
                    missing_shards=gone,
                    outcome="failed",
                    xfail=False,
                )
                continue
            shards = [by_shard[k] for k in sorted(by_shard)]
            from pytest_ipc.race.verdict import merge

            merged, message = merge(shards)
            xfail = any(d["xfail"] for d in shards)
            failed = any(d["outcome"] == "failed" for d in shards)
            if message is not None and not failed and not xfail:
                # A report of its own (never logged as a test's) for the last line of the session.
                self.hidden_races.append(pytest.TestReport(base, self.locations[base], {}, "failed", message, "call"))
                failed = True
            if gone and merged["verdict"] == "passed":
                # The shards that reported agree, but the runs of the others are unknown.
                merged["verdict"] = "incomplete"
            merged.update(RaceEntry(missing_shards=gone, outcome="failed" if failed or gone else "passed", xfail=xfail))
            self.results[base] = merged

    @pytest.hookimpl
    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        self._merge()
        if not self.results:
            return
        tr = terminalreporter
        tr.section("ipc race report")
        verbose = self.config.getoption("verbose") > 0
        width = max(len(n) for n in self.results)
        for nodeid, data in self.results.items():
            verdict = {"race": "RACE", "failed": "FAILED", "unexpected": "UNEXPECTED", "incomplete": "INCOMPLETE"}.get(
                data["verdict"], "passed"
            )
            if data.get("interrupted"):
                verdict = f"INTERRUPTED ({verdict.lower()} so far)"
            elif data.get("xfail"):
                verdict += " (xfail)"
            elif data["verdict"] == "passed" and data.get("outcome") == "failed":
                verdict = "XPASS(strict)"  # the runs agreed, but the test was marked xfail(strict=True)
            outcomes = "outcome" if data["distinct"] == 1 else "outcomes"
            shards = f"  {data['shards']} shards" if "shards" in data else ""
            tr.write_line(
                f"{nodeid:<{width}}  {data['runs']:>6} runs  {data['distinct']:>4} {outcomes:<8}  "
                f"{verdict:<10}  {data['duration']:.2f}s{shards}"
            )
            if data.get("stopped_early"):
                from pytest_ipc.race.verdict import stop_note

                note = stop_note(data["runs"], data.get("max_runs", data["runs"]), str(data["stopped_early"]))
                tr.write_line(f"  {note}")
            for gone in data.get("missing_shards", ()):
                tr.write_line(f"  shard {gone['shard']} of {gone['of']} sent no result: {gone['reason']}", red=True)
            if verbose or data.get("interrupted"):
                rows = [(str(label), int(count)) for label, count in data["histogram"]]
                from pytest_ipc.race.verdict import format_histogram

                for line in format_histogram(rows, data.get("label", "outcome")).splitlines():
                    tr.write_line("  " + line)
        tr.write_line(f"seed {self.seed}: rerun any of these with --ipc-seed={self.seed}")
        for race in self.hidden_races:
            tr.write_line("")
            which = "the shards that reported" if self.results[race.nodeid]["missing_shards"] else "every shard"
            tr.write_line(f"{race.nodeid}: {which} passed, but together they disagree", red=True)
            for line in str(race.longrepr).splitlines():
                tr.write_line(line)
        if self.hidden_races:
            # Counted in the last line of the session, which otherwise shows only passed shards.
            tr.stats.setdefault("raced across shards", []).extend(self.hidden_races)

    @pytest.hookimpl
    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        # Before the terminal summary (pytest's terminal reporter prints it after this hook).
        self._merge()
        if self.hidden_races and session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = exitstatus = pytest.ExitCode.TESTS_FAILED
        if self.report_path is None:
            return
        path = os.path.abspath(self.report_path)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        payload = {
            "schema": SCHEMA_VERSION,
            "seed": self.seed,
            "exitstatus": int(exitstatus),
            "tests": [dict(data, nodeid=nodeid) for nodeid, data in self.results.items()],
        }
        # A new file of our own, never one a symlink named ``<path>.tmp`` points to.
        fd, tmp = tempfile.mkstemp(prefix=os.path.basename(path) + ".", suffix=".tmp", dir=os.path.dirname(path))
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(payload, f, indent=2)
                f.write("\n")
            os.chmod(tmp, 0o666 & ~_umask())  # as open() would have made it
            os.replace(tmp, path)
        except BaseException:
            os.unlink(tmp)
            raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask

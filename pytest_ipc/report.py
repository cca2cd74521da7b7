"""The ``ipc race report`` terminal section and the ``--ipc-report`` JSON file.

Both are fed from the call reports that carry ``ipc_race`` data, so under
pytest-xdist they work on the controller from the reports the workers send;
workers themselves print and write nothing.  The shards of a test
(``--ipc-shards``) are merged here into one entry and one verdict; a race
that only the merged histogram shows fails the session.
"""

from __future__ import annotations

import json
import os
from typing import Any

import pytest

SCHEMA_VERSION = 1


class RaceReporter:
    """Collects the race data of every marked test as its report is logged."""

    def __init__(self, config: pytest.Config, seed: int, report_path: str | None) -> None:
        self.config = config
        self.seed = seed
        self.report_path = report_path
        self.results: dict[str, dict[str, Any]] = {}
        self.shards: dict[str, dict[int, dict[str, Any]]] = {}  # base node id -> shard -> its data
        self.merged = False
        self.hidden_races: list[pytest.TestReport] = []  # merged verdicts that no shard's own verdict failed
        self.locations: dict[str, tuple[str, int | None, str]] = {}

    @pytest.hookimpl
    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        data = getattr(report, "ipc_race", None)
        if report.when == "call" and isinstance(data, dict):
            entry = dict(data, outcome=report.outcome, xfail=hasattr(report, "wasxfail"))
            base = data.get("base_nodeid")
            if base is None:
                self.results[report.nodeid] = entry
            else:
                self.results.setdefault(base, {})  # the test's place in the report; filled by _merge
                self.shards.setdefault(base, {})[data["shard"]] = entry
                self.locations[base] = report.location

    def _merge(self) -> None:
        """Replace the shards of every sharded test by one merged entry, once."""
        if self.merged:
            return
        self.merged = True
        from pytest_ipc.race import merge_shards

        for base, by_shard in self.shards.items():
            shards = [by_shard[k] for k in sorted(by_shard)]
            merged, message = merge_shards(shards)
            xfail = any(d["xfail"] for d in shards)
            failed = any(d["outcome"] == "failed" for d in shards)
            if message is not None and not failed and not xfail:
                # A report of its own (never logged as a test's) for the last line of the session.
                self.hidden_races.append(pytest.TestReport(
                    base, self.locations[base], {}, "failed", message, "call"
                ))
                failed = True
            self.results[base] = dict(merged, outcome="failed" if failed else "passed", xfail=xfail)

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
            verdict = {"race": "RACE", "failed": "FAILED", "unexpected": "UNEXPECTED"}.get(data["verdict"], "passed")
            if data.get("xfail"):
                verdict += " (xfail)"
            elif data["verdict"] == "passed" and data.get("outcome") == "failed":
                verdict = "XPASS(strict)"  # the runs agreed, but the test was marked xfail(strict=True)
            outcomes = "outcome" if data["distinct"] == 1 else "outcomes"
            shards = f"  {data['shards']} shards" if "shards" in data else ""
            tr.write_line(
                f"{nodeid:<{width}}  {data['runs']:>6} runs  {data['distinct']:>4} {outcomes:<8}  "
                f"{verdict:<10}  {data['duration']:.2f}s{shards}"
            )
            if verbose:
                from pytest_ipc.race import format_histogram

                rows = [(label, count) for label, count in data["histogram"]]
                for line in format_histogram(rows, data.get("label", "outcome")).splitlines():
                    tr.write_line("  " + line)
        tr.write_line(f"seed {self.seed}: rerun any of these with --ipc-seed={self.seed}")
        for race in self.hidden_races:
            tr.write_line("")
            tr.write_line(f"{race.nodeid}: every shard passed, but together they disagree", red=True)
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
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(payload, f, indent=2)
            f.write("\n")
        os.replace(tmp, path)

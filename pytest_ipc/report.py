"""The ``ipc race report`` terminal section and the ``--ipc-report`` JSON file.

Both are fed from the call reports that carry ``ipc_race`` data, so under
pytest-xdist they work on the controller from the reports the workers send;
workers themselves print and write nothing.
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

    @pytest.hookimpl
    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        data = getattr(report, "ipc_race", None)
        if report.when == "call" and isinstance(data, dict):
            self.results[report.nodeid] = dict(data, outcome=report.outcome, xfail=hasattr(report, "wasxfail"))

    @pytest.hookimpl
    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
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
            tr.write_line(
                f"{nodeid:<{width}}  {data['runs']:>6} runs  {data['distinct']:>4} {outcomes:<8}  "
                f"{verdict:<10}  {data['duration']:.2f}s"
            )
            if verbose:
                from pytest_ipc.race import format_histogram

                rows = [(label, count) for label, count in data["histogram"]]
                for line in format_histogram(rows, data.get("label", "outcome")).splitlines():
                    tr.write_line("  " + line)
        tr.write_line(f"seed {self.seed}: rerun any of these with --ipc-seed={self.seed}")

    @pytest.hookimpl
    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
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

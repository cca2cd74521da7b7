"""``python -m pytest_ipc.merge``: one verdict from the reports of CI jobs that shared the runs.

Each job of a CI matrix runs the suite with ``--ipc-job-shard=I/K`` (its
share: runs I-1, I-1+K, ... of every ``ipc_race`` test), the same
``--ipc-seed`` and its own ``--ipc-report`` file.  This command reads the
jobs' report files and merges each test's histograms into one verdict, with
the same rules as a single session (:func:`pytest_ipc.race.verdict.merge`):
a race that no single job saw (every job's runs agree, but not with each
other's) fails here.  A test that some job did not report is ``incomplete``,
never a pass.

    python -m pytest_ipc.merge reports/*.json --out merged.json

Exit status: 0 when every merged test passed, 1 when one raced, failed, had
an unexpected outcome or is incomplete, 2 when a report cannot be read.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, cast

from pytest_ipc.race.schema import SCHEMA_VERSION, RaceEntry

_NEEDED = ("nodeid", "runs", "failed_runs", "histogram", "label", "verdict", "start_method", "seed", "duration")
_SHOWN = {"race": "RACE", "failed": "FAILED", "unexpected": "UNEXPECTED", "incomplete": "INCOMPLETE"}


class ReportError(Exception):
    """A report file that cannot be merged; the message names it."""


def load(path: str) -> dict[str, Any]:
    """One ``--ipc-report`` file, checked enough to merge it."""
    try:
        with open(path, encoding="utf-8") as f:
            report = json.load(f)
    except OSError as exc:
        raise ReportError(f"cannot read {path}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise ReportError(f"{path} is not JSON: {exc}") from None
    if not isinstance(report, dict) or not isinstance(report.get("tests"), list):
        raise ReportError(f"{path} is not a pytest-ipc --ipc-report file (no list of tests)")
    if report.get("schema") != SCHEMA_VERSION:
        raise ReportError(
            f"{path} has report schema {report.get('schema')!r}; this pytest-ipc merges schema {SCHEMA_VERSION} "
            "(let every job run the same pytest-ipc version)"
        )
    for number, entry in enumerate(report["tests"]):
        missing = [key for key in _NEEDED if not isinstance(entry, dict) or key not in entry]
        if missing:
            raise ReportError(f"{path}: test {number} lacks {', '.join(missing)}")
    return report


def merge_reports(reports: list[tuple[str, dict[str, Any]]]) -> tuple[list[RaceEntry], dict[str, str]]:
    """Every test's merged entry, in first-seen order, and the message of each that did not pass."""
    from pytest_ipc.race.verdict import merge

    by_test: dict[str, list[tuple[str, RaceEntry]]] = {}
    for path, report in reports:
        for entry in report["tests"]:
            by_test.setdefault(entry["nodeid"], []).append((path, cast(RaceEntry, entry)))
    merged_tests: list[RaceEntry] = []
    messages: dict[str, str] = {}
    for nodeid, found in by_test.items():
        counts = {tuple(e["job_shard"])[1] for _, e in found if "job_shard" in e}
        if len(counts) > 1:
            raise ReportError(f"{nodeid}: the reports split its runs among different numbers of jobs {sorted(counts)}")
        count = counts.pop() if counts else None
        seen: dict[int, str] = {}
        for path, entry in found:
            if "job_shard" in entry:
                share = entry["job_shard"][0]
                if share in seen:
                    raise ReportError(f"{nodeid}: {seen[share]} and {path} both hold job shard {share}/{count}")
                seen[share] = path
        parts = sorted((e for _, e in found), key=lambda e: e.get("job_shard", [0])[0])
        for entry in parts:
            entry.setdefault("rerun", f'pytest "{nodeid}" --ipc-seed={entry["seed"]}')
        entry, message = merge([RaceEntry(**e, base_nodeid=nodeid) for e in parts], parts="jobs")
        entry.pop("shards", None)
        missing = [f"{i}/{count}" for i in range(1, count + 1) if i not in seen] if count else []
        if missing and entry["verdict"] == "passed":
            entry["verdict"] = "incomplete"
            message = (
                f"incomplete: job shards {', '.join(missing)} sent no runs of this test; "
                f"the {entry['runs']} runs of the others agree"
            )
        entry.update(
            RaceEntry(
                nodeid=nodeid,
                jobs=len(parts),
                missing_jobs=missing,
                xfail=all(e.get("xfail", False) for e in parts),
                interrupted=any(e.get("interrupted", False) for e in parts),
            )
        )
        merged_tests.append(entry)
        if message is not None:
            messages[nodeid] = message
    return merged_tests, messages


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pytest_ipc.merge",
        description="Merge the --ipc-report files of CI jobs run with --ipc-job-shard=I/K into one verdict.",
    )
    parser.add_argument("reports", nargs="+", metavar="REPORT.json", help="the jobs' --ipc-report files")
    parser.add_argument("--out", metavar="MERGED.json", help="write the merged report here (the same schema)")
    args = parser.parse_args(argv)
    try:
        reports = [(path, load(path)) for path in args.reports]
        tests, messages = merge_reports(reports)
    except ReportError as exc:
        print(f"pytest_ipc.merge: {exc}", file=sys.stderr)
        return 2
    seeds = sorted({r.get("seed") for _, r in reports}, key=str)
    print(f"pytest-ipc: merged {len(reports)} reports, seed {', '.join(map(str, seeds))}")
    if len(seeds) > 1:
        print("  the jobs ran with different seeds: give every job the same --ipc-seed to make one campaign")
    width = max([len(t["nodeid"]) for t in tests] + [10])
    failing = 0
    for test in tests:
        shown = _SHOWN.get(test["verdict"], "passed")
        if test.get("xfail"):
            shown += " (xfail)"
        elif test["verdict"] != "passed":
            failing += 1
        outcomes = "outcome" if test["distinct"] == 1 else "outcomes"
        print(
            f"{test['nodeid']:<{width}}  {test['runs']:>6} runs  {test['distinct']:>4} {outcomes:<8}  "
            f"{shown:<10}  {test['jobs']} jobs"
        )
        if test["nodeid"] in messages and not test.get("xfail"):
            for line in messages[test["nodeid"]].splitlines():
                print(f"    {line}")
    status = 1 if failing else 0
    print(f"{len(tests)} tests, {failing} failing" if tests else "no ipc_race tests in the reports")
    if args.out:
        payload = {
            "schema": SCHEMA_VERSION,
            "seed": seeds[0] if len(seeds) == 1 else None,
            "exitstatus": status,
            "merged_from": [path for path, _ in reports],
            "tests": tests,
        }
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump(payload, f, indent=2)
            f.write("\n")
    return status


if __name__ == "__main__":
    sys.exit(main())

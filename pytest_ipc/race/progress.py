"""A live progress line for a long ``ipc_race`` campaign, on a terminal.

Once a test's runs have taken :data:`AFTER` seconds, the end of the
terminal's current line (after pytest's own ``test_x.py ..`` or ``-v``
prefix) shows the runs made of the most the test may make, the races so far
and the time left at the current rate, updated at most every
:data:`EVERY` seconds and erased when the test ends.  Nothing is written when
the output is not a terminal, under ``-q``, or on a pytest-xdist worker
(whose output nobody sees).

Under pytest-xdist the controller sees no run until a shard (``--ipc-shards``)
ends, so :class:`CampaignTotal` shows the campaign's total as its shards
come in: shards done of all, runs, and whether the race is proven.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Generator
from typing import Any

import pytest

AFTER = 2.0  # seconds of runs before the line shows
EVERY = 0.25  # seconds between updates
# Save the cursor (DECSC), later go back to it (DECRC) and erase to the end of the line.
_SAVE, _BACK = "\0337", "\0338\033[K"


def _terminal(config: pytest.Config) -> Any:
    """pytest's TerminalWriter when the line may be shown: a terminal, not -q, not an xdist worker."""
    reporter: Any = config.pluginmanager.get_plugin("terminalreporter")
    if (
        reporter is not None
        and getattr(reporter, "isatty", False)
        and config.get_verbosity() >= 0
        and not hasattr(config, "workerinput")
    ):
        return reporter._tw
    return None


def _write_past(tw: Any, text: str) -> None:
    """Write past the TerminalWriter, whose count of the line's width pytest
    uses to align its own progress: the line is erased again before pytest
    writes more."""
    tw._file.write(text)
    tw._file.flush()


class Progress:
    def __init__(self, item: pytest.Item, most: int) -> None:
        self.tw = _terminal(item.config)
        self.most = most
        self.started = time.monotonic()
        self.shown = 0.0  # when the line was last written; 0 while it is not on the screen

    def update(self, runs: int, distinct: int, proven: bool) -> None:
        """After each run: ``runs`` made so far, ``distinct`` outcomes among them, whether a race is proven."""
        if self.tw is None:
            return
        now = time.monotonic()
        elapsed = now - self.started
        if elapsed < AFTER or now - self.shown < EVERY:
            return
        left = (self.most - runs) * elapsed / runs if runs else 0.0
        race = "race proven" if proven else "no race so far"
        outcomes = "outcome" if distinct == 1 else "outcomes"
        text = f" [ipc_race: {runs} of at most {self.most} runs, {distinct} {outcomes}, {race}, ~{left:.0f}s left]"
        room = shutil.get_terminal_size().columns - self.tw.width_of_current_line - 1
        if room < 20:
            return
        self._write((_BACK if self.shown else _SAVE) + text[:room])
        self.shown = now

    def close(self) -> None:
        if self.shown:
            self._write(_BACK)
            self.shown = 0.0

    def _write(self, text: str) -> None:
        _write_past(self.tw, text)


class CampaignTotal:
    """On the pytest-xdist controller: a sharded campaign's total, as its shards' reports come in.

    Drawn at the end of the terminal's line after pytest has written a
    shard's result, and erased before pytest writes the next one.
    """

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.tw: Any = None
        self.shown = False
        self.shards: dict[str, dict[int, tuple[int, bool, frozenset[str]]]] = {}

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_logreport(self, report: pytest.TestReport) -> Generator[None, None, None]:
        self._erase()
        try:
            return (yield)
        finally:
            self._note(report)

    def pytest_terminal_summary(self) -> None:
        self._erase()

    def _note(self, report: pytest.TestReport) -> None:
        data = getattr(report, "ipc_race", None)
        if report.when != "call" or not isinstance(data, dict) or "base_nodeid" not in data:
            return
        if getattr(report, "node", None) is None:  # not from an xdist worker: the runner's own line did it
            return
        if self.tw is None:
            self.tw = _terminal(self.config) or False
        if not self.tw:
            return
        base, count = data["base_nodeid"], data["shard_count"]
        labels = frozenset(str(label) for label, _ in data["histogram"])
        self.shards.setdefault(base, {})[data["shard"]] = (data["runs"], data["verdict"] != "passed", labels)
        got = self.shards[base].values()
        runs = sum(r for r, _, _ in got)
        proven = any(bad for _, bad, _ in got) or len(frozenset().union(*(ls for _, _, ls in got))) > 1
        race = "race proven" if proven else "no race so far"
        text = f" [{base}: {len(got)} of {count} shards, {runs} runs, {race}]"
        room = shutil.get_terminal_size().columns - self.tw.width_of_current_line - 1
        if room >= 20:
            self._write(_SAVE + text[:room])
            self.shown = True

    def _erase(self) -> None:
        if self.shown:
            self._write(_BACK)
            self.shown = False

    def _write(self, text: str) -> None:
        _write_past(self.tw, text)

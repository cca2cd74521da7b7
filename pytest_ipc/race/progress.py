"""A live progress line for a long ``ipc_race`` campaign, on a terminal.

Once a test's runs have taken :data:`AFTER` seconds, the end of the
terminal's current line (after pytest's own ``test_x.py ..`` or ``-v``
prefix) shows the runs made of the most the test may make, the races so far
and the time left at the current rate, updated at most every
:data:`EVERY` seconds and erased when the test ends.  Nothing is written when
the output is not a terminal, under ``-q``, or on a pytest-xdist worker
(whose output nobody sees).
"""

from __future__ import annotations

import shutil
import time
from typing import Any

import pytest

AFTER = 2.0  # seconds of runs before the line shows
EVERY = 0.25  # seconds between updates
# Save the cursor (DECSC), later go back to it (DECRC) and erase to the end of the line.
_SAVE, _BACK = "\0337", "\0338\033[K"


class Progress:
    def __init__(self, item: pytest.Item, most: int) -> None:
        config = item.config
        reporter: Any = config.pluginmanager.get_plugin("terminalreporter")
        self.tw = (
            reporter._tw
            if reporter is not None
            and getattr(reporter, "isatty", False)
            and config.get_verbosity() >= 0
            and not hasattr(config, "workerinput")
            else None
        )
        # Written past the TerminalWriter, whose count of the line's width
        # pytest uses to align its own progress: the line is erased again.
        self.file = self.tw._file if self.tw is not None else None
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
        assert self.file is not None
        self.file.write(text)
        self.file.flush()

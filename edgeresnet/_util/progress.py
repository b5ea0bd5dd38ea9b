"""Terminal progress for the CLI (the library only calls ``progress(stage, done, total)``)."""

from __future__ import annotations

import os
import sys
import time


def _terminal_stderr():
    try:
        return os.fdopen(os.dup(sys.stderr.fileno()), "w", buffering=1)
    except (AttributeError, OSError, ValueError):  # pragma: no cover - no real fd (e.g. pytest capture)
        return sys.stderr


class Stage(str):
    """A stage name that also says what its count counts ("calibration images", "samples for statistics").

    It is a plain ``str`` to whoever ignores the unit, so ``progress(stage, done, total)`` callbacks keep working.
    """

    unit: str = ""

    def __new__(cls, name: str, unit: str = ""):
        stage = super().__new__(cls, name)
        stage.unit = unit or ""
        return stage


class StageProgress:
    """One status line per stage on stderr: redrawn in place on a terminal, start/end lines otherwise.

    A stage (a name and what it counts) that ends within ``min_seconds`` shows nothing at all.
    """

    def __init__(self, stream=None, min_interval: float = 0.1, min_seconds: float = 0.0):
        # A private copy of the terminal's stderr: the library captures fd 2
        # while native code runs (conversion), and progress must still show.
        self.stream = stream or _terminal_stderr()
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.stage = None
        self.key = None
        self.shown = False
        self.started = 0.0
        self.last = 0.0
        self.min_interval = min_interval
        self.min_seconds = min_seconds

    def __call__(self, stage: str, done: int, total: int) -> None:
        now = time.perf_counter()
        unit = getattr(stage, "unit", "")
        if (str(stage), unit) != self.key:
            self.close()
            self.stage, self.key, self.shown = str(stage), (str(stage), unit), False
            self.count = f"{total} {unit}" if unit else f"{total}"
            self.started, self.last = now, 0.0
        if not self.shown and now - self.started >= self.min_seconds:
            self.shown = True
            if not self.tty:
                self.stream.write(f"{self.stage} ({self.count}) ...\n")
                self.stream.flush()
        if self.shown and self.tty and (now - self.last >= self.min_interval or done >= total):
            self.last = now
            pct = 100.0 * done / total if total else 100.0
            what = f" {unit}" if unit else ""
            self.stream.write(f"\r{self.stage}: {done}/{total}{what} ({pct:3.0f}%) {now - self.started:5.1f}s\x1b[K")
            self.stream.flush()
        if done >= total:
            self.close()

    def close(self) -> None:
        if self.stage is None:
            return
        elapsed = time.perf_counter() - self.started
        if self.shown:
            self.stream.write("\n" if self.tty else f"{self.stage}: {self.count} done in {elapsed:.1f}s\n")
            self.stream.flush()
        self.stage, self.key = None, None

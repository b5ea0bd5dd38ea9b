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


class StageProgress:
    """One status line per stage on stderr: redrawn in place on a terminal, start/end lines otherwise."""

    def __init__(self, stream=None, min_interval: float = 0.1):
        # A private copy of the terminal's stderr: the library captures fd 2
        # while native code runs (conversion), and progress must still show.
        self.stream = stream or _terminal_stderr()
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.stage = None
        self.started = 0.0
        self.last = 0.0
        self.min_interval = min_interval

    def __call__(self, stage: str, done: int, total: int) -> None:
        now = time.perf_counter()
        if stage != self.stage:
            self.close()
            self.stage, self.started, self.last = stage, now, 0.0
            if not self.tty:
                self.stream.write(f"{stage} ({total}) ...\n")
                self.stream.flush()
        if self.tty and (now - self.last >= self.min_interval or done >= total):
            self.last = now
            pct = 100.0 * done / total if total else 100.0
            self.stream.write(f"\r{stage}: {done}/{total} ({pct:3.0f}%) {now - self.started:5.1f}s\x1b[K")
            self.stream.flush()
        if done >= total:
            self.close()

    def close(self) -> None:
        if self.stage is None:
            return
        elapsed = time.perf_counter() - self.started
        if self.tty:
            self.stream.write("\n")
        else:
            self.stream.write(f"{self.stage}: done in {elapsed:.1f}s\n")
        self.stream.flush()
        self.stage = None

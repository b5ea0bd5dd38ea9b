"""SIGINT and SIGTERM as one exception, and short sections a signal must not cut in half.

The CLI installs :func:`handle_signals` around a command: both signals raise
:class:`Interrupted` (a ``KeyboardInterrupt``), so every ``finally`` and
context manager on the way out runs, partial output is removed and the
previous output stays. Library code marks the few steps that must finish once
begun (swapping the new output folder for the old) with :func:`uninterrupted`;
a signal arriving inside is held and raised right after.
"""

from __future__ import annotations

import contextlib
import signal
import threading

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
    """The run was stopped by a signal; ``exit_code`` is 128 + the signal number."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum
        self.exit_code = 128 + signum


_state = {"depth": 0, "pending": None, "fired": False}


def _handler(signum, frame):
    if _state["fired"]:
        return  # already stopping: let the clean-up of the first signal finish
    if _state["depth"]:
        _state["pending"] = signum
        return
    _state["fired"] = True
    raise Interrupted(signum)


@contextlib.contextmanager
def handle_signals():
    """Turn SIGINT and SIGTERM into :class:`Interrupted` while the block runs (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    # A signal the parent set to be ignored (nohup, a background job) stays ignored.
    previous = {s: signal.signal(s, _handler) for s in SIGNALS if signal.getsignal(s) is not signal.SIG_IGN}
    _state.update(depth=0, pending=None, fired=False)
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
        _state.update(depth=0, pending=None, fired=False)


@contextlib.contextmanager
def uninterrupted():
    """Hold SIGINT/SIGTERM until the block is done, then raise :class:`Interrupted`."""
    _state["depth"] += 1
    try:
        yield
    finally:
        _state["depth"] -= 1
        pending = _state["pending"]
        if not _state["depth"] and pending is not None:
            _state.update(pending=None, fired=True)
            raise Interrupted(pending)

"""Run native code that may crash on a malformed model in a child process.

The TFLite interpreter and the model analyzer are C++ and trust the
flatbuffer they are given: one changed byte can make them read wild memory and
kill the whole process with SIGSEGV. Functions that hand them a model the user
gave us run through :func:`run_isolated`, which calls them in a child process
with a timeout; a crash or a hang there becomes :class:`IsolatedFailure` in the
caller, which turns it into a line of its report or a one-line error.

The child is forked when that is safe (no TensorFlow in this process: its
thread pools do not survive a fork) and spawned otherwise.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
from typing import Callable

#: Seconds a child may take before it is killed (a model that loads takes well under one).
DEFAULT_TIMEOUT = 120.0


class IsolatedFailure(Exception):
    """The child died by a signal, exited without an answer, or ran past its timeout."""

    def __init__(self, how: str):
        super().__init__(how)
        self.how = how


def _signal_name(code: int) -> str:
    try:
        return signal.Signals(code).name
    except ValueError:
        return f"signal {code}"


def _child(conn, fn, args):
    # The parent's Ctrl-C / SIGTERM handlers (output clean-up) must not run here.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_DFL)
    try:
        answer = ("ok", fn(*args))
    except BaseException as exc:  # noqa: BLE001 - handed to the parent, which re-raises it
        answer = ("raise", exc)
    try:
        conn.send(answer)
    except Exception:  # noqa: BLE001 - a result or exception that does not pickle
        conn.send(("raise", RuntimeError(f"{type(answer[1]).__name__}: {answer[1]}")))
    conn.close()


def _context():
    if hasattr(os, "fork") and "tensorflow" not in sys.modules:
        return multiprocessing.get_context("fork")
    return multiprocessing.get_context("spawn")


def run_isolated(fn: Callable, *args, timeout: float = DEFAULT_TIMEOUT):
    """``fn(*args)`` in a child process; its result, or its exception re-raised here.

    ``fn`` and its arguments must be picklable (a module-level function). Raises
    :class:`IsolatedFailure` when the child is killed by a signal, exits without
    answering, or does not answer within ``timeout`` seconds (it is then killed).
    """
    ctx = _context()
    receiver, sender = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(sender, fn, args), daemon=True)
    proc.start()
    sender.close()
    try:
        if not receiver.poll(timeout):
            raise IsolatedFailure(f"did not finish within {timeout:g} s")
        try:
            status, value = receiver.recv()
        except (EOFError, OSError):
            proc.join(5)
            code = proc.exitcode
            if code is not None and code < 0:
                raise IsolatedFailure(f"crashed ({_signal_name(-code)})") from None
            raise IsolatedFailure(f"exited with status {code} without an answer") from None
    finally:
        receiver.close()
        if proc.is_alive():
            proc.kill()
        proc.join()
    if status == "raise":
        raise value
    return value

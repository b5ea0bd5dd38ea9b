"""Run native code that may crash on a malformed model in a child process.

The TFLite interpreter and the model analyzer are C++ and trust the
flatbuffer they are given: one changed byte can make them read wild memory and
kill the whole process with SIGSEGV. Functions that hand them a model the user
gave us run through :func:`run_isolated`, which calls them in a child process
with a timeout; a crash or a hang there becomes :class:`IsolatedFailure` in the
caller, which turns it into a line of its report or a one-line error.

The child is forked when that is safe and cheap (no TensorFlow in this
process: its thread pools do not survive a fork); otherwise it is a fresh
Python that imports only what the function needs. Neither re-runs the
caller's ``__main__`` (as multiprocessing's spawn would). The answer comes back
pickled through a pipe of its own, so whatever native code prints cannot mix
into it.

:func:`run_in_child` is the same for long work whose memory should die with it
(fine-tuning: TensorFlow's CPU allocator keeps the training step's peak as a
pool it never returns): always a fresh Python, no timeout, and the child's
``progress(done, total, what)`` calls reach the parent's callback while it runs.
"""

from __future__ import annotations

import os
import pickle
import selectors
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Optional

#: Seconds a child may take before it is killed (a model that loads takes well under one).
DEFAULT_TIMEOUT = 120.0

_PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])
_SERVE = "import sys; from edgeresnet._util.isolation import _serve; _serve(int(sys.argv[1]))"
_SERVE_STREAMING = "import sys; from edgeresnet._util.isolation import _serve_streaming; _serve_streaming(int(sys.argv[1]))"


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


def _outcome_bytes(fn: Callable, args: tuple, kwargs: dict) -> bytes:
    """In the child: ``fn(*args, **kwargs)``'s result, or the exception it raised, pickled."""
    try:
        answer = ("ok", fn(*args, **kwargs))
    except BaseException as exc:  # noqa: BLE001 - handed to the parent, which re-raises it
        answer = ("raise", exc)
    try:
        return pickle.dumps(answer)
    except Exception:  # noqa: BLE001 - a result or exception that does not pickle
        return pickle.dumps(("raise", RuntimeError(f"{type(answer[1]).__name__}: {answer[1]}")))


def _answer(fd: int, fn: Callable, args: tuple) -> None:
    """In the child: call ``fn(*args)`` and write the pickled outcome to ``fd``."""
    # The parent's Ctrl-C / SIGTERM handlers (output clean-up) must not run here.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_DFL)
    data = _outcome_bytes(fn, args, {})
    with os.fdopen(fd, "wb") as out:
        out.write(data)


def _serve(fd: int) -> None:
    """Entry point of a spawned child: (fn, args) pickled on stdin, the outcome to ``fd``."""
    fn, args = pickle.load(sys.stdin.buffer)
    _answer(fd, fn, args)
    _exit_answered()


def _exit_answered() -> None:
    """End a child whose answer is written, without the interpreter's shutdown: collecting what the work left
    (an exception's traceback holding a tf.data iterator) can wait forever on TensorFlow's threads, and the parent
    waits for the child to exit (seen once in CI: a fine-tuning child that had answered, hung in Py_FinalizeEx)."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(0)


def _read_all(fd: int, deadline: float, timeout: float) -> bytes:
    """Everything written to ``fd`` until the child closes it; IsolatedFailure past ``deadline``."""
    chunks = []
    with selectors.DefaultSelector() as sel:
        sel.register(fd, selectors.EVENT_READ)
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not sel.select(left):
                raise IsolatedFailure(f"did not finish within {timeout:g} s")
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)


def _outcome(data: bytes, exit_code: int):
    if data:
        status, value = pickle.loads(data)
        if status == "raise":
            raise value
        return value
    if exit_code < 0:
        raise IsolatedFailure(f"crashed ({_signal_name(-exit_code)})")
    raise IsolatedFailure(f"exited with status {exit_code} without an answer")


def _run_forked(fn, args, timeout):
    deadline = time.monotonic() + timeout
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child
        try:
            os.close(r)
            _answer(w, fn, args)
        finally:
            os._exit(0)
    os.close(w)
    try:
        data = _read_all(r, deadline, timeout)
    except BaseException:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        raise
    finally:
        os.close(r)
    _, status = os.waitpid(pid, 0)
    return _outcome(data, os.waitstatus_to_exitcode(status))


def _spawn(entry: str, task: tuple):
    """A fresh Python running ``entry`` with this checkout importable, given ``task`` pickled on its stdin;
    (the process, the read end of the pipe whose write end the child got as ``sys.argv[1]``)."""
    r, w = os.pipe()
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (_PACKAGE_ROOT, env.get("PYTHONPATH")) if p)
    try:
        proc = subprocess.Popen(
            [sys.executable, "-c", entry, str(w)], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL, pass_fds=(w,), env=env,
        )
    except BaseException:
        os.close(r)
        raise
    finally:
        os.close(w)
    try:
        proc.stdin.write(pickle.dumps(task))
        proc.stdin.close()
    except BrokenPipeError:  # the child died before reading its task
        pass
    return proc, r


def _run_spawned(fn, args, timeout):
    deadline = time.monotonic() + timeout
    proc, r = _spawn(_SERVE, (fn, args))
    try:
        data = _read_all(r, deadline, timeout)
        code = proc.wait(max(1.0, deadline - time.monotonic()))
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    finally:
        os.close(r)
    return _outcome(data, code)


def run_isolated(fn: Callable, *args, timeout: float = DEFAULT_TIMEOUT):
    """``fn(*args)`` in a child process; its result, or its exception re-raised here.

    ``fn`` and its arguments must be picklable (a module-level function of an
    importable module). Raises :class:`IsolatedFailure` when the child is killed
    by a signal, exits without answering, or does not answer within ``timeout``
    seconds (it is then killed).
    """
    if hasattr(os, "fork") and "tensorflow" not in sys.modules:
        return _run_forked(fn, args, timeout)
    return _run_spawned(fn, args, timeout)


# --- long work in a child, with progress -------------------------------------------------------------------------
#
# The child writes framed messages to its pipe: one tag byte (_PROGRESS or _ANSWER), an 8-byte length, a pickle.

_PROGRESS, _ANSWER = b"p", b"a"
_LENGTH = 8


def _send(out, tag: bytes, message) -> None:
    data = pickle.dumps(message)
    out.write(tag + len(data).to_bytes(_LENGTH, "little") + data)
    out.flush()


class _PipeProgress:
    """In the child: ``progress(done, total, what=None)`` calls, sent to the parent."""

    def __init__(self, out):
        self.out = out

    def __call__(self, done, total, what=None):
        _send(self.out, _PROGRESS, (done, total, what))


def _serve_streaming(fd: int) -> None:
    """Entry point of :func:`run_in_child`'s child: (fn, args, kwargs, wants_progress) on stdin, messages to ``fd``."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_DFL)
    _die_with_parent()
    fn, args, kwargs, wants_progress = pickle.load(sys.stdin.buffer)
    with os.fdopen(fd, "wb") as out:
        if wants_progress:
            kwargs = dict(kwargs, progress=_PipeProgress(out))
        data = _outcome_bytes(fn, args, kwargs)  # the result (e.g. trained weights) is held once, as these bytes
        out.write(_ANSWER + len(data).to_bytes(_LENGTH, "little"))
        out.write(data)
        out.flush()
    _exit_answered()


def _read_exactly(fd: int, n: int) -> bytes:
    """``n`` bytes from ``fd``; fewer (b"" or a part) when the writer closed it first."""
    chunks, left = [], n
    while left:
        chunk = os.read(fd, min(left, 1 << 20))
        if not chunk:
            break
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _libc():
    """glibc, or None (another C library or system)."""
    try:
        import ctypes

        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


def _die_with_parent() -> None:
    """Linux: SIGKILL this process when its parent dies (even by SIGKILL), so long work is never orphaned."""
    prctl = getattr(_libc(), "prctl", None)
    if prctl is None:  # not Linux/glibc: the child ends at its next write to the closed pipe
        return
    prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() == 1:  # the parent died before prctl took effect
        os._exit(1)


def _release_free_heap() -> None:
    """glibc's ``malloc_trim(0)``: return freed heap pages to the system (a no-op elsewhere)."""
    trim = getattr(_libc(), "malloc_trim", None)
    if trim is not None:
        trim(0)


def run_in_child(fn: Callable, *args, progress: Optional[Callable] = None, **kwargs):
    """``fn(*args, **kwargs)`` in a fresh Python process; its result, or its exception re-raised here.

    With ``progress``, ``fn`` is called with a ``progress=`` keyword whose calls
    run ``progress(done, total, what)`` here. The child inherits the
    environment and sees this checkout of edgeresnet. When this process is
    interrupted (Ctrl-C, SIGTERM: an exception while waiting), the child is
    killed before the exception goes on. Raises :class:`IsolatedFailure` when
    the child dies without an answer (e.g. killed by the kernel for memory).
    """
    proc, r = _spawn(_SERVE_STREAMING, (fn, args, kwargs, progress is not None))
    _release_free_heap()  # this process waits while the child works: give back what it no longer uses
    try:
        while True:
            head = _read_exactly(r, 1 + _LENGTH)
            size = int.from_bytes(head[1:], "little") if len(head) == 1 + _LENGTH else -1
            body = _read_exactly(r, size) if size >= 0 else b""
            if len(body) != size:  # the pipe closed before a whole message: the child is gone
                code = proc.wait()
                if code < 0:
                    raise IsolatedFailure(f"was killed ({_signal_name(-code)})")
                raise IsolatedFailure(f"exited with status {code} without an answer")
            if head[:1] == _PROGRESS:
                if progress is not None:
                    progress(*pickle.loads(body))
                continue
            # The answer (e.g. trained weights) is unpickled only once the child is gone, so its memory and
            # the answer's copy here are never held at the same time.
            proc.wait()
            status, value = pickle.loads(body)
            if status == "raise":
                raise value
            return value
    except BaseException:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        raise
    finally:
        os.close(r)

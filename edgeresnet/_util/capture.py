"""Capture what native code (TensorFlow's C++ converter, the Analyzer) prints.

The TFLite converter and the model analyzer write to the process's file
descriptors 1 and 2 directly, below Python's ``sys.stdout``. Library code must
not talk to the terminal, so those writes are redirected into a temporary file
and handed back as text (used in error messages and structured reports).
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import sys
import tempfile


class Captured:
    text: str = ""


@contextlib.contextmanager
def capture_output():
    """Redirect fd 1/2 and sys.stdout/stderr; the text is in ``.text`` afterwards."""
    result = Captured()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (AttributeError, ValueError):  # pragma: no cover
            pass
    saved = {}
    py_buf = io.StringIO()
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        try:
            for fd in (1, 2):
                try:
                    saved[fd] = os.dup(fd)
                    os.dup2(tmp.fileno(), fd)
                except OSError:  # pragma: no cover - no such fd (e.g. embedded)
                    saved.pop(fd, None)
            with contextlib.redirect_stdout(py_buf), contextlib.redirect_stderr(py_buf):
                yield result
        finally:
            for stream in (sys.stdout, sys.stderr):
                try:
                    stream.flush()
                except (AttributeError, ValueError):  # pragma: no cover
                    pass
            for fd, dup in saved.items():
                os.dup2(dup, fd)
                os.close(dup)
            tmp.seek(0)
            native = tmp.read().decode("utf-8", "replace")
            result.text = native + py_buf.getvalue()


# An MLIR diagnostic of severity error: "[<unknown>:0: ][loc(...): ]error: [loc(...): ]MESSAGE".
_DIAGNOSTIC = "error: "
# The converter's closing line, which names the function that failed, not why.
_NO_CAUSE = re.compile(r"^failed while converting: '[^']*':?$")
# The converter's list of TensorFlow ops that have no TFLite builtin.
_SELECT_OPS = re.compile(r"^TF Select ops: (.+)$", re.MULTILINE)


def _without_location(message: str) -> str:
    """``loc(callsite(...)): MESSAGE`` -> ``MESSAGE``: MLIR's location says where, not why."""
    if not message.startswith("loc("):
        return message
    depth = 0
    for i, ch in enumerate(message):
        depth += {"(": 1, ")": -1}.get(ch, 0)
        if depth == 0:
            return message[i + 1:].lstrip(": ").strip()
    return message


def _first_diagnostic(lines: list[str]) -> str:
    """The first converter diagnostic that names a cause, without its location; "" when there is none."""
    for ln in lines:
        if _DIAGNOSTIC not in ln:
            continue
        message = _without_location(ln.rsplit(_DIAGNOSTIC, 1)[1].strip())
        if message and not _NO_CAUSE.match(message):
            return message
    return ""


def last_error_line(text: str, default: str = "") -> str:
    """The most telling line of a native log.

    The converter's first error diagnostic that names a cause (with the ops it
    found no TFLite builtin for), else the last line that says 'error'.
    """
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    cause = _first_diagnostic(lines)
    if cause:
        ops = _SELECT_OPS.search(text)
        if ops:
            cause += f" (TFLite has no builtin op for {ops.group(1).strip()}: rebuild the model without it)"
        return cause[:300]
    for ln in reversed(lines):
        if "error" in ln.lower():
            return ln[:300]
    return (lines[-1][:300] if lines else default)


def native_call(fn, failure: str, quiet=None):
    """``fn()`` with native output captured; any exception becomes one ConversionError.

    The converter, the quantizer and the debugger raise many exception types
    and print their reasons on stderr; all mean "failed". The error reads
    ``"<failure>: <the most telling log line>"``. ``quiet`` replaces the plain
    capture with another context manager that yields a :class:`Captured`.
    """
    from edgeresnet.errors import ConversionError

    error = None
    with (quiet or capture_output)() as cap:
        try:
            result = fn()
        except Exception as exc:  # noqa: BLE001 - native errors come in many types
            error = exc
    if error is not None:
        detail = last_error_line(str(error) + "\n" + cap.text, type(error).__name__)
        raise ConversionError(f"{failure}: {detail}")
    return result

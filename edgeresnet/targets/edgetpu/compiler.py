"""The ``edgetpu_compiler`` wrapper: find it, run it, read its figures from its output.

When ``edgetpu_compiler`` is on PATH, :func:`run_compiler` runs it (argument
list, timeout), keeps ``*_edgetpu.tflite`` and its log, and reads the
compiler's own figures from its output (:func:`parse_compiler_log`). The
compiler only exists for x86-64 Linux; elsewhere the analysis predicts.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional, Union

from edgeresnet.errors import MissingDependencyError, TFLiteFileError
from edgeresnet.device.runtime import EDGETPU_CUSTOM_OP
from edgeresnet.targets.edgetpu.ops import EDGETPU_OP_NAME

COMPILER_NAME = "edgetpu_compiler"
COMPILER_HINT = (
    "edgetpu_compiler is not on PATH, so these figures are edgeresnet's prediction; "
    "compile on an x86-64 Debian/Ubuntu host (Coral's apt package edgetpu-compiler) "
    "for the compiler's own op mapping and memory figures"
)



@dataclass
class CompilerResult:
    """What edgetpu_compiler did, in its own figures (None where its log is silent)."""

    ok: bool
    command: list[str]
    returncode: Optional[int]
    seconds: float
    output_model: Optional[str] = None
    log_path: Optional[str] = None
    error: Optional[str] = None
    version: Optional[str] = None
    ops_total: Optional[int] = None
    ops_on_edgetpu: Optional[int] = None
    ops_on_cpu: Optional[int] = None
    edgetpu_subgraphs: Optional[int] = None
    on_chip_bytes: Optional[int] = None
    on_chip_remaining_bytes: Optional[int] = None
    off_chip_bytes: Optional[int] = None
    operators: list[dict] = field(default_factory=list)
    stdout: str = field(default="", repr=False)

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("stdout")
        return d



def find_compiler() -> Optional[str]:
    """Path of edgetpu_compiler on PATH, or None."""
    return shutil.which(COMPILER_NAME)


_SIZE_UNITS = {"B": 1, "KiB": 1024, "MiB": 1024**2, "GiB": 1024**3}


def _size(text: str) -> Optional[int]:
    m = re.match(r"\s*([\d.]+)\s*(B|KiB|MiB|GiB)\b", text)
    if not m:
        return None
    return int(round(float(m.group(1)) * _SIZE_UNITS[m.group(2)]))


_LINE_FIELDS = {
    "Edge TPU Compiler version": ("version", str),
    "Total number of operations": ("ops_total", int),
    "Number of operations that will run on Edge TPU": ("ops_on_edgetpu", int),
    "Number of operations that will run on CPU": ("ops_on_cpu", int),
    "Number of Edge TPU subgraphs": ("edgetpu_subgraphs", int),
    "On-chip memory used for caching model parameters": ("on_chip_bytes", _size),
    "On-chip memory remaining for caching model parameters": ("on_chip_remaining_bytes", _size),
    "Off-chip memory used for streaming uncached model parameters": ("off_chip_bytes", _size),
}
_OPERATOR_ROW = re.compile(r"^([A-Z][A-Z0-9_]*|[A-Za-z][\w-]*-op)\s+(\d+)\s+(\S.*?)\s*$")


def parse_compiler_log(text: str) -> dict:
    """The figures in edgetpu_compiler's console output and/or its ``*_edgetpu.log``.

    Returns a dict with the keys of :class:`CompilerResult`'s figure fields
    (missing figures are absent) and ``operators``: [{op, count, status}].
    When every op maps, the compiler prints no per-device op counts; they are
    then derived from the operator table ("Mapped to Edge TPU" rows).
    """
    out: dict = {}
    operators = []
    in_table = False
    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            continue
        key, sep, value = line.partition(":")
        if sep and key.strip() in _LINE_FIELDS:
            name, conv = _LINE_FIELDS[key.strip()]
            try:
                parsed = conv(value.strip())
            except ValueError:
                parsed = None
            if parsed is not None and name not in out:
                out[name] = parsed
            continue
        if line.startswith("Edge TPU Compiler version"):
            out.setdefault("version", line.rsplit(" ", 1)[-1])
            continue
        if re.match(r"^Operator\s+Count\s+Status$", line):
            in_table = True
            continue
        if in_table:
            m = _OPERATOR_ROW.match(line)
            if m:
                operators.append({"op": m.group(1), "count": int(m.group(2)), "status": m.group(3)})
            else:
                in_table = False
    if operators:
        # The console table (-s) and the .log file may both be present: keep one copy.
        unique, seen = [], set()
        for row in operators:
            key = (row["op"], row["count"], row["status"])
            if key not in seen:
                seen.add(key)
                unique.append(row)
        operators = unique
        out["operators"] = operators
        mapped = sum(r["count"] for r in operators if r["status"].startswith("Mapped to Edge TPU"))
        total = sum(r["count"] for r in operators)
        out.setdefault("ops_on_edgetpu", mapped)
        out.setdefault("ops_total", total)
        out.setdefault("ops_on_cpu", out["ops_total"] - out["ops_on_edgetpu"])
    elif "ops_total" in out and "ops_on_edgetpu" not in out and "Compilation succeeded" in text:
        pass  # no table and no counts: the figures stay unknown rather than guessed
    return out


def run_compiler(
    tflite_path: Union[str, Path],
    out_dir: Union[str, Path],
    timeout: float = 300,
    compiler: Optional[str] = None,
) -> CompilerResult:
    """Run edgetpu_compiler on a model, keeping ``*_edgetpu.tflite`` and its log in ``out_dir``.

    Raises MissingDependencyError when the compiler is not found; a failed or
    timed-out compilation is returned as ``CompilerResult(ok=False, error=...)``.
    """
    exe = compiler or find_compiler()
    if exe is None:
        raise MissingDependencyError(COMPILER_HINT)
    src = Path(tflite_path)
    if not src.is_file():
        raise TFLiteFileError(f"{src}: no such file; pass the .tflite model to compile")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cmd = [str(exe), "-s", "-o", str(out), str(src)]
    expected_model = out / f"{src.stem}_edgetpu.tflite"
    expected_log = out / f"{src.stem}_edgetpu.log"
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as exc:
        text = (exc.stdout or "") if isinstance(exc.stdout, str) else (exc.stdout or b"").decode("utf-8", "replace")
        return CompilerResult(
            ok=False, command=cmd, returncode=None, seconds=time.perf_counter() - start,
            error=f"edgetpu_compiler did not finish within {timeout:g} s", stdout=text,
        )
    except OSError as exc:
        return CompilerResult(
            ok=False, command=cmd, returncode=None, seconds=time.perf_counter() - start,
            error=f"cannot run {exe}: {exc.strerror or exc}",
        )
    seconds = time.perf_counter() - start
    stdout = (proc.stdout or "") + (("\n" + proc.stderr) if proc.stderr else "")
    log_text = ""
    if expected_log.is_file():
        log_text = expected_log.read_text("utf-8", "replace")
    elif stdout.strip():
        expected_log.write_text(stdout, "utf-8")  # keep a log even if the compiler wrote none
    figures = parse_compiler_log(stdout + "\n" + log_text)
    result = CompilerResult(
        ok=False, command=cmd, returncode=proc.returncode, seconds=seconds,
        log_path=str(expected_log) if expected_log.is_file() else None, stdout=stdout,
        **{k: v for k, v in figures.items()},
    )
    return _judge(result, stdout, expected_model)


def _judge(result: CompilerResult, stdout: str, expected_model: Path) -> CompilerResult:
    """``result`` of a finished run, with its error set, or ``ok`` when it wrote a model with an Edge TPU part."""
    if result.returncode != 0:
        lines = [ln.strip() for ln in stdout.splitlines() if ln.strip()]
        bad = [ln for ln in lines if "error" in ln.lower() or "fail" in ln.lower()]
        result.error = (bad or lines or [f"exit status {result.returncode}"])[-1][:300]
        return result
    if not expected_model.is_file():
        result.error = f"edgetpu_compiler exited 0 but wrote no {expected_model.name}"
        return result
    if EDGETPU_CUSTOM_OP not in expected_model.read_bytes():
        result.error = f"{expected_model.name} holds no {EDGETPU_OP_NAME}: nothing was mapped to the Edge TPU"
        result.output_model = str(expected_model)
        return result
    result.output_model = str(expected_model)
    result.ok = True
    return result


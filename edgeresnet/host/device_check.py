"""Accuracy of emitted models measured inside an emulated Raspberry Pi.

``scripts/build_pi_env.sh`` builds Raspberry Pi OS's Python stack (Debian 12
arm64, Python 3.11, tflite-runtime 2.14, numpy<2) with edgeresnet's device
side in it; qemu-user runs it on this machine. ``--device-check pi`` runs
``edgeresnet eval`` there on every emitted model, over the same evaluation
images the host used, so the report shows what the device's own interpreter
and ARM kernels give, and which models would not load on such a Pi at all
(for example an op newer than tflite-runtime 2.14).

Only accuracy is taken from the emulator: its timings describe qemu, not a Pi,
and are never reported.
"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Optional

from edgeresnet.errors import ConfigError, DeviceCheckError

#: The environment variable naming the emulated Pi's python wrapper.
PI_PYTHON_ENV = "EDGERESNET_PI_PYTHON"
#: Where scripts/build_pi_env.sh puts the environment by default.
DEFAULT_PI_ENV = Path.home() / ".cache" / "edgeresnet" / "pi-env"
DEVICES = ("pi",)
#: One model's evaluation inside the emulator (1,000 CIFAR images take about a minute).
EVAL_TIMEOUT_S = 1800
#: Starting the emulated python once (about 6 s under qemu), to find a broken environment before any work.
PROBE_TIMEOUT_S = 300


@dataclass(frozen=True)
class DeviceResult:
    """What one model did on the emulated device."""

    device: str
    status: str  # "ok", "does not load", "failed"
    interpreter: Optional[str] = None
    emulated: Optional[str] = None
    count: Optional[int] = None
    top1: Optional[float] = None
    top5: Optional[float] = None
    host_top1: Optional[float] = None
    error: Optional[str] = None

    @property
    def drop_pts(self) -> Optional[float]:
        """Host top-1 minus device top-1 (positive: the device is worse)."""
        if self.top1 is None or self.host_top1 is None:
            return None
        return round(self.host_top1 - self.top1, 4)

    def to_dict(self) -> dict:
        return asdict(self) | {"drop_pts": self.drop_pts}


def pi_python() -> Path:
    """The emulated Pi's python: ``$EDGERESNET_PI_PYTHON``, else the default build; ConfigError when neither exists."""
    given = os.environ.get(PI_PYTHON_ENV)
    exe = Path(given) if given else DEFAULT_PI_ENV / "python"
    if not exe.is_file():
        where = f"{PI_PYTHON_ENV}={given} does not exist" if given else f"no emulated Pi environment at {exe.parent}"
        raise ConfigError(
            f"--device-check pi: {where}; build it with scripts/build_pi_env.sh "
            f"(it prints the python to set as {PI_PYTHON_ENV})"
        )
    return exe


def probe(python: Path) -> None:
    """Start the device's python once before any work; DeviceCheckError when it cannot run edgeresnet."""
    proc = _run([str(python), "-m", "edgeresnet.cli", "--version"], python, PROBE_TIMEOUT_S)
    if isinstance(proc, str) or proc.returncode != 0:
        why = proc if isinstance(proc, str) else _exit_reason(proc)
        raise DeviceCheckError(
            f"--device-check pi: {why}; rebuild the environment with scripts/build_pi_env.sh "
            f"(or point {PI_PYTHON_ENV} at a working one)"
        )


def _run(cmd: list, python: Path, timeout: float):
    """The finished process, or a one-line reason (str) when it could not run or did not finish."""
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return f"the Pi's python {python} gave no answer within {timeout:g} s"
    except OSError as exc:
        return f"cannot run the Pi's python {python}: {exc.strerror}"


def _exit_reason(proc: subprocess.CompletedProcess) -> str:
    """Why a process failed, in one line: edgeresnet's own ``error:`` line, else its exit status and last line."""
    lines = proc.stderr.strip().splitlines()
    errors = [ln for ln in lines if ln.startswith("error:")]
    if errors:
        return errors[-1].removeprefix("error: ").strip()
    how = f"was killed by signal {-proc.returncode}" if proc.returncode < 0 else f"exited with status {proc.returncode}"
    return f"the Pi's python {how}" + (f": {lines[-1].strip()[:200]}" if lines else " and printed nothing")


def _number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _eval_result(stdout: str) -> dict:
    """The JSON ``edgeresnet eval --json`` prints; ValueError when it is not that."""
    d = json.loads(stdout)
    if not (isinstance(d, dict) and isinstance(d.get("interpreter"), str)
            and all(_number(d.get(k)) for k in ("count", "top1", "top5"))):
        raise ValueError("not the result of edgeresnet eval")
    return d


def check_model(
    python: Path, model: Path, images: str, samples: Optional[int], seed: int, host_top1: Optional[float]
) -> DeviceResult:
    """Run ``edgeresnet eval`` on ``model`` inside the emulated Pi."""
    cmd = [str(python), "-m", "edgeresnet.cli", "eval", str(model), "--images", str(images), "--seed", str(seed), "--json"]
    if samples is not None:
        cmd += ["--samples", str(samples)]
    proc = _run(cmd, python, EVAL_TIMEOUT_S)
    if isinstance(proc, str):
        return DeviceResult("pi", "failed", error=proc)
    if proc.returncode != 0:
        message = _exit_reason(proc)
        status = "does not load" if "does not load" in message else "failed"
        return DeviceResult("pi", status, error=message)
    try:
        d = _eval_result(proc.stdout)
    except ValueError:
        shown = " ".join(proc.stdout.split())[:60]
        what = f"printed {shown!r} instead of edgeresnet eval's JSON" if shown else "printed no result"
        return DeviceResult("pi", "failed", error=f"the Pi's python exited 0 but {what}")
    return DeviceResult(
        "pi", "ok", interpreter=d["interpreter"], emulated=_emulated(python), count=d["count"],
        top1=d["top1"], top5=d["top5"], host_top1=host_top1,
    )


def _emulated(python: Path) -> str:
    return "qemu-aarch64" if (python.parent / "rootfs").is_dir() else "unknown"


def check_variants(
    variants, folder: Path, images: str, samples: Optional[int], seed: int, python: Path,
    progress: Optional[Callable[[int, int], None]] = None,
) -> None:
    """Evaluate every emitted variant (files in ``folder``) on the emulated Pi; the result goes on the variant."""
    todo = [v for v in variants if v.path]
    for i, v in enumerate(todo):
        host = v.drift.top1 if v.drift is not None else None
        v.device = check_model(python, folder / Path(v.path).name, images, samples, seed, host).to_dict()
        if progress is not None:
            progress(i + 1, len(todo))


def findings(variants) -> list[str]:
    """One warning per emitted model that does not load on the device (the report marks them too)."""
    return [f"{v.name} does not load on the emulated Pi: {v.device.get('error')}"
            for v in variants if v.device and v.device["status"] == "does not load"]


def failure(variants) -> Optional[str]:
    """Why the device check failed (a model it could not evaluate), or None when every model has an answer."""
    checked = [v for v in variants if v.device]
    failed = [v for v in checked if v.device["status"] == "failed"]
    if not failed:
        return None
    which = "any model" if len(failed) == len(checked) > 1 else failed[0].name
    more = f" (nor {len(failed) - 1} more)" if 1 < len(failed) < len(checked) else ""
    return f"--device-check pi could not evaluate {which}{more}: {failed[0].device.get('error')}"


def markdown(variants: list[dict]) -> list[str]:
    """The report.md section for variants checked on a device (empty when none were)."""
    rows = [v for v in variants if v.get("device")]
    if not rows:
        return []
    first = next((v["device"] for v in rows if v["device"].get("interpreter")), rows[0]["device"])
    lines = [
        "## On an emulated Raspberry Pi",
        "",
        f"Each model evaluated inside Raspberry Pi OS (arm64) under {first.get('emulated') or 'emulation'} "
        f"with {first.get('interpreter') or 'tflite-runtime'}, on the same images as the host. "
        "Accuracy only: emulated timings say nothing about a Pi.",
        "",
        "| variant | status | host top-1 % | Pi top-1 % | host - Pi pts |",
        "|---|---|---|---|---|",
    ]
    for v in rows:
        d = v["device"]
        fmt = lambda x: "" if x is None else f"{x:.2f}"  # noqa: E731
        status = d["status"] if d["status"] == "ok" else f"{d['status']}: {d.get('error') or ''}"
        lines.append(f"| {v['name']} | {status} | {fmt(d.get('host_top1'))} | {fmt(d.get('top1'))} | {fmt(d.get('drop_pts'))} |")
    return lines + [""]

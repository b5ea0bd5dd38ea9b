"""Latency of one TFLite model in the interpreter a device would use.

Only ``interpreter.invoke()`` is timed (``time.perf_counter``): the input is
set once before the loop, and nothing is copied in or out per run, so the
figures are the model's compute time and not numpy's. The input is random but
well formed: for an integer input tensor, floats drawn over the range that
tensor can represent are quantized with its own scale and zero-point.

Like :mod:`edgeresnet.device.runtime` this module never imports TensorFlow, so it runs
where only ``ai-edge-litert`` or ``tflite-runtime`` is installed.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional, Union

import numpy as np

from edgeresnet._util.validate import whole_number
from edgeresnet.errors import ConfigError, TFLiteFileError
from edgeresnet.device.runtime import TFLiteModel, TensorSpec, emulation, read_tflite_bytes, run_failure, trial_run_isolated

ProgressFn = Callable[[int, int], None]

#: Seed of the random input, so two runs time the same tensor.
INPUT_SEED = 0


@dataclass(frozen=True)
class BenchConfig:
    """How to time a model: ``warmup`` untimed runs, then ``repeats`` timed runs.

    ``threads`` is the interpreter's thread count; None leaves it to the
    interpreter (XNNPACK then picks its own default).
    """

    warmup: int = 10
    repeats: int = 50
    threads: Optional[int] = None

    def __post_init__(self):
        whole_number("warmup", self.warmup, 0)
        whole_number("repeats", self.repeats, 1)
        if self.threads is not None:
            whole_number("threads", self.threads, 1)


@dataclass(frozen=True)
class BenchResult:
    """Latency figures in milliseconds, and what produced them."""

    model: str
    size_bytes: int
    input_shape: tuple
    input_dtype: str
    interpreter: str
    interpreter_version: str
    threads: Optional[int]
    warmup: int
    repeats: int
    median_ms: float
    p90_ms: float
    mean_ms: float
    min_ms: float
    max_ms: float
    std_ms: float
    times_ms: tuple = field(default=(), repr=False)
    #: Set when the interpreter ran under CPU emulation (qemu): the figures
    #: then describe the emulator, not the device.
    emulated: Optional[str] = None

    def to_dict(self, include_times: bool = False) -> dict:
        """A JSON-ready dict (``times_ms``, every timed run, only on request)."""
        d = asdict(self)
        d["input_shape"] = list(self.input_shape)
        times = d.pop("times_ms")
        for key in ("median_ms", "p90_ms", "mean_ms", "min_ms", "max_ms", "std_ms"):
            d[key] = round(float(d[key]), 4)
        if include_times:
            d["times_ms"] = [round(float(t), 4) for t in times]
        return d


def random_input(spec: TensorSpec, seed: int = INPUT_SEED) -> np.ndarray:
    """A random tensor for ``spec``: its dtype, its shape (batch 1 where dynamic), quantized if integer."""
    shape = tuple(d if d > 0 else 1 for d in spec.shape)
    rng = np.random.default_rng(seed)
    dtype = np.dtype(spec.dtype)
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        if spec.quantized:
            # The float range the tensor represents, quantized with its own scale / zero-point.
            lo = (info.min - spec.zero_point) * spec.scale
            hi = (info.max - spec.zero_point) * spec.scale
            x = rng.uniform(lo, hi, size=shape)
            q = np.round(x / spec.scale + spec.zero_point)
            return np.clip(q, info.min, info.max).astype(dtype)
        return rng.integers(info.min, int(info.max) + 1, size=shape, dtype=dtype)
    if np.issubdtype(dtype, np.floating):
        return rng.random(shape).astype(dtype)
    if dtype == np.bool_:
        return rng.random(shape) < 0.5
    raise TFLiteFileError(f"the model's input is {dtype}; edgeresnet benchmarks numeric image inputs only")


def benchmark(
    model: Union[str, Path, bytes],
    config: BenchConfig = BenchConfig(),
    backend: Optional[str] = None,
    progress: Optional[ProgressFn] = None,
    isolate: bool = True,
) -> BenchResult:
    """Time ``config.repeats`` invocations of ``model`` after ``config.warmup`` untimed ones.

    ``model`` is a .tflite path or its bytes; ``backend`` forces an interpreter
    (see :func:`edgeresnet.device.runtime.get_backend`). ``progress(done, total)`` is
    called after every run, warm-up included. A file that is not a TFLite model,
    or does not run, raises :class:`~edgeresnet.errors.TFLiteFileError`. With
    ``isolate`` (the default) the model is first loaded and run once in a child
    process, so a malformed file that crashes the interpreter is an error here,
    not a dead process; pass ``isolate=False`` only for models this process wrote.
    """
    if not isinstance(config, BenchConfig):
        raise ConfigError(f"config must be a BenchConfig, got {type(config).__name__}")
    label = "model" if isinstance(model, (bytes, bytearray)) else str(model)
    if isolate:
        model = bytes(model) if isinstance(model, (bytes, bytearray)) else read_tflite_bytes(model)
        trial_run_isolated(model, label, num_threads=config.threads, backend=backend)
    tfl = TFLiteModel(model, num_threads=config.threads, backend=backend, label=label)
    spec = tfl.input
    x = random_input(spec)
    try:
        ms = _timed_runs(tfl.interpreter, spec.index, x, config, progress) * 1000.0
    except (ValueError, RuntimeError) as exc:
        raise run_failure(label, tfl, exc) from None
    return BenchResult(
        model=label,
        size_bytes=tfl.size_bytes,
        input_shape=tuple(int(d) for d in x.shape),
        input_dtype=str(x.dtype),
        interpreter=tfl.backend.name,
        interpreter_version=tfl.backend.version,
        threads=config.threads,
        warmup=config.warmup,
        repeats=config.repeats,
        median_ms=float(np.median(ms)),
        p90_ms=float(np.percentile(ms, 90)),
        mean_ms=float(np.mean(ms)),
        min_ms=float(np.min(ms)),
        max_ms=float(np.max(ms)),
        std_ms=float(np.std(ms)),
        times_ms=tuple(float(t) for t in ms),
        emulated=emulation(),
    )


def _timed_runs(interpreter, index: int, x: np.ndarray, config: BenchConfig,
                progress: Optional[ProgressFn]) -> np.ndarray:
    """Seconds of each of ``config.repeats`` invocations, after ``config.warmup`` untimed ones."""
    total = config.warmup + config.repeats
    times = np.empty(config.repeats, dtype=np.float64)
    clock = time.perf_counter
    interpreter.set_tensor(index, x)
    for i in range(config.warmup):
        interpreter.invoke()
        if progress is not None:
            progress(i + 1, total)
    for i in range(config.repeats):
        start = clock()
        interpreter.invoke()
        times[i] = clock() - start
        if progress is not None:
            progress(config.warmup + i + 1, total)
    return times


def _size_text(n: int) -> str:
    if n >= 1024 * 1024:
        return f"{n / (1024 * 1024):.2f} MiB"
    return f"{n / 1024:.1f} KiB"


def format_bench(result: BenchResult) -> str:
    """A few plain lines for a terminal."""
    threads = "interpreter default" if result.threads is None else str(result.threads)
    shape = "x".join(str(d) for d in result.input_shape)
    lines = []
    if result.emulated:
        lines.append(
            f"warning:     emulated ({result.emulated}): these timings measure the emulator, "
            "not the device; time on the real board"
        )
    return "\n".join(
        lines
        + [
            f"model:       {result.model} ({_size_text(result.size_bytes)}, input {shape} {result.input_dtype})",
            f"interpreter: {result.interpreter} {result.interpreter_version}, threads: {threads}",
            f"runs:        {result.warmup} warm-up, {result.repeats} timed (invoke only)",
            f"latency ms:  median {result.median_ms:.3f}  p90 {result.p90_ms:.3f}  "
            f"mean {result.mean_ms:.3f}  min {result.min_ms:.3f}  max {result.max_ms:.3f}",
        ]
    )

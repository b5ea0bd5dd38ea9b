"""The budgets `edgeresnet optimize` keeps, and how each is measured on a real .tflite file.

- ``size``: bytes of the .tflite file;
- ``download``: ``len(zlib.compress(file, 9))``, what an app update or an over-the-air push carries;
- ``latency``: median milliseconds of one invocation in the interpreter on *this* machine, with the
  thread count said in the output (:func:`edgeresnet.device.bench.benchmark`);
- ``memory``: peak resident memory the interpreter needs to load, allocate and invoke the model,
  measured in a fresh process (:mod:`edgeresnet.device.peak_memory`);
- ``drop``: top-1 points lost against the float model (or, on unlabelled images, disagreement with it).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Optional

from edgeresnet.errors import ConfigError

# name -> (unit, CLI flag); the order is the order budgets are reported and plotted in.
QUANTITIES = {
    "size": ("bytes", "--max-size"),
    "download": ("bytes", "--max-download"),
    "latency": ("ms", "--max-latency"),
    "memory": ("bytes", "--max-memory"),
}


@dataclass(frozen=True)
class Budgets:
    """Upper limits; None leaves a quantity free. Validated on construction."""

    size: Optional[int] = None
    download: Optional[int] = None
    latency: Optional[float] = None
    memory: Optional[int] = None
    drop: Optional[float] = None

    def __post_init__(self):
        for name, value in asdict(self).items():
            flag = QUANTITIES[name][1] if name in QUANTITIES else "--max-drop"
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ConfigError(f"{flag} must be a finite number, got {value!r}")
            if value < 0 or (value == 0 and name != "drop"):
                raise ConfigError(f"{flag} must be more than 0, got {value!r}; no model can meet it")

    @property
    def given(self) -> tuple[str, ...]:
        """The budgeted quantities (without drop), in report order."""
        return tuple(name for name in QUANTITIES if getattr(self, name) is not None)

    @property
    def primary(self) -> str:
        """The quantity the front is plotted against: the first budget given, else the download size."""
        return (self.given or ("download",))[0]

    def excess(self, measured: dict) -> dict:
        """quantity -> measured / limit for every budget exceeded (1.05 = 5 % over); empty when all hold."""
        over = {}
        for name in self.given + (("drop",) if self.drop is not None else ()):
            value = measured.get(name)
            limit = getattr(self, name)
            if value is None:
                continue
            if name == "drop":
                if value > limit + 1e-9:
                    over[name] = 1.0 + (value - limit) / 100.0
            elif value > limit:
                over[name] = value / limit
        return over

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}


def file_sizes(model: bytes) -> dict:
    """The budgeted quantities a file alone decides: its bytes, and what downloading it costs (zlib, level 9,
    as the report's ``compressed_bytes``)."""
    from edgeresnet.device.sparsity import compressed_size

    return {"size": len(model), "download": compressed_size(model)}


def measure(model: bytes, budgets: Budgets, threads: Optional[int], repeats: int = 30) -> dict:
    """size and download always; latency (median ms) and peak memory when budgeted (they cost runs)."""
    out = file_sizes(model)
    if budgets.latency is not None:
        from edgeresnet.device.bench import BenchConfig, benchmark

        result = benchmark(model, BenchConfig(warmup=5, repeats=repeats, threads=threads), isolate=False)
        out["latency"] = round(result.median_ms, 4)
    if budgets.memory is not None:
        from edgeresnet.device.peak_memory import peak_memory

        out["memory"] = peak_memory(model, threads)
    return out


def describe(name: str, value) -> str:
    """A measured or budgeted quantity in words: '47,138 bytes', '1.25 ms', '3.1 points'."""
    if name == "latency":
        return f"{value:.3f} ms"
    if name == "drop":
        return f"{value:.2f} points"
    return f"{int(value):,} bytes"

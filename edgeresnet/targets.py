"""The one table of deployment targets.

Each target is a named record read from ``converters/<name>.toml``. The
converter, the checks, the report and the benchmarks all read this table, so a
new target is one new file. Precisions are a second, smaller table here: how a
precision maps to TFLiteConverter settings is code, which target takes which
precision is data.
"""

from __future__ import annotations

import difflib
import tomllib
from dataclasses import dataclass, field
from functools import lru_cache

from .errors import ConfigError, TargetError
from .resources import resource_dir

IO_TYPES = ("int8", "uint8", "int16", "float32")


@dataclass(frozen=True)
class Precision:
    """How a model's weights and activations are stored."""

    name: str
    description: str
    quantized_weights: bool
    needs_calibration: bool
    integer_only: bool  # every op runs in integer arithmetic
    io_types: tuple[str, ...]  # possible input/output types; first is the default


PRECISIONS: dict[str, Precision] = {
    p.name: p
    for p in (
        Precision("fp32", "float32 weights and activations", False, False, False, ("float32",)),
        Precision("fp16", "float16 weights, float compute", True, False, False, ("float32",)),
        Precision(
            "dynamic",
            "dynamic-range: int8 weights, float activations quantized on the fly",
            True,
            False,
            False,
            ("float32",),
        ),
        Precision(
            "int8",
            "full integer: int8 per-channel weights, int8 activations",
            True,
            True,
            True,
            ("int8", "uint8", "float32"),
        ),
        Precision(
            "int16x8",
            "16-bit activations, int8 weights (not accelerated by XNNPACK)",
            True,
            True,
            True,
            ("float32", "int16"),
        ),
    )
}


@dataclass(frozen=True)
class Target:
    """A deployment target: what the converter builds for it and what is checked."""

    name: str
    description: str
    precisions: tuple[str, ...]
    int8_precision: str
    float_precision: str
    int8_io_types: tuple[str, ...]
    needs_calibration_for: tuple[str, ...] = ()
    checks: tuple[str, ...] = ("interpreter",)
    notes: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self):
        unknown = [p for p in self.precisions if p not in PRECISIONS]
        if unknown:
            raise ConfigError(f"target {self.name!r} lists unknown precisions {unknown}")
        for p in (self.int8_precision, self.float_precision):
            if p not in self.precisions:
                raise ConfigError(f"target {self.name!r}: precision {p!r} is not in its precisions")
        bad_io = [t for t in self.int8_io_types if t not in IO_TYPES]
        if bad_io or not self.int8_io_types:
            raise ConfigError(f"target {self.name!r}: bad io types {list(self.int8_io_types)}")

    def precision_for(self, int8: bool, requested: str | None = None) -> str:
        """The precision this target emits for ``--int8`` / ``--precision``."""
        if requested is not None:
            if requested not in self.precisions:
                raise ConfigError(
                    f"target {self.name} cannot emit {requested!r}; it takes {', '.join(self.precisions)}"
                )
            return requested
        return self.int8_precision if int8 else self.float_precision

    def io_type_for(self, precision: str, requested: str | None = None) -> str:
        """Input/output type of a model of ``precision`` on this target."""
        allowed = self.int8_io_types if precision == "int8" else PRECISIONS[precision].io_types
        if requested is None:
            return allowed[0]
        if requested not in allowed:
            raise ConfigError(
                f"--io {requested} is not possible for {precision} on target {self.name}; "
                f"choose one of {', '.join(allowed)}"
            )
        return requested

    def needs_calibration(self, precision: str) -> bool:
        return precision in self.needs_calibration_for or PRECISIONS[precision].needs_calibration


def _load(path) -> Target:
    with open(path, "rb") as fh:
        raw = tomllib.load(fh)
    for key in ("precisions", "int8_io_types", "needs_calibration_for", "checks", "notes"):
        if key in raw:
            raw[key] = tuple(raw[key])
    try:
        return Target(**raw)
    except TypeError as exc:
        raise ConfigError(f"{path}: {exc}") from None


@lru_cache(maxsize=1)
def targets() -> dict[str, Target]:
    """All targets, by name, in a stable order (cpu first)."""
    found = {}
    for path in sorted(resource_dir("converters").glob("*.toml")):
        with open(path, "rb") as fh:
            if "precisions" not in tomllib.load(fh):
                continue  # a data file (e.g. an op table), not a target
        t = _load(path)
        found[t.name] = t
    order = ["cpu", "edgetpu", "gpu"]
    return {k: found[k] for k in sorted(found, key=lambda n: (order.index(n) if n in order else 99, n))}


def get_target(name: str) -> Target:
    """Look a target up by name; an unknown name suggests the nearest one."""
    table = targets()
    key = name.strip().lower()
    if key in table:
        return table[key]
    near = difflib.get_close_matches(key, list(table), n=1, cutoff=0.4)
    hint = f"did you mean {near[0]!r}? " if near else ""
    raise TargetError(f"unknown target {name!r}; {hint}choose from {', '.join(table)}")

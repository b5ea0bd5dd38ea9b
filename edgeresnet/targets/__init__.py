"""The registry of deployment targets.

A target is a named record read from ``<name>.toml`` in ``converters/`` (or in
a folder added with :func:`add_target_path` or ``EDGERESNET_TARGETS_PATH``),
plus, optionally, an analysis module in this package registered under a check
name (``edgetpu``, ``gpu``; see :mod:`edgeresnet.targets.checks`). What a
target can do is declared in its record and validated when it is loaded:
precisions, input/output types, whether it runs float layers, its delegate and
its checks. The converter, the checks, ``inspect``, the report and the CLI all
read this registry, so a new target is one new file.

Precisions are a second, smaller table here: how a precision maps to
TFLiteConverter settings is code, which target takes which precision is data.
"""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from edgeresnet.errors import ConfigError, TargetError
from edgeresnet._util.resources import read_toml, resource_dir

IO_TYPES = ("int8", "uint8", "int16", "float32")  # every model input/output type edgeresnet emits

TARGETS_PATH_ENV = "EDGERESNET_TARGETS_PATH"  # extra folders of <name>.toml targets (os.pathsep-separated)
_extra_paths: list[Path] = []


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
    """A deployment target: what the converter builds for it, what it can run, what is checked.

    Capabilities are declared here and read by every caller, never inferred
    from the name: ``float_layers`` (can a model keep some layers in float;
    accuracy recovery needs it), ``int8_io_types``, ``precisions``,
    ``delegate`` and ``checks`` (names in the check registry).
    """

    name: str
    description: str
    precisions: tuple[str, ...]
    int8_precision: str
    float_precision: str
    int8_io_types: tuple[str, ...]
    float_layers: bool
    delegate: str
    needs_calibration_for: tuple[str, ...] = ()
    checks: tuple[str, ...] = ("interpreter",)
    notes: tuple[str, ...] = field(default_factory=tuple)
    source: str = ""  # the file the record was read from

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
        if not isinstance(self.float_layers, bool):
            raise ConfigError(f"target {self.name!r}: float_layers must be true or false, got {self.float_layers!r}")
        if not isinstance(self.delegate, str) or not self.delegate.strip():
            raise ConfigError(f"target {self.name!r}: delegate must name the runtime delegate (e.g. xnnpack)")
        from edgeresnet.targets.checks import check_names

        known = check_names()
        bad_checks = [c for c in self.checks if c not in known]
        if bad_checks:
            raise ConfigError(
                f"target {self.name!r} lists unknown checks {bad_checks}; known checks: {', '.join(known)}"
            )

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


def _load(path: Path, raw: dict) -> Target:
    raw = dict(raw)
    for key in ("precisions", "int8_io_types", "needs_calibration_for", "checks", "notes"):
        if key in raw:
            raw[key] = tuple(raw[key])
    try:
        return Target(**raw, source=str(path))
    except (TypeError, ConfigError) as exc:  # an unknown or missing key; a bad value
        raise ConfigError(f"{path}: {exc}") from None


def target_paths() -> list[Path]:
    """Folders searched for targets: the shipped ``converters/``, then added ones (later wins)."""
    env = [Path(p) for p in os.environ.get(TARGETS_PATH_ENV, "").split(os.pathsep) if p.strip()]
    return [resource_dir("converters"), *env, *_extra_paths]


def add_target_path(folder) -> None:
    """Search ``folder`` for ``<name>.toml`` targets too (e.g. a device the project does not ship)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ConfigError(f"{folder}: no such folder of target files")
    if folder not in _extra_paths:
        _extra_paths.append(folder)
    reset_registry()


def reset_registry() -> None:
    """Forget the loaded targets (after the search path changed)."""
    _registry.cache_clear()


@lru_cache(maxsize=8)
def _registry(key: tuple) -> dict[str, Target]:
    found: dict[str, Target] = {}
    for folder in key:
        for path in sorted(Path(folder).glob("*.toml")):
            raw = read_toml(path, "the target file")
            if "precisions" in raw:  # else a data file (e.g. an op table)
                t = _load(path, raw)
                found[t.name] = t
    order = ["cpu", "edgetpu", "gpu"]
    return {k: found[k] for k in sorted(found, key=lambda n: (order.index(n) if n in order else 99, n))}


def targets() -> dict[str, Target]:
    """All targets, by name, in a stable order (the shipped cpu, edgetpu, gpu first)."""
    return _registry(tuple(str(p) for p in target_paths()))


def target_names() -> tuple[str, ...]:
    return tuple(targets())


def get_target(name: str) -> Target:
    """Look a target up by name; an unknown name suggests the nearest one."""
    table = targets()
    key = name.strip().lower()
    if key in table:
        return table[key]
    near = difflib.get_close_matches(key, list(table), n=1, cutoff=0.4)
    hint = f"did you mean {near[0]!r}? " if near else ""
    raise TargetError(f"unknown target {name!r}; {hint}choose from {', '.join(table)}")

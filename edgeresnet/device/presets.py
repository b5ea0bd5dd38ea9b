"""Preprocessing presets: raw 0..255 pixels -> what the model was trained on.

A :class:`Preset` (data in ``calibration/presets.toml``) is an optional RGB->BGR
flip, then ``(x * scale - mean) / std``: ``preset.apply(imageset.images)``.
The host feeds the result to the converter or folds the preset into the model
(:mod:`edgeresnet.host.calibration`); the device applies it before running a
``.tflite`` (:mod:`edgeresnet.device.predict`). No TensorFlow here.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Optional, Union

import numpy as np

from edgeresnet._util.toml import tomllib
from edgeresnet.errors import ConfigError, DataError

CHANNEL_ORDERS = ("rgb", "bgr")
PRESETS_FILE = "presets.toml"


@dataclass(frozen=True)
class Preset:
    """Raw 0..255 pixels -> model input: optional RGB->BGR flip, then ``(x * scale - mean) / std``.

    ``mean`` and ``std`` hold one value (all channels) or three (per channel,
    in the order *after* the flip). A 1-channel (greyscale) image uses the first
    value of each.
    """

    name: str
    description: str
    scale: float = 1.0
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    channel_order: str = "rgb"
    matches: tuple[str, ...] = ()  # training pipelines this preset reproduces

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name.isidentifier():
            raise ConfigError(f"preset name must be a plain word like 'torch', got {self.name!r}")
        label = f"preset {self.name!r}"
        if not isinstance(self.description, str) or not self.description.strip():
            raise ConfigError(f"{label} needs a description, got {self.description!r}")
        if isinstance(self.scale, bool) or not isinstance(self.scale, (int, float)) or not (
            math.isfinite(self.scale) and self.scale > 0
        ):
            raise ConfigError(f"{label}: scale must be a positive number, got {self.scale!r}")
        object.__setattr__(self, "scale", float(self.scale))
        for key in ("mean", "std"):
            value = getattr(self, key)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                value = (value,)
            if not isinstance(value, (list, tuple)) or len(value) not in (1, 3) or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value
            ):
                raise ConfigError(f"{label}: {key} must be 1 or 3 finite numbers, got {value!r}")
            object.__setattr__(self, key, tuple(float(v) for v in value))
        if any(s <= 0 for s in self.std):
            raise ConfigError(f"{label}: std values must be positive, got {self.std!r}")
        if self.channel_order not in CHANNEL_ORDERS:
            raise ConfigError(f"{label}: channel_order must be rgb or bgr, got {self.channel_order!r}")
        if isinstance(self.matches, str) or not all(isinstance(m, str) for m in self.matches):
            raise ConfigError(f"{label}: matches must be a list of strings, got {self.matches!r}")
        object.__setattr__(self, "matches", tuple(self.matches))

    @property
    def is_identity(self) -> bool:
        """True when ``apply`` only converts to float32 (the ``raw`` preset)."""
        return (
            self.channel_order == "rgb"
            and self.scale == 1.0
            and all(m == 0.0 for m in self.mean)
            and all(s == 1.0 for s in self.std)
        )

    def channel_stats(self, channels: int) -> tuple[np.ndarray, np.ndarray]:
        """(mean, std) as float32 arrays of length ``channels`` (1 channel: the first values)."""
        if channels == 1:
            mean, std = self.mean[:1], self.std[:1]
        elif channels == 3 or len(self.mean) == len(self.std) == 1:
            mean = self.mean if len(self.mean) == channels else self.mean * channels
            std = self.std if len(self.std) == channels else self.std * channels
        else:
            raise DataError(
                f"preset {self.name!r} has per-channel values for 3 channels but the images have {channels}; "
                "use 1- or 3-channel images"
            )
        return np.asarray(mean, dtype=np.float32), np.asarray(std, dtype=np.float32)

    def flips(self, channels: int) -> bool:
        """Whether the channel axis is reversed (RGB -> BGR); only for 3 channels."""
        return channels == 3 and self.channel_order == "bgr"

    def apply(self, images: np.ndarray) -> np.ndarray:
        """Raw pixels (..., C) in 0..255 -> float32 model input, a new array.

        Float input outside 0..255 is refused (unless this preset passes values
        through), because applying a preset twice fails silently otherwise.
        """
        x = np.asarray(images)
        if x.ndim < 1 or x.shape[-1] == 0:
            raise DataError(f"images need a channel axis, got shape {x.shape}")
        if self.is_identity:
            return np.array(x, dtype=np.float32, copy=True)
        if x.dtype != np.uint8 and x.size:
            lo, hi = float(np.min(x)), float(np.max(x))
            if not (math.isfinite(lo) and math.isfinite(hi)) or lo < 0.0 or hi > 255.0:
                raise DataError(
                    f"preset {self.name!r} expects raw 0..255 pixels but the values span [{lo:g}, {hi:g}]; "
                    "for data that is already preprocessed use --preset raw"
                )
        channels = int(x.shape[-1])
        mean, std = self.channel_stats(channels)
        out = np.array(x[..., ::-1] if self.flips(channels) else x, dtype=np.float32, copy=True)
        out *= np.float32(self.scale)
        out -= mean
        out /= std
        return out

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "description": self.description,
            "scale": self.scale,
            "mean": list(self.mean),
            "std": list(self.std),
            "channel_order": self.channel_order,
            "matches": list(self.matches),
        }


def presets_path() -> Path:
    """``calibration/presets.toml`` in a checkout, or its copy inside an installed wheel."""
    from edgeresnet._util.resources import resource_dir

    return resource_dir("calibration") / PRESETS_FILE


@lru_cache(maxsize=8)
def _read_presets(path: str) -> tuple[Preset, ...]:
    try:
        with open(path, "rb") as fh:
            doc = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"preset file {path} is missing; reinstall edgeresnet") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML ({exc}); fix the file") from None
    table = doc.get("presets")
    if not isinstance(table, dict) or not table:
        raise ConfigError(f"{path} has no [presets.<name>] tables; add at least one preset")
    known = {"description", "scale", "mean", "std", "channel_order", "matches"}
    presets = []
    for name, entry in table.items():
        if not isinstance(entry, dict):
            raise ConfigError(f"{path}: presets.{name} must be a table, got {entry!r}")
        unknown = sorted(set(entry) - known)
        if unknown:
            raise ConfigError(
                f"{path}: preset {name!r} has unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(known))}"
            )
        if "description" not in entry:
            raise ConfigError(f"{path}: preset {name!r} needs a description")
        try:
            presets.append(Preset(name=name, **entry))
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from None
    return tuple(presets)


def load_presets(path: Optional[Union[str, os.PathLike]] = None) -> dict[str, Preset]:
    """All presets by name, from ``path`` or the bundled ``calibration/presets.toml``."""
    p = Path(path) if path is not None else presets_path()
    return {preset.name: preset for preset in _read_presets(str(p.resolve()))}


def get_preset(name: str) -> Preset:
    """The preset called ``name``; :class:`ConfigError` listing the choices otherwise."""
    presets = load_presets()
    key = name.strip().lower() if isinstance(name, str) else name
    if key not in presets:
        raise ConfigError(f"unknown preset {name!r}; choose one of {', '.join(presets)}")
    return presets[key]

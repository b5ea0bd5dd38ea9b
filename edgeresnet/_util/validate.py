"""Small checks shared by the settings dataclasses (errors name the value received)."""

from __future__ import annotations

import math

import numpy as np

from edgeresnet.errors import ConfigError


def is_whole(value) -> bool:
    """An int (numpy's too), not a bool."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def whole_number(name: str, value, minimum: int) -> int:
    """``value`` as an int, or ConfigError when it is not a whole number >= ``minimum``."""
    if not is_whole(value):
        raise ConfigError(f"{name} must be a whole number, got {value!r}")
    if value < minimum:
        raise ConfigError(f"{name} must be at least {minimum}, got {value}")
    return int(value)


def learning_rate(value, example: str = "1e-4") -> float:
    """``value`` as a float, or ConfigError naming ``--learning-rate`` unless it is a finite number in (0, 1)."""
    ok = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
    if not (ok and math.isfinite(float(value)) and 0.0 < float(value) < 1.0):
        raise ConfigError(f"--learning-rate must be above 0 and below 1 (e.g. {example}), got {value!r}")
    return float(value)

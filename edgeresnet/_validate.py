"""Small checks shared by the settings dataclasses (errors name the value received)."""

from __future__ import annotations

import numpy as np

from .errors import ConfigError


def whole_number(name: str, value, minimum: int) -> int:
    """``value`` as an int, or ConfigError when it is not a whole number >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ConfigError(f"{name} must be a whole number, got {value!r}")
    if value < minimum:
        raise ConfigError(f"{name} must be at least {minimum}, got {value}")
    return int(value)

"""Small checks shared by the settings dataclasses (errors name the value received)."""

from __future__ import annotations

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

"""What the benchmarks share about the real data: where it lives, and how an int8 model's answers tie."""

from __future__ import annotations

import os
from pathlib import Path


def data_root() -> Path:
    """The shared data folder: ``EDGERESNET_TEST_DATA``, else ``../shared/data`` beside the repository."""
    return Path(os.environ.get("EDGERESNET_TEST_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


def ties(outputs) -> int:
    """Rows whose two top classes get the same value (the lower class index then wins, whichever the float model
    preferred)."""
    import numpy as np

    top2 = np.sort(outputs, -1)[:, -2:]
    return int(np.sum(top2[:, 0] == top2[:, 1]))

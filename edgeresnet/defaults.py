"""Defaults, choices and rules that the library and the command line share.

Kept light on purpose (no numpy, no TensorFlow): ``import edgeresnet.cli`` reads these
at import time to build ``--help``, and the device side reads them without the host.
The modules that use them import them from here; nothing else defines them.
"""

from __future__ import annotations

from typing import Optional

from edgeresnet.errors import ConfigError

DEFAULT_SAMPLES = 300  # calibration images taken from --calib (seeded, class-balanced when labelled)
RESIZE_POLICIES = ("crop", "stretch")  # how images of another size are fitted to the model's input
DEFAULT_RESIZE = "crop"
PRUNE_SCHEDULES = ("polynomial", "constant")  # sparsity schedules while fine-tuning a pruned model


def require_train_for_qat(qat: bool, train: Optional[str]) -> None:
    """ConfigError unless quantization-aware fine-tuning (``--qat``) has labelled images (``--train``)."""
    if qat and train is None:
        raise ConfigError("--qat fine-tunes on labelled images; add --train DIR (one sub-folder per class)")

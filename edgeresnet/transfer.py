"""Transfer learning: a zoo ResNet with a new classifier, fine-tuned on the user's labelled images.

With a pretrained backbone the first epoch trains only the new head (the
backbone, BatchNorm statistics included, is frozen, so the random head cannot
wreck pretrained features); the remaining epochs train everything at the same
learning rate. A randomly initialised backbone trains from the first epoch. The images are read
as a stream (:class:`~edgeresnet.calibration.ImageStream`), the same tf.data
pipeline pruning fine-tunes on.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Optional

from . import _tf
from .errors import ConfigError

ProgressFn = Callable[[int, int], None]


@dataclass(frozen=True)
class TransferConfig:
    epochs: int = 3  # the first with the backbone frozen
    batch_size: int = 64
    learning_rate: float = 1e-3
    seed: int = 0
    head: str = "predictions"

    def __post_init__(self):
        if self.epochs < 1:
            raise ConfigError(f"--epochs must be 1 or more to fine-tune a new classifier, got {self.epochs}")
        if self.batch_size < 1:
            raise ConfigError(f"--batch-size must be positive, got {self.batch_size}")
        if not self.learning_rate > 0:
            raise ConfigError(f"--learning-rate must be positive, got {self.learning_rate}")


def fine_tune(model, train, config: TransferConfig, progress: Optional[ProgressFn] = None,
              freeze_backbone: bool = True) -> dict:
    """Train ``model`` (tf_keras, changed in place) on the labelled stream ``train``; returns a report dict.

    ``freeze_backbone``: train only the head in the first epoch (for a pretrained backbone; a randomly
    initialised one gains nothing from it and trains from the start).
    """
    import math

    from .prune import _progress_callback, _train_dataset

    tf = _tf.tf()
    keras = _tf.tf_keras()
    tf.random.set_seed(config.seed)
    steps = math.ceil(len(train) / config.batch_size)
    total = steps * config.epochs
    data = _train_dataset(tf, train, config.batch_size, config.seed)
    callbacks = [_progress_callback(keras, progress, total)] if progress is not None else []
    history: dict = {}
    started = time.perf_counter()
    frozen = 1 if freeze_backbone else 0
    phases = [("head", frozen), ("all", config.epochs - frozen)]
    phases = [(phase, n) for phase, n in phases if n > 0]
    for phase, epochs in phases:
        for layer in model.layers:
            layer.trainable = phase == "all" or layer.name == config.head
        model.compile(
            optimizer=keras.optimizers.Adam(learning_rate=config.learning_rate),
            loss=keras.losses.SparseCategoricalCrossentropy(),
            metrics=["accuracy"],
        )
        fit = model.fit(data, epochs=epochs, callbacks=callbacks, verbose=0)
        for k, vals in fit.history.items():
            history.setdefault(k, []).extend(float(v) for v in vals)
    for layer in model.layers:
        layer.trainable = True
    return {
        "train_samples": len(train),
        "epochs": config.epochs,
        "frozen_backbone_epochs": frozen,
        "batch_size": config.batch_size,
        "learning_rate": config.learning_rate,
        "steps": total,
        "train_seconds": round(time.perf_counter() - started, 2),
        "history": history,
    }

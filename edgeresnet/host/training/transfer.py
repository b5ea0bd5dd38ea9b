"""Transfer learning: a zoo ResNet with a new classifier, fine-tuned on the user's labelled images.

With a pretrained backbone the first epoch trains only the new head (the
backbone, BatchNorm statistics included, is frozen, so the random head cannot
wreck pretrained features); the remaining epochs train everything at the same
learning rate. A randomly initialised backbone trains from the first epoch. The images are read
as a stream (:class:`~edgeresnet.device.images.ImageStream`), the same tf.data
pipeline pruning fine-tunes on.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Optional

from edgeresnet._util import tf as _tf
from edgeresnet._util.validate import learning_rate, whole_number
from edgeresnet.errors import ConfigError
from edgeresnet.host.training.fit import ProgressFn, compile_classifier, fit_history, progress_callback


@dataclass(frozen=True)
class TransferConfig:
    epochs: int = 3  # the first with the backbone frozen
    batch_size: int = 64
    learning_rate: float = 1e-3
    seed: int = 0
    head: str = "predictions"
    strategy: str = "auto"  # the tf.distribute strategy it trains under (edgeresnet.host.training.cluster), as pruning

    def __post_init__(self):
        from edgeresnet.host.training.cluster import STRATEGIES

        if self.strategy not in STRATEGIES:
            raise ConfigError(f"unknown --strategy {self.strategy!r}; choose one of {', '.join(STRATEGIES)}")
        whole_number("--epochs (new classifier)", self.epochs, 1)
        whole_number("--batch-size", self.batch_size, 1)
        object.__setattr__(self, "learning_rate", learning_rate(self.learning_rate, "1e-3"))


def fine_tune(model, train, config: TransferConfig, progress: Optional[ProgressFn] = None,
              freeze_backbone: bool = True) -> dict:
    """Train ``model`` (tf_keras, changed in place) on the labelled stream ``train``; returns a report dict.

    ``freeze_backbone``: train only the head in the first epoch (for a pretrained backbone; a randomly
    initialised one gains nothing from it and trains from the start).
    """
    from edgeresnet.host.training.cluster import make_strategy
    from edgeresnet.host.training.data import training_data
    from edgeresnet.host.training.record import weights_sha256

    tf = _tf.tf()
    keras = _tf.tf_keras()
    tf.random.set_seed(config.seed)
    strategy = make_strategy(config.strategy)
    data = training_data(tf, strategy, train, config.batch_size, config.seed)
    total = data.steps_per_epoch * config.epochs
    start = _first_batch_loss(keras)
    callbacks = [start] + ([progress_callback(keras, progress, total)] if progress is not None else [])
    history: dict = {}
    started = time.perf_counter()
    frozen = 1 if freeze_backbone else 0
    phases = [("head", frozen), ("all", config.epochs - frozen)]
    phases = [(phase, n) for phase, n in phases if n > 0]
    copy = strategy is not tf.distribute.get_strategy()  # the model's variables are not that strategy's
    with strategy.scope():
        work = model
        if copy:  # train a copy made in the strategy's scope, then take its weights
            work = keras.models.clone_model(model)
            work.set_weights(model.get_weights())
        for phase, epochs in phases:
            for layer in work.layers:
                layer.trainable = phase == "all" or layer.name == config.head
            compile_classifier(work, config.learning_rate)
            for k, vals in fit_history(work, data, epochs, callbacks).items():
                history.setdefault(k, []).extend(vals)
        for layer in work.layers:
            layer.trainable = True
    if work is not model:
        model.set_weights(work.get_weights())
    return {
        "train_samples": len(train),
        "epochs": config.epochs,
        "frozen_backbone_epochs": frozen,
        "batch_size": config.batch_size,
        "learning_rate": config.learning_rate,
        "steps": total,
        "strategy": type(strategy).__name__,
        "replicas": int(strategy.num_replicas_in_sync),
        "shard": data.shard(),
        "weights_sha256": weights_sha256(model),
        "train_seconds": round(time.perf_counter() - started, 2),
        "initial_loss": start.loss,  # the first batch's, on the weights before any step
        "history": history,
    }


def _first_batch_loss(keras):
    """A callback keeping the loss of the first training batch: computed before the first update, it is the
    loss the model started from (``fit`` logs the running mean, which after one batch is that batch's)."""

    class FirstBatchLoss(keras.callbacks.Callback):
        loss = None

        def on_train_batch_end(self, batch, logs=None):
            if self.loss is None and logs and logs.get("loss") is not None:
                self.loss = float(logs["loss"])

    return FirstBatchLoss()


def fine_tune_in_child(model, train, config: TransferConfig, progress: Optional[ProgressFn] = None,
                       freeze_backbone: bool = True) -> dict:
    """:func:`fine_tune` run in a fresh process (see :mod:`edgeresnet.host.training.child`): the same weights
    end up in ``model``, without the training step's memory pool left in this one."""
    from edgeresnet.host.training.child import train_in_child

    info, weights = train_in_child(fine_tune, model, train, config, freeze_backbone=freeze_backbone,
                                   what="fine-tuning (new classifier)", progress=progress)
    model.set_weights(weights)
    return info

"""What a fine-tuning result records about its run: the :class:`TrainedRun` mixin and the weights' fingerprint.

Pruning's and QAT's results mix in :class:`TrainedRun`; transfer learning
reports :func:`weights_sha256` in its own dict. Every worker of a fine-tuning
cluster ends with the same fingerprint, so the report can show that they agree.
"""

from __future__ import annotations

import numpy as np


def weights_sha256(model) -> str:
    """A fingerprint of a Keras model's weights (every worker of a fine-tuning cluster ends with the same)."""
    import hashlib

    h = hashlib.sha256()
    for w in model.get_weights():
        h.update(np.ascontiguousarray(w).tobytes())
    return h.hexdigest()


class TrainedRun:
    """What pruning's and QAT's results share: how the fine-tuning ran and a fingerprint of its weights.

    Mixed into their frozen dataclasses, which hold ``model``, ``steps``,
    ``train_seconds``, ``strategy``, ``replicas`` and ``shard``.
    """

    @property
    def weights_sha256(self) -> str:
        """A fingerprint of the trained weights: every worker of a fine-tuning cluster ends with the same one."""
        return weights_sha256(self.model)

    def run_record(self) -> dict:
        """The report's fields on how the training ran (steps, seconds, strategy, replicas, shard, weights)."""
        return {
            "steps": self.steps,
            "train_seconds": round(self.train_seconds, 2),
            "strategy": self.strategy,
            "replicas": self.replicas,
            "shard": self.shard,
            "weights_sha256": self.weights_sha256,
        }

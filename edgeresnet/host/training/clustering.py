"""Weight clustering (weight sharing): every clustered Conv2D/Dense kernel holds at most N distinct values.

Why not tensorflow-model-optimization's ``cluster_weights``: in tfmot 0.8.1 with TensorFlow 2.21 and
tf-keras 2.21 its wrapper cannot be built (it looks the kernel up *by identity* in ``layer.weights``,
which returns other objects now, and ``build`` ends in ``StopIteration``), so clustering is done here,
with the same idea:

1. each layer's kernel is clustered by 1-D k-means (centroids started on the weights' quantiles); a
   kernel that is already pruned keeps its zeros as one more, fixed cluster at 0 (sparsity survives);
2. fine-tuning on --train keeps the clusters: after every training step, each cluster's weights are
   set to their mean, so a centroid moves with the average of its members' updates (tfmot's gradient
   aggregation does the same to first order) and the zeros stay zero.

The clustered model converts with any int8 method; its per-channel scales then map each layer's N
centroids to at most N int8 values per output channel (plus 0), which is what zlib compresses.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np

from edgeresnet._util import tf as _tf
from edgeresnet._util.validate import whole_number
from edgeresnet.errors import ConfigError
from edgeresnet.host.training.cluster import STRATEGIES

MAX_CLUSTERS = 256
KMEANS_ITERATIONS = 25


@dataclass(frozen=True)
class ClusterConfig:
    """``clusters`` distinct values per kernel (2..256); fine-tuning settings as for pruning."""

    clusters: int
    epochs: int = 3
    batch_size: int = 64
    learning_rate: float = 3e-4
    seed: int = 0
    strategy: str = "auto"
    layers: Optional[tuple] = None  # names of the layers to cluster; None: every Conv2D/Dense layer but the stem

    def __post_init__(self):
        whole_number("--cluster", self.clusters, 2)
        if self.clusters > MAX_CLUSTERS:
            raise ConfigError(f"--cluster takes 2 to {MAX_CLUSTERS} clusters (int8 has 256 values), got {self.clusters}")
        whole_number("--epochs", self.epochs, 0)
        whole_number("--batch-size", self.batch_size, 1)
        lr = self.learning_rate
        if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not math.isfinite(lr) or lr <= 0:
            raise ConfigError(f"--learning-rate must be a positive number, got {lr!r}")
        if self.strategy not in STRATEGIES:
            raise ConfigError(f"unknown --strategy {self.strategy!r}; choose one of {', '.join(STRATEGIES)}")
        names = self.layers
        if names is not None:
            if isinstance(names, str) or not isinstance(names, (tuple, list)) or not names \
                    or not all(isinstance(n, str) for n in names):
                raise ConfigError("layers must be a non-empty tuple of layer names (None: every Conv2D/Dense layer "
                                  f"but the stem), got {names!r}")
            object.__setattr__(self, "layers", tuple(names))


def kmeans_1d(values: np.ndarray, clusters: int) -> tuple[np.ndarray, np.ndarray]:
    """(centroids, each value's cluster index) of 1-D k-means, started on the quantiles (deterministic)."""
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    n = int(min(clusters, max(1, len(np.unique(values)))))
    centroids = np.quantile(values, (np.arange(n) + 0.5) / n)
    for _ in range(KMEANS_ITERATIONS):
        edges = (centroids[1:] + centroids[:-1]) / 2.0
        assign = np.searchsorted(edges, values)
        sums = np.bincount(assign, weights=values, minlength=n)
        counts = np.bincount(assign, minlength=n)
        moved = np.where(counts > 0, sums / np.maximum(counts, 1), centroids)
        if np.allclose(moved, centroids):
            break
        centroids = np.sort(moved)
    edges = (centroids[1:] + centroids[:-1]) / 2.0
    return centroids, np.searchsorted(edges, values)


def assignments(kernel: np.ndarray, clusters: int) -> np.ndarray:
    """Each weight's cluster: 0 for the zeros of a pruned kernel (a fixed cluster), 1..N for the rest."""
    flat = kernel.reshape(-1)
    nonzero = flat != 0
    assign = np.zeros(flat.shape, dtype=np.int64)
    if nonzero.any():
        _, idx = kmeans_1d(flat[nonzero], clusters)
        assign[nonzero] = idx + 1
    return assign


def snap(kernel: np.ndarray, assign: np.ndarray) -> np.ndarray:
    """``kernel`` with every cluster set to its mean (cluster 0 to zero)."""
    flat = kernel.reshape(-1).astype(np.float64)
    n = int(assign.max()) + 1
    means = np.bincount(assign, weights=flat, minlength=n) / np.maximum(np.bincount(assign, minlength=n), 1)
    means[0] = 0.0
    return means[assign].reshape(kernel.shape).astype(kernel.dtype)


def check_clusterable(model) -> None:
    """ConfigError unless ``model`` is a flat tf_keras model: its nested models' layers would not be clustered."""
    keras = _tf.tf_keras()
    if not isinstance(model, keras.Model):
        raise ConfigError(f"--cluster needs a tf_keras (Keras 2) model, got a {type(model).__module__.split('.')[0]} "
                          f"{type(model).__name__}")
    nested = [layer.name for layer in model.layers if isinstance(layer, keras.Model)]
    if nested:
        raise ConfigError(
            f"{model.name} contains nested models ({', '.join(nested)}), whose layers --cluster does not reach; "
            "rebuild it as one flat functional model (e.g. call the backbone's layers on your input) before clustering"
        )


def _layers(model, config: ClusterConfig) -> list:
    keras = _tf.tf_keras()
    check_clusterable(model)
    kinds = (keras.layers.Conv2D, keras.layers.Dense)
    chosen = [layer for layer in model.layers if isinstance(layer, kinds) and not isinstance(layer, keras.layers.Conv2DTranspose)]
    if config.layers is None:  # the stem (first convolution) is tiny and the most sensitive: left as it is
        from edgeresnet.host.training.prune_plan import layer_roles

        roles = layer_roles(model, keras)
        chosen = [layer for layer in chosen if roles.get(layer.name) != "stem"]
        if not chosen:
            raise ConfigError(f"{model.name} has no Conv2D/Dense layer to cluster but its stem (first convolution), "
                              "which is left as it is; drop --cluster")
    else:
        known = {layer.name for layer in chosen}
        unknown = sorted(set(config.layers) - known)
        if unknown:
            raise ConfigError(f"cannot cluster {', '.join(unknown)}: not a Conv2D/Dense layer of {model.name}")
        chosen = [layer for layer in chosen if layer.name in config.layers]
    return chosen


def cluster_model(model, config: ClusterConfig, train=None, progress=None):
    """A copy of the tf_keras ``model`` with each chosen kernel clustered; fine-tuned on ``train`` (a labelled
    ImageStream of model inputs) with the clusters kept, when given. Returns (model, {layer: distinct values})."""
    from edgeresnet.host.training.cluster import make_strategy
    from edgeresnet.host.training.data import training_data
    from edgeresnet.host.training.fit import compile_classifier, fit_history, progress_callback, uses_logits

    if not isinstance(config, ClusterConfig):
        raise ConfigError(f"config must be a ClusterConfig, got {type(config).__name__}")
    tf, keras = _tf.tf(), _tf.tf_keras()
    strategy = make_strategy(config.strategy) if train is not None and config.epochs else tf.distribute.get_strategy()
    with strategy.scope():
        work = keras.models.clone_model(model)
        work.set_weights(model.get_weights())
        plan = {layer.name: assignments(layer.kernel.numpy(), config.clusters) for layer in _layers(work, config)}
        kernels = kernels_of(work, plan)
        snap_all(kernels, plan)
        if train is not None and config.epochs:
            tf.random.set_seed(config.seed)
            data = training_data(tf, strategy, train, config.batch_size, config.seed)
            compile_classifier(work, config.learning_rate, from_logits=uses_logits(model, train))
            callbacks = [keep_clusters(keras, kernels, plan)]
            if progress is not None:
                callbacks.append(progress_callback(keras, progress, data.steps_per_epoch * config.epochs))
            fit_history(work, data, config.epochs, callbacks)
            snap_all(kernels, plan)
    final = keras.models.clone_model(work)
    final.set_weights(work.get_weights())
    return final, distinct_values(final, plan)


def cluster_record(config: ClusterConfig, distinct: dict, fine_tuned: bool) -> dict:
    """The report's record of one clustered model: the settings (``clusters``, fine-tuning) and what came out
    (``layers``: each clustered layer's distinct kernel values, ``max_values`` the largest of them)."""
    return {
        "clusters": config.clusters,
        "clustered_layers": len(distinct),
        "max_values": max(distinct.values(), default=0),
        "stem_left": config.layers is None,
        "fine_tuned": bool(fine_tuned),
        "epochs": config.epochs if fine_tuned else 0,
        **({"learning_rate": config.learning_rate, "batch_size": config.batch_size} if fine_tuned else {}),
        "layers": dict(distinct),
    }


def clusters_of(model, names) -> dict:
    """{layer: each kernel weight's cluster} read off an already clustered ``model``: one cluster per distinct
    value, the zeros (a pruned kernel's) cluster 0, as :func:`assignments` numbers them."""
    plan = {}
    for name in names:
        flat = model.get_layer(name).kernel.numpy().reshape(-1)
        _, inverse = np.unique(flat, return_inverse=True)
        plan[name] = np.where(flat == 0, 0, inverse.reshape(-1) + 1).astype(np.int64)
    return plan


def kernels_of(model, names) -> dict:
    """{layer name: its kernel variable} in ``model``, looking inside tfmot's quantize wrappers (``wrapper.layer``)."""
    found = {}
    for layer in model.layers:
        inner = getattr(layer, "layer", layer)
        if inner.name not in names:
            continue
        if inner is layer:
            found[inner.name] = layer.kernel
        else:  # a wrapper: its inner layer's ``kernel`` is the fake-quantized tensor while it runs; find the variable
            found[inner.name] = next(w for w in layer.weights if w.name.split("/")[-1].startswith("kernel"))
    missing = sorted(set(names) - set(found))
    if missing:
        raise ConfigError(f"clustered layers {', '.join(missing)} are not in {model.name}")
    return found


def distinct_values(model, names) -> dict:
    """{layer: how many distinct values its kernel holds} for the layers ``names`` of ``model`` (wrapped or not)."""
    return {name: int(len(np.unique(k.numpy()))) for name, k in kernels_of(model, names).items()}


def snap_all(kernels: dict, plan: dict) -> None:
    """Every kernel of ``kernels`` ({layer: variable}) with each of its clusters (``plan``) set to their mean."""
    for name, assign in plan.items():
        kernels[name].assign(snap(kernels[name].numpy(), assign))


def keep_clusters(keras, kernels: dict, plan: dict):
    """A Keras callback that puts the clusters back after every training step: each centroid moves with the
    mean of its members' updates, and the zeros stay zero."""
    class KeepClusters(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            snap_all(kernels, plan)

    return KeepClusters()

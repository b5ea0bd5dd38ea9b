"""The training stream as ``model.fit`` takes it, on one machine or sharded across a cluster's workers.

On one machine (``one``, ``mirrored``) every epoch is a new seeded shuffle of
all files, cut into batches of ``batch_size`` that tf.data splits across the
local replicas.

In a cluster (``MultiWorkerMirroredStrategy``) each worker's input pipeline
reads only its own files. tf.data's ``FILE`` auto-shard cannot do that here: it
shards the files of reader datasets (TFRecord, CSV, text lines), and these
images are decoded in Python, so ``AUTO`` would fall back to ``DATA`` (every
worker decodes everything and keeps its share). Instead the data is built per
worker with ``strategy.distribute_datasets_from_function``: every worker draws
the same seeded shuffle of the file list and keeps every W-th file from its
own position (as ``FILE`` sharding gives each worker a fixed set of files), so
the shards are disjoint and together hold every file once. Each epoch
shuffles the shard anew and cuts it into the same number of steps on every
worker, so the global batch (about ``batch_size``) is split evenly across all
replicas and no worker waits for a step the others never take.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from edgeresnet.errors import DataError, EdgeResNetError


def cluster_steps(n_files: int, batch_size: int, workers: int, local_replicas: int = 1) -> int:
    """Training steps per epoch when ``n_files`` are split over ``workers`` machines: about n / batch_size,
    never more than the smallest shard can fill with one image per replica."""
    replicas = workers * local_replicas
    if n_files < replicas:
        raise DataError(
            f"--train has {n_files} images but the cluster trains on {replicas} replicas; every replica needs "
            "at least one image: add images or use fewer workers"
        )
    return max(1, min(math.ceil(n_files / batch_size), (n_files // workers) // local_replicas))


def worker_files(n_files: int, seed: int, workers: int, worker: int) -> np.ndarray:
    """The file indices worker ``worker`` reads, for every epoch: the files at positions ``worker, worker + W,
    ...`` of one seeded shuffle (the same on every worker), so the shards are disjoint and cover every file."""
    return np.sort(np.random.default_rng(seed).permutation(n_files)[worker::workers])


def shard_batches(n_files: int, batch_size: int, seed: int, epoch: int, workers: int, worker: int,
                  local_replicas: int = 1) -> list:
    """Worker ``worker``'s per-replica batches (file indices) of ``epoch``: its own files, shuffled anew each
    epoch and cut into ``cluster_steps(...) * local_replicas`` batches of near-equal size, none empty."""
    mine = worker_files(n_files, seed, workers, worker)
    mine = mine[np.random.default_rng([seed, epoch, worker]).permutation(len(mine))]
    steps = cluster_steps(n_files, batch_size, workers, local_replicas)
    return [np.sort(chunk) for chunk in np.array_split(mine, steps * local_replicas)]


@dataclass
class TrainData:
    """What ``fit`` consumes, the steps one epoch takes, and (in a cluster) which files this worker read."""

    dataset: object
    steps_per_epoch: int
    workers: int = 1
    worker: int = 0
    read: set = field(default_factory=set)  # indices of the files this worker decoded for training
    total: int = 0
    failure: Optional[Exception] = None  # the edgeresnet error that stopped the stream (an image it cannot decode)

    def fit_args(self) -> dict:
        """Keyword arguments for ``fit``: a cluster's endless per-worker stream needs the epoch's length."""
        return {"steps_per_epoch": self.steps_per_epoch} if self.workers > 1 else {}

    def fit(self, model, **kwargs):
        """``model.fit`` on this data (its History). An edgeresnet error inside the stream (e.g. the DataError
        naming a file that cannot be decoded) reaches tf.data's generator thread only as an opaque op error:
        it is raised here again as it was."""
        try:
            return model.fit(self.dataset, **kwargs, **self.fit_args())
        except Exception:
            if self.failure is not None:
                raise self.failure from None
            raise

    def _kept(self, batches):
        """The generator function ``batches``, keeping the edgeresnet error that stops it in ``failure``."""
        def generate():
            try:
                yield from batches()
            except EdgeResNetError as exc:
                self.failure = exc
                raise

        return generate

    def shard(self):
        """The report's record of this worker's share of --train (None on one machine)."""
        if self.workers < 2:
            return None
        return {"workers": self.workers, "worker": self.worker, "files_read": len(self.read), "files": self.total,
                "steps_per_epoch": self.steps_per_epoch}


def _signature(tf, stream):
    return (tf.TensorSpec((None,) + tuple(stream.shape), tf.float32), tf.TensorSpec((None,), tf.int64))


def training_data(tf, strategy, stream, batch_size: int, seed: int) -> TrainData:
    """``stream`` (a labelled ImageStream) as fit's input under ``strategy`` (see the module docstring)."""
    try:
        local = max(1, len(strategy.extended.worker_devices))  # this machine's replicas
    except RuntimeError:  # the default strategy has no device list: one device
        local = 1
    workers = max(1, int(strategy.num_replicas_in_sync) // local)
    if workers == 1:
        epochs = itertools.count()

        def batches():  # a new seeded shuffle each epoch; decoded in the stream's background thread
            order = np.random.default_rng([seed, next(epochs)]).permutation(len(stream))
            yield from stream.batches(batch_size, order=order)

        data = TrainData(None, math.ceil(len(stream) / batch_size), total=len(stream))
        dataset = tf.data.Dataset.from_generator(data._kept(batches), output_signature=_signature(tf, stream))
        data.dataset = dataset.prefetch(tf.data.AUTOTUNE)
        return data

    steps = cluster_steps(len(stream), batch_size, workers, local)
    data = TrainData(None, steps, workers=workers, total=len(stream))

    def dataset_fn(context):
        if context.num_input_pipelines != workers:
            raise DataError(f"expected one input pipeline per worker ({workers}), got {context.num_input_pipelines}")
        worker = data.worker = int(context.input_pipeline_id)  # called once on each worker
        epochs = itertools.count()

        def batches():  # endless: fit takes steps_per_epoch batches per epoch, the same on every worker
            while True:
                chunks = shard_batches(len(stream), batch_size, seed, next(epochs), workers, worker, local)
                for chunk in chunks:
                    data.read.update(int(i) for i in chunk)
                yield from stream.batches(chunks=chunks)

        dataset = tf.data.Dataset.from_generator(data._kept(batches), output_signature=_signature(tf, stream))
        return dataset.prefetch(tf.data.AUTOTUNE)

    data.dataset = strategy.distribute_datasets_from_function(dataset_fn)
    return data


def statistics_batches(data, n_files: int, batch_size: int, seed: int, limit: int, epoch: int) -> list:
    """Batches (file indices) for statistics taken after or before training (BatchNorm, QAT ranges).

    On one machine: the first ``limit`` batches of one seeded shuffle of all
    files. In a cluster: ``limit / W`` batches of this worker's own files (the
    same number on every worker), to be averaged across workers with
    :func:`mean_across_workers`.
    """
    if data is None or data.workers < 2:
        order = np.random.default_rng(seed).permutation(n_files)[: limit * batch_size]
        return [np.sort(order[start : start + batch_size]) for start in range(0, len(order), batch_size)]
    chunks = shard_batches(n_files, batch_size, seed, epoch, data.workers, data.worker)
    chunks = chunks[: math.ceil(limit / data.workers)]
    data.read.update(int(i) for c in chunks for i in c)
    return chunks


def mean_across_workers(tf, strategy, arrays: list) -> list:
    """The element-wise mean of ``arrays`` over every replica of ``strategy`` (one all-reduce): each worker
    gives its own values and all get the same result back."""
    flat = np.concatenate([np.asarray(a, dtype=np.float32).ravel() for a in arrays])
    local = strategy.run(lambda: tf.constant(flat))
    mean = strategy.reduce(tf.distribute.ReduceOp.MEAN, local, axis=None).numpy()
    out, start = [], 0
    for a in arrays:
        a = np.asarray(a)
        out.append(mean[start : start + a.size].reshape(a.shape).astype(a.dtype))
        start += a.size
    return out


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


# --- fine-tuning in a child process ------------------------------------------------------------------------------
#
# TensorFlow's oneDNN CPU allocator keeps the largest training step's memory as a pool it never returns (about
# 1.3 GB for ResNet-18 at 224x224, batch 32), so a convert that fine-tunes would carry it through conversion and
# evaluation. Fine-tuned in a child process, the pool dies with the child: the model goes there as its
# architecture (JSON) and weights, and only the trained weights and the run's record come back.


def portable(model) -> bool:
    """Can ``model`` be rebuilt in another process from its JSON and weights? Only from tf_keras built-in
    layers: a custom layer class exists only in this process, and a Lambda's function (with its closure and
    globals) does not survive serialization faithfully."""
    layers = getattr(model, "layers", None)
    if not layers or not (getattr(model, "_is_graph_network", False) or type(model).__name__ == "Sequential"):
        return False
    return all(type(layer).__module__.startswith("tf_keras.") and type(layer).__name__ != "Lambda" for layer in layers)


class ModelParcel:
    """A tf_keras model on its way to a child process, rebuilt there by :meth:`open`.

    It pickles as the model's architecture (JSON) and weights, copied at that
    moment: the parent keeps no second copy while the child trains, and the
    child lets go of the arrays once the rebuilt model's variables hold them.
    """

    def __init__(self, model):
        self._model, self._state = model, None

    def __getstate__(self):
        return {"architecture": self._model.to_json(), "weights": self._model.get_weights()}

    def __setstate__(self, state):
        self._model, self._state = None, state

    def open(self):
        """In the child: the model (once; the parcel is empty afterwards)."""
        from edgeresnet._util import tf as _tf

        state, self._state = self._state, None
        model = _tf.tf_keras().models.model_from_json(state["architecture"])
        model.set_weights(state["weights"])
        return model


def child_failure(failure, what: str):
    """An ``IsolatedFailure`` of a fine-tuning child as the one-line error a user can act on."""
    from edgeresnet.errors import EdgeResNetError

    hint = ("the system probably ran out of memory; lower --batch-size or free memory"
            if "SIGKILL" in failure.how else "run again; if it repeats, report it")
    return EdgeResNetError(f"the {what} process {failure.how}: {hint}")


def train_in_child(fn, model, *args, what: str, progress=None, **kwargs):
    """``fn(model, *args, progress=..., **kwargs)`` in a fresh process on a copy of ``model`` (a
    :func:`portable` tf_keras model); returns (fn's result, the trained weights).

    ``fn`` either returns a result whose ``model`` is the trained model (it comes back as None: the caller
    rebuilds it from the weights) or trains ``model`` in place. A child that dies without an answer is the
    one-line error of :func:`child_failure`, naming ``what``.
    """
    from edgeresnet._util.isolation import IsolatedFailure, run_in_child

    try:
        return run_in_child(_train_rebuilt, fn, ModelParcel(model), args, kwargs, progress=progress)
    except IsolatedFailure as failure:
        raise child_failure(failure, what) from None


def _train_rebuilt(fn, parcel: ModelParcel, args: tuple, kwargs: dict, progress=None):
    """In the child: ``fn`` on the rebuilt model; (its result without a model, the trained weights)."""
    from dataclasses import replace

    model = parcel.open()
    result = fn(model, *args, progress=progress, **kwargs)
    trained = getattr(result, "model", None)
    if trained is None:  # trained in place (e.g. transfer.fine_tune, which returns its report)
        return result, model.get_weights()
    return replace(result, model=None), trained.get_weights()

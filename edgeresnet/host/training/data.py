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

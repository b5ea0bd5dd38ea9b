"""``optimize`` across the machines of a fine-tuning cluster (``TF_CONFIG``): the chief searches, the rest train.

Every machine runs the same ``edgeresnet optimize`` command with its own ``TF_CONFIG`` (as for ``convert``,
see :mod:`edgeresnet.host.training.cluster`). The chief (worker 0, or the task of type ``chief``) probes,
converts, scores, keeps the resume state and writes --out, as on one machine. Before each candidate it
fine-tunes, it broadcasts the candidate's settings; every other worker builds the same model and fine-tunes it
with the chief under ``MultiWorkerMirroredStrategy``, each on its own share of --train, and writes nothing.
When the search ends, or fails, the chief broadcasts an empty message and the workers return.

Only the fine-tunings are shared: the probes, conversions and measurements are the chief's, so a latency
budget is measured on the chief's machine.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from edgeresnet.errors import ConfigError, DataError
from edgeresnet.host.optimize.candidates import Candidate
from edgeresnet.host.optimize.options import OptimizeOptions


def search_cluster(opts: OptimizeOptions):
    """The cluster this search fine-tunes in (``--strategy auto`` with a ``TF_CONFIG``, or ``multiworker``), or None.

    ConfigError before any work for ``multiworker`` without a cluster, and for ``--jobs`` above 1 in one: the
    --jobs processes could not join it."""
    if opts.strategy not in ("auto", "multiworker"):
        return None
    from edgeresnet.host.training.cluster import read_tf_config, resolve

    cluster = read_tf_config()
    resolve(opts.strategy, cluster, gpus=0)
    if cluster is not None and opts.jobs > 1:
        raise ConfigError(
            f"--jobs {opts.jobs} builds candidates in processes of their own, which cannot join the TF_CONFIG cluster; "
            "pass --jobs 1 (every candidate is then fine-tuned by the whole cluster)"
        )
    return cluster


class Followers:
    """The chief's side: tells the other workers each candidate to fine-tune, then that the search is over.

    A context manager: leaving it (normally or by an exception) sends the end, so no worker waits forever."""

    def __init__(self, cluster):
        self.cluster = cluster

    def announce(self, cand: Candidate) -> None:
        if self.cluster is not None:
            from edgeresnet.host.training.cluster import broadcast

            broadcast(cand.to_json().encode())

    def __enter__(self) -> "Followers":
        return self

    def __exit__(self, kind, value, tb) -> None:
        failed_collective = kind is not None and type(value).__module__.startswith("tensorflow")
        if self.cluster is not None and not failed_collective:  # after a failed collective a peer is gone
            from edgeresnet.host.training.cluster import broadcast

            broadcast(b"")


def follow(opts: OptimizeOptions, cluster, progress=None):
    """A non-chief worker: join the cluster, then fine-tune every candidate the chief announces; writes nothing.

    Returns a :class:`~edgeresnet.host.pipeline.WorkerRun` (each candidate with its weights' fingerprint, which
    the chief's optimize.json also records)."""
    from edgeresnet._util.files import run_tempdir
    from edgeresnet.host.models.loading import check_model_path
    from edgeresnet.host.optimize.evaluate import load_search_data, trained
    from edgeresnet.host.pipeline.context import stage_progress
    from edgeresnet.host.pipeline.worker import WorkerRun
    from edgeresnet.host.training.cluster import broadcast, join
    from edgeresnet.host.training.record import weights_sha256

    if opts.zoo is None:
        check_model_path(opts.model)
    if not Path(opts.train).is_dir():  # as the chief would say it, before it is left waiting for this worker
        raise DataError(f"--train {opts.train}: no such folder; give every worker the same --train")
    models = []
    shard: Optional[dict] = None
    with run_tempdir():
        join(cluster)
        data = load_search_data(opts)
        while message := broadcast(None):
            cand = Candidate.from_json(message.decode())
            stage = stage_progress(progress, f"fine-tune {cand.label} with the chief", "steps")
            _, model, pruned, _ = trained(cand, opts, data, stage)
            models.append((cand.label, weights_sha256(model)))
            shard = shard or (pruned.shard if pruned is not None else None)
    return WorkerRun(task=f"{cluster.task_type} {cluster.task_index}", address=cluster.address,
                     chief=cluster.chief_address, models=tuple(models), shard=shard)

"""A non-chief worker of a fine-tuning cluster: it fine-tunes with the chief and writes nothing in --out."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from edgeresnet._util.files import run_tempdir
from edgeresnet.device.presets import get_preset
from edgeresnet.host.pipeline.context import RunContext, Source
from edgeresnet.host.pipeline.data import check_train, class_order
from edgeresnet.host.pipeline.finetune import build_models, transfer
from edgeresnet.host.pipeline.model import load_run_model


@dataclass(frozen=True)
class WorkerRun:
    """What a non-chief worker of a fine-tuning cluster did: it trained, and wrote nothing."""

    task: str
    address: str
    chief: str
    models: tuple  # (name, weights sha256) of each fine-tuned model: the chief's report.json has the same
    shard: Optional[dict] = None  # this worker's share of --train (train_data.TrainData.shard)


def run_worker(ctx: RunContext, plan, cluster) -> WorkerRun:
    """A non-chief worker: load the model and --train, fine-tune with the chief, write nothing in --out."""
    from edgeresnet.host.training.cluster import join

    opts = ctx.opts
    check_train(opts)  # as the chief does, before joining it
    with run_tempdir():
        join(cluster)
        loaded, reference_meta = load_run_model(opts)
        preset_name = opts.preset or (reference_meta or {}).get("preset") or "raw"
        preset = get_preset(preset_name)
        names, _ = class_order(opts, loaded, ctx.notify)
        src = Source(loaded, reference_meta, preset, preset_name, names)
        transfer_info = transfer(ctx, src)  # the same new classifier as the chief's
        models, clustering = build_models(ctx, plan, src)
    trained = [(loaded.name, transfer_info)] if transfer_info is not None else []
    trained += [(m.name, info) for m, info in models.values() if info is not None]
    trained += [(f"{models[key][0].name} clustered", record) for key, record in clustering.items()
                if record.get("weights_sha256")]
    return WorkerRun(
        task=f"{cluster.task_type} {cluster.task_index}", address=cluster.address, chief=cluster.chief_address,
        models=tuple((name, info.get("weights_sha256", "")) for name, info in trained),
        shard=next((info["shard"] for _, info in trained if info.get("shard")), None),
    )

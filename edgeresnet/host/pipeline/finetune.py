"""Fine-tuning in a run: the new classifier (--classes), pruning and quantization-aware training on --train,
where each runs (this process, a child, a cluster) and with which batch; the report's record of it."""

from __future__ import annotations

from typing import Optional

from edgeresnet.host.pipeline.context import RunContext, Source, stage_progress
from edgeresnet.host.pipeline.data import load_train

CHILD_TRAINING_MIN_SIDE = 96  # see ConvertOptions.train_in_child


def fine_tuning_cluster(opts):
    """The cluster this run fine-tunes in (pruning, --qat, --cluster or --classes on --train), or None."""
    configs = [c for c in (opts.prune, opts.qat, opts.transfer, opts.cluster) if c is not None]
    if opts.train is None or not configs or configs[0].strategy not in ("auto", "multiworker"):
        return None
    from edgeresnet.host.training.cluster import read_tf_config, resolve

    cluster = read_tf_config()
    resolve(configs[0].strategy, cluster, gpus=0)  # multiworker without a cluster: refused before any work
    return cluster


def transfer(ctx: RunContext, src: Source, notify=None) -> Optional[dict]:
    """With --classes: fine-tune the zoo model's new classifier on --train (in place); its report, else None.
    ``notify`` (when given) hears that the training loss did not fall."""
    opts, loaded = ctx.opts, src.loaded
    if opts.classes is None:
        return None
    from edgeresnet.host.training.transfer import TransferConfig, fine_tune, fine_tune_in_child

    train = load_train(opts, loaded, src.preset, names=src.names)
    in_child = train_in_child(opts, loaded, train)
    info = (fine_tune_in_child if in_child else fine_tune)(
        loaded.model, train, opts.transfer or TransferConfig(seed=opts.seed),
        progress=stage_progress(ctx.progress, f"fine-tune new {opts.classes}-class classifier", "steps"),
        freeze_backbone=opts.weights is not None,
    )
    loss = info["history"].get("loss") or [None]
    if notify is not None and loss[-1] is not None and info.get("initial_loss") is not None \
            and loss[-1] >= info["initial_loss"]:
        notify(
            f"warning: fine-tuning the new {opts.classes}-class classifier ended with a training loss of {loss[-1]:.3f} "
            f"(last epoch's mean), no lower than it started ({info['initial_loss']:.3f} on the first batch): "
            "it learned nothing; fine-tune longer (--epochs), start from trained weights (--weights), "
            "or lower --learning-rate"
        )
    return {**info, "process": _process(in_child, train)}


def train_in_child(opts, loaded, train) -> bool:
    """Does fine-tuning run in a child process (ConvertOptions.train_in_child)?"""
    if train is None or fine_tuning_cluster(opts) is not None:  # a cluster's collectives live in this process
        return False
    from edgeresnet.host.training.child import portable

    if opts.train_in_child is not None:
        return opts.train_in_child and portable(loaded.model)
    side = min(loaded.input_shape[:2]) if len(loaded.input_shape) == 3 else 0
    return side >= CHILD_TRAINING_MIN_SIDE and portable(loaded.model)


def _process(in_child: bool, train) -> Optional[str]:
    """The report's record of where fine-tuning ran: "child" (a process of its own), "this", or None (none ran)."""
    return None if train is None else ("child" if in_child else "this")


def _prune(config, loaded, train, progress, notify, in_child: bool = False):
    """Prune (and fine-tune when ``train`` is given); returns (LoadedModel, report dict)."""
    from edgeresnet.host.models.loading import LoadedModel
    from edgeresnet.host.training.prune import prune_model, prune_model_in_child

    stage = f"fine-tune pruned model ({config.sparsity:g})"
    run = prune_model_in_child if in_child else prune_model
    result = run(loaded, config, train=train, progress=stage_progress(progress, stage, "training batches"))
    for w in result.warnings:
        notify(f"warning: {w}")
    name = loaded.name + f"_pruned{int(round(config.sparsity * 100))}"
    return LoadedModel.from_keras(result.model, name), {**result.to_dict(), "process": _process(in_child, train)}


def _qat(config, base, base_info, train, progress, in_child: bool = False, clustered: tuple = ()):
    """Quantization-aware fine-tuning of ``base`` (sparsity-preserving when it was pruned, cluster-preserving for
    the ``clustered`` layers of a --cluster model).

    Returns (LoadedModel, info): ``info`` is the QAT record, with the pruning
    record of ``base`` under ``pruning`` when there is one.
    """
    from edgeresnet.host.models.loading import LoadedModel
    from edgeresnet.host.training.qat import quantize_aware_train, quantize_aware_train_in_child

    pruned = base_info is not None
    kept = [what for what, on in (("sparsity", pruned), ("cluster", clustered)) if on]
    stage = "quantization-aware fine-tuning" + (f" ({'- and '.join(kept)}-preserving)" if kept else "")
    result = (quantize_aware_train_in_child if in_child else quantize_aware_train)(
        base, config, train, preserve_sparsity=pruned, progress=stage_progress(progress, stage, "training batches"),
        clustered=tuple(clustered),
    )
    info = {**result.to_dict(), "process": _process(in_child, train)}
    if pruned:
        info["pruning"] = base_info
    return LoadedModel.from_keras(result.model, base.name + "_qat"), info


def _cluster(config, loaded, train, progress, notify):
    """``loaded`` with its kernels clustered (--cluster N), fine-tuned on ``train`` keeping the clusters when given;
    returns (LoadedModel, the report's record of it: clustering.cluster_record)."""
    from edgeresnet.host.models.loading import LoadedModel
    from edgeresnet.host.training.clustering import cluster_model, cluster_record

    loaded.require_tf_keras("--cluster")
    stage = f"fine-tune clustered model ({config.clusters} clusters)"
    model, distinct = cluster_model(loaded.model, config, train, stage_progress(progress, stage, "training batches"))
    fine_tuned = train is not None and config.epochs > 0
    how = "fine-tuned on --train" if fine_tuned else "one-shot, no --train"
    notify(f"clustered {loaded.name}: at most {max(distinct.values())} values in each of {len(distinct)} layers "
           f"(the stem left as it is; {how})")
    record = cluster_record(config, distinct, fine_tuned)
    if fine_tuned:
        from edgeresnet.host.training.record import weights_sha256

        record["weights_sha256"] = weights_sha256(model)
    return LoadedModel.from_keras(model, loaded.name), record


def _clusters_after(record: dict, model) -> dict:
    """The --cluster record of a cluster-preserving QAT model: its clustered layers' distinct values now."""
    from edgeresnet.host.training.clustering import distinct_values

    layers = distinct_values(model, record["layers"])
    return {**record, "layers": layers, "max_values": max(layers.values(), default=0)}


def build_models(ctx: RunContext, plan, src: Source) -> tuple[dict, dict]:
    """The models to convert: the one given, one pruned model per sparsity in the plan (fine-tuned on
    --train when given) and, with --qat, a quantization-aware fine-tuned copy of each (sparsity-preserving
    for pruned ones); with --cluster N each one not quantization-aware clustered; each built once.
    Returns ((sparsity, qat) -> (LoadedModel, prune or QAT info), (sparsity, qat) -> clustering record)."""
    opts, loaded, progress = ctx.opts, src.loaded, ctx.progress
    fine_tunes = opts.prune is not None or opts.qat is not None or opts.cluster is not None
    train = load_train(opts, loaded, src.preset, src.names) if fine_tunes else None
    models: dict = {}
    clustering: dict = {}
    for sparsity, qat in dict.fromkeys(v.model_key for v in plan):
        model, info = loaded, None
        if qat:
            base, before = models[(sparsity, False)], clustering.get((sparsity, False))
            clustered = tuple(before["layers"]) if before else ()
            model, info = _qat(opts.qat, *base, train, progress, train_in_child(opts, base[0], train), clustered)
            if before:  # the clusters the QAT model kept (cluster-preserving QAT)
                clustering[(sparsity, qat)] = _clusters_after(before, model.model)
        elif sparsity is not None:
            from dataclasses import replace

            from edgeresnet.host.training.prune import PruneConfig

            config = replace(opts.prune, sparsity=sparsity) if opts.prune else PruneConfig(sparsity=sparsity)
            model, info = _prune(config, loaded, train, progress, ctx.notify, train_in_child(opts, loaded, train))
        if opts.cluster is not None and not qat:
            model, clustering[(sparsity, qat)] = _cluster(opts.cluster, model, train, progress, ctx.notify)
        if opts.fold_preprocessing:
            from edgeresnet.host.calibration import fold_preprocessing
            from edgeresnet.host.models.loading import LoadedModel

            model = LoadedModel.from_keras(fold_preprocessing(model.model, src.preset), model.name)
        models[(sparsity, qat)] = (model, info)
    return models, clustering


def _fine_tune_configs(opts) -> dict:
    """The fine-tuning configs of a run that fine-tunes on --train (a --classes run has one even if not given)."""
    from edgeresnet.host.training.transfer import TransferConfig

    transfer = opts.transfer or (TransferConfig(seed=opts.seed) if opts.classes is not None else None)
    configs = {"prune": opts.prune, "qat": opts.qat, "transfer": transfer, "cluster": opts.cluster}
    return {k: c for k, c in configs.items() if c is not None} if opts.train is not None else {}


def fine_tune_batch(opts, loaded, notify) -> tuple:
    """``opts`` with the fine-tuning batch decided (memory.choose_batch), and the report's record of it (or None:
    nothing is fine-tuned). On a cluster every worker keeps the configured batch (they must agree)."""
    from dataclasses import replace

    from edgeresnet.host.memory import choose_batch

    configs = _fine_tune_configs(opts)
    if not configs or (fine_tuning_cluster(opts) is not None and opts.batch_size is None):
        return opts, None
    choice = choose_batch(loaded.model, max(c.batch_size for c in configs.values()), opts.batch_size)
    side = "x".join(str(d) for d in loaded.input_shape[:2])
    why = choice.why(loaded.name, side)
    if not choice.fits:
        notify(f"warning: {why}; lower --batch-size if the run is killed for memory")
    elif choice.batch_size < choice.largest:
        notify(f"note: {why}")
    batch = choice.batch_size
    tuned = {k: replace(c, batch_size=batch if choice.given else min(c.batch_size, batch)) for k, c in configs.items()}
    return replace(opts, **tuned), choice.to_dict(loaded.name, side)


def fine_tune_record(train_path, info, qat: bool) -> Optional[dict]:
    """How a variant's model was fine-tuned (None: not at all): method, epochs, learning rate, data."""
    if info is None:
        return None
    if qat:
        record = {k: info[k] for k in ("method", "epochs", "learning_rate", "schedule", "batch_size", "train_samples",
                                       "train_seconds", "strategy", "replicas", "shard", "weights_sha256")}
        pruning = info.get("pruning")
        if pruning is not None and pruning.get("fine_tuned"):
            record["after_pruning"] = fine_tune_record(train_path, pruning, False)
    elif info.get("fine_tuned"):
        config = info.get("config") or {}
        record = {"method": "prune", "epochs": info.get("epochs"), "learning_rate": config.get("learning_rate"),
                  "batch_size": config.get("batch_size"), "train_samples": info.get("train_samples"),
                  "train_seconds": info.get("train_seconds")}
    else:
        return None
    record["data"] = train_path
    record["process"] = info.get("process")  # "child": fine-tuned in a process of its own
    return record


def cluster_fine_tune_record(train_path, cluster: dict, before: Optional[dict]) -> Optional[dict]:
    """A clustered model's ``fine_tune`` record: clustering's fine-tuning on --train (after pruning's, ``before``,
    when the model was pruned and fine-tuned first); ``before`` as it is when clustering was one-shot."""
    if not cluster.get("fine_tuned"):
        return before
    record = {"method": "cluster", "epochs": cluster["epochs"], "learning_rate": cluster.get("learning_rate"),
              "batch_size": cluster.get("batch_size"), "data": train_path, "process": "this"}
    if before is not None:
        record["after_pruning"] = before
    return record

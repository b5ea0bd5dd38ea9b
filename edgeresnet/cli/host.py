"""The commands that need TensorFlow: `convert`, `report` and `models`.

TensorFlow and the pipeline are imported inside the commands, so importing this
module (and ``edgeresnet --help``) stays fast.
"""

from __future__ import annotations

import json

import click

from edgeresnet.cli.options import CONTEXT, FINITE, data_options
from edgeresnet.errors import ConfigError
from edgeresnet.defaults import require_train_for_qat

_PRUNE_KEYS = {
    "epochs": "epochs",
    "batch_size": "batch_size",
    "learning_rate": "learning_rate",
    "prune_schedule": "schedule",
    "prune_structure": "structure",
    "prune_policy": "policy",
    "stem_sparsity": "stem_sparsity",
    "classifier_sparsity": "classifier_sparsity",
    "strategy": "strategy",
}


_TRANSFER_KEYS = ("epochs", "batch_size", "learning_rate", "strategy")


def _transfer_config(kw):
    """A TransferConfig for --classes (fine-tuning options shared with pruning), or None."""
    if kw.get("classes") is None:
        return None
    from edgeresnet.host.training.transfer import TransferConfig

    return TransferConfig(seed=kw["seed"], **{k: kw[k] for k in _TRANSFER_KEYS if kw.get(k) is not None})


def _cluster_config(kw):
    """A ClusterConfig when --cluster N is given (fine-tuning options shared with pruning), else None."""
    if kw.get("cluster") is None:
        return None
    from edgeresnet.host.training.clustering import ClusterConfig

    return ClusterConfig(kw["cluster"], seed=kw["seed"], **{k: kw[k] for k in _TRANSFER_KEYS if kw.get(k) is not None})


def _qat_config(kw):
    """A QATConfig when --qat is given (the library's rule: it needs --train), else None."""
    if not kw.get("qat"):
        return None
    try:
        require_train_for_qat(True, kw.get("train"))
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None
    from edgeresnet.host.training.qat import QATConfig

    return QATConfig(seed=kw["seed"], **{k: kw[k] for k in _TRANSFER_KEYS if kw.get(k) is not None})


def _prune_config(sparsity, kw, flag):
    """A PruneConfig from the pruning options, or None; pruning options without pruning are an error."""
    given = {cfg: kw[opt] for opt, cfg in _PRUNE_KEYS.items() if kw.get(opt) is not None}
    if sparsity is None:
        if kw.get("classes") is not None or kw.get("qat") or kw.get("cluster") is not None:  # they take --epochs etc.
            given = {k: v for k, v in given.items() if k not in _TRANSFER_KEYS}
        if given:
            names = ", ".join("--" + k.replace("_", "-") for k in _PRUNE_KEYS if _PRUNE_KEYS[k] in given)
            raise click.UsageError(f"{names} only apply to pruning; add {flag}")
        return None
    from edgeresnet.host.training.prune import PruneConfig

    if kw.get("train") is not None and given.get("epochs") == 0:
        raise click.UsageError("--epochs 0 with --train would not fine-tune at all; use --epochs 1 or more, or drop --train")
    if given.get("structure") == "block":
        given["block_size"] = (1, 4)
    return PruneConfig(sparsity=sparsity, seed=kw["seed"], **given)


# Options of `convert`/`report` that are ConvertOptions fields of the same name.
_SAME_NAMED = (
    "io_type", "calib", "calib_samples", "seed", "preset", "resize", "fold_preprocessing", "eval_samples",
    "max_drop", "overwrite", "train", "recover", "int8_method", "strict", "trust_model_code", "device_check",
    "labels", "batch_size",
)


def _options(model, kw, default_out, **extra):
    from edgeresnet.host.pipeline import ConvertOptions

    default_targets = extra.pop("default_targets")
    return ConvertOptions(
        model=model,
        targets=tuple(kw["targets"]) or default_targets,
        eval=kw["eval_path"],
        out=kw["out"] or default_out,
        **{name: kw[name] for name in _SAME_NAMED},
        weights=kw["weights"],
        classes=kw["classes"],
        input_size=kw["input_size"],
        transfer=_transfer_config(kw),
        qat=_qat_config(kw),
        cluster=_cluster_config(kw),
        **extra,
    )


def _run_with_progress(fn, *args, **kwargs):
    from edgeresnet._util.progress import StageProgress

    progress = StageProgress()
    try:
        return fn(*args, progress=progress, notify=lambda m: (progress.close(), click.echo(m, err=True)), **kwargs)
    finally:
        progress.close()


@click.command(context_settings=CONTEXT)
@click.argument("model", required=False)
@click.option("--int8", "int8", is_flag=True, help="Full-integer int8 (int8 weights and activations, calibrated). Never falls back to dynamic-range.")
@click.option("--precision", metavar="P", help="Precision instead of --int8: fp32, dynamic (int8 weights only), int8, or int16x8 (16-bit activations; XNNPACK does not accelerate it).")
@click.option("--prune", "prune", type=FINITE, metavar="SPARSITY", help="Magnitude-prune to this sparsity (0 < s < 1) before quantizing; fine-tunes when --train is given.")
@click.option("--format", "formats", multiple=True, metavar="F", help="Also write the report as F: csv, png (accuracy vs size) or html (embeds the png when both are asked for). Repeat for several; report.json and report.md are always written.")
@data_options
def convert(model, int8, precision, prune, formats, **kw):
    """Convert MODEL (.h5, .keras, SavedModel folder, or a built-in architecture name such as resnet50 with --weights or --classes/--train) to TFLite, verify drift, write a report.

    Without MODEL, converts the built-in reference ResNet-8 (trained on
    scikit-learn's digits) and verifies it on built-in held-out digits.
    """
    from edgeresnet.host.pipeline import DEFAULT_OUT, run_convert

    opts = _options(
        model, kw, DEFAULT_OUT, default_targets=("cpu",), int8=int8, precision=precision,
        prune=_prune_config(prune, kw, "--prune SPARSITY"),
        formats=tuple(dict.fromkeys(("json", "md") + tuple(f.strip().lower() for f in formats))),
    )
    report = _run_with_progress(run_convert, opts)
    if worker_done(report, opts.out):
        return
    _print_summary(report.to_dict(), opts.out)


def _floats(text):
    try:
        return tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise click.UsageError(f"--sparsity takes comma-separated numbers such as 0.5,0.75, got {text!r}") from None


@click.command(context_settings=CONTEXT)
@click.argument("model", required=False)
@click.option("--sparsity", "sparsity", default="", metavar="S1,S2", help="Also build pruned + int8 variants at these sparsities, e.g. 0.5,0.75 (fine-tuned when --train is given).")
@click.option("--latency/--no-latency", default=True, show_default=True, help="Time every variant on this machine (ai-edge-litert).")
@click.option("--jobs", type=int, default=1, show_default=True, metavar="N", help="Convert the variants in N processes at once (results identical to --jobs 1; latency is measured afterwards, one model at a time).")
@click.option("--bench-repeats", type=int, default=30, show_default=True, help="Timed runs per variant for the latency figures.")
@data_options
def report(model, sparsity, latency, bench_repeats, **kw):
    """Build every sensible variant of MODEL, measure each, and write a report to look at.

    Variants: each precision every target takes (default targets: every one
    in the registry; cpu: int8, fp32, dynamic, int16x8; edgetpu: int8; gpu:
    fp16, fp32) plus pruned int8 models at
    --sparsity. Writes report.json, report.md, report.csv, report.html and
    accuracy_vs_size.png (with the Pareto front).
    """
    from edgeresnet.device.bench import BenchConfig
    from edgeresnet.host.pipeline import run_report

    sparsities = _floats(sparsity)
    prune = _prune_config(sparsities[0] if sparsities else None, kw, "--sparsity S1,S2")
    from edgeresnet.targets import target_names

    opts = _options(model, kw, "edgeresnet-report", default_targets=target_names(), prune=prune, jobs=kw["jobs"])
    bench_config = BenchConfig(warmup=5, repeats=bench_repeats) if latency else None
    result = _run_with_progress(run_report, opts, sparsities=sparsities, bench_config=bench_config)
    if worker_done(result, opts.out):
        return
    data = result.to_dict()
    _print_summary(data, opts.out)
    click.echo(f"open {opts.out}/report.html (plot: {opts.out}/accuracy_vs_size.png)")


def worker_done(result, out: str) -> bool:
    """On a non-chief worker of a fine-tuning cluster: say what it did, and that it wrote nothing."""
    from edgeresnet.host.pipeline import WorkerRun

    if not isinstance(result, WorkerRun):
        return False
    share = (f" on its {result.shard['files_read']} of {result.shard['files']} --train files"
             if result.shard else "")
    click.echo(
        f"{result.task} at {result.address}: fine-tuned "
        f"{', '.join(f'{name} (weights sha256 {digest[:12]})' for name, digest in result.models) or 'nothing'} "
        f"with the cluster{share}; the chief at {result.chief} converts and writes {out} (nothing written here)"
    )
    return True


def _print_summary(data: dict, out: str) -> None:
    from edgeresnet.report import variants_table

    f = data["float"]
    if f.get("top1") is not None:
        click.echo(f"float model: top-1 {f['top1']:.2f} % on {f['count']} images")
    if data["evaluation"].get("not_measured"):
        click.echo(f"accuracy not measured: {data['evaluation']['not_measured']}; sizes and latency only")
    click.echo(variants_table(data))
    click.echo(f"wrote {out}/report.json and report.md ({data['seconds']} s)")


@click.command(context_settings=CONTEXT)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def models(as_json):
    """List the built-in ResNet architectures with parameters, MACs and input size."""
    from edgeresnet.host.models import architecture_table

    rows = architecture_table()
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    click.echo(f"{'name':<10} {'family':<9} {'input':<13} {'classes':>7} {'params':>12} {'MACs':>15}")
    for r in rows:
        shape = "x".join(str(s) for s in r["input_shape"])
        click.echo(f"{r['name']:<10} {r['family']:<9} {shape:<13} {r['classes']:>7} {r['params']:>12,} {r['macs']:>15,}")



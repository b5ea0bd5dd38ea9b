"""The ``edgeresnet`` command line. The only module that talks to the terminal.

Heavy modules (TensorFlow, the pipeline) are imported inside the commands so
``edgeresnet --help`` answers at once.
"""

from __future__ import annotations

import json
import math
import os
import sys
import warnings

import click

from edgeresnet.errors import (
    EXIT_FAILED,
    EXIT_INCOMPATIBLE,
    EXIT_INTERNAL,
    EXIT_SIGINT,
    EXIT_USAGE,
    ClusterError,
    EdgeResNetError,
    EdgeResNetWarning,
)
from edgeresnet.host.quantize.registry import DEFAULT_METHOD

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


class _FiniteFloat(click.ParamType):
    """A float that is a real number: inf and nan are refused while parsing options."""

    name = "float"

    def convert(self, value, param, ctx):
        try:
            number = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number", param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return number


FINITE = _FiniteFloat()


def _fail(message: str, code: int = EXIT_USAGE):
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


@click.group(context_settings=CONTEXT)
@click.version_option(package_name="edgeresnet")
def cli():
    """Take Keras ResNets to verified TFLite models for CPU (XNNPACK), Coral Edge TPU and mobile GPU.

    Start with `edgeresnet convert --int8`: it converts the built-in reference
    ResNet and verifies it on built-in real data.
    """


class _TargetOption(click.Option):
    """``--target``: its help lists the target registry, read only when help is shown."""

    def get_help_record(self, ctx):
        from edgeresnet.targets import targets

        names = "; ".join(f"{t.name} ({t.description})" for t in targets().values())
        self.help = f"Deployment target: {names}. Repeat for several."
        return super().get_help_record(ctx)


def _data_options(f):
    """Options shared by `convert` and `report`: targets, data, preprocessing, budget, output."""
    options = [
        click.option("--target", "targets", multiple=True, metavar="NAME", cls=_TargetOption, help="Deployment target (one of the target registry). Repeat for several."),
        click.option("--io", "io_type", metavar="TYPE", help="Input/output type of full-integer models: uint8 (default on cpu and edgetpu: what MediaPipe and the TFLite Task Library take), int8 or float32."),
        click.option("--calib", type=click.Path(), help="Calibration data: an image folder (flat or one sub-folder per class), or a .npy/.npz array."),
        click.option("--calib-samples", type=int, default=300, show_default=True, help="How many calibration images to use (seeded, class-balanced when labelled)."),
        click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True, help="Seed for sampling images."),
        click.option("--preset", metavar="NAME", help="Preprocessing the model was trained with: raw (0..255), unit ([0,1]), symmetric ([-1,1]), caffe, torch. Default: raw (the reference model knows its own)."),
        click.option("--resize", type=click.Choice(["crop", "stretch"]), default="crop", show_default=True, help="How images of another size are fitted: crop = shorter side to size then centre crop; stretch = straight resize."),
        click.option("--fold-preprocessing", is_flag=True, help="Put the preset inside the model so the deployed model takes raw 0..255 pixels."),
        click.option("--eval", "eval_path", type=click.Path(), help="Evaluation images: labelled (class sub-folders) gives top-1/top-5; otherwise agreement with the float model."),
        click.option("--eval-samples", type=int, help="Evaluate on at most this many images (default: all)."),
        click.option("--max-drop", type=FINITE, metavar="PTS", help="Fail (exit 3) when a model loses more than PTS top-1 points against the float model; the report then goes to OUT.failed and OUT is left as it was."),
        click.option("--int8-method", default=DEFAULT_METHOD, show_default=True, metavar="M", help="How int8 ranges and weights are chosen (accuracy recovery starts from the same method's model): minmax (the plain converter), mse (error-minimising activation ranges), mse+bias (plus bias correction of weight rounding), mse+gptq (plus GPTQ rounding)."),
        click.option("--recover/--no-recover", default=True, show_default=True, help="When an int8 model exceeds --max-drop, keep its worst layers in float one at a time until it fits (cpu; the Edge TPU cannot run float layers, so there the worst layers are only named)."),
        click.option("--strict", is_flag=True, help="Fail the run when a target check fails (a model that would not map fully to the Edge TPU, or a GPU-delegate blocker); by default such findings are reported."),
        click.option("--labels", type=click.Path(), metavar="FILE", help="Class names for the models' metadata, one per line in output order (default: the class folder names of --eval, --calib or --train)."),
        click.option("--out", type=click.Path(), help="Output folder (convert: edgeresnet-out; report: edgeresnet-report)."),
        click.option("--overwrite", is_flag=True, help="Replace an existing output folder."),
        click.option("--train", type=click.Path(), help="Labelled images (one sub-folder per class) to fine-tune on, read as a stream of batches: the pruned model (without it pruning is one-shot), --qat, and the new classifier of --classes."),
        click.option("--qat", is_flag=True, help="Also emit int8 models made by quantization-aware fine-tuning on --train (tfmot; pruned models keep their zeros). Needs --train."),
        click.option("--weights", type=click.Path(), metavar="FILE.h5", help="With a built-in architecture as MODEL (e.g. resnet50): a local Keras .h5 to load by layer name (never downloaded)."),
        click.option("--classes", type=int, metavar="N", help="With a built-in architecture as MODEL: a new classifier for N classes, fine-tuned on --train (backbone from --weights frozen for the first epoch, then trained too)."),
        click.option("--input-size", type=int, metavar="PX", help="With a built-in architecture as MODEL: square input side in pixels (default: the architecture's, 224 or 32)."),
        click.option("--epochs", type=int, help="Fine-tuning epochs for pruning, --qat and --classes with --train (default 3)."),
        click.option("--batch-size", type=int, help="Fine-tuning batch size (default: 64, lowered to 32, 16 or 8 where the model's training memory would exceed 3 GiB or the memory available; report.json's memory says which)."),
        click.option("--learning-rate", type=FINITE, help="Fine-tuning learning rate (Adam; default 3e-4 for pruning, 1e-4 for --qat (3e-4 for --qat after --prune), 1e-3 for the new classifier of --classes)."),
        click.option("--strategy", type=click.Choice(["auto", "one", "mirrored", "multiworker"]), help="tf.distribute strategy for fine-tuning: auto (default: multiworker when TF_CONFIG lists a cluster, mirrored with several GPUs, else one device), one, mirrored or multiworker. In a cluster only the chief writes --out."),
        click.option("--prune-schedule", type=click.Choice(["polynomial", "constant"]), help="Sparsity schedule while fine-tuning (default polynomial decay)."),
        click.option("--prune-structure", metavar="S", help="unstructured (default), block (1x4 blocks; tfmot supports it on Dense layers only) or 2:4 (two of every four weights; sparsity must be 0.5)."),
        click.option("--prune-policy", metavar="P", help="xnnpack: prune only what XNNPACK's sparse kernels run (1x1 convolutions, at least 2/3 sparse); refused for models where it would not make them faster."),
        click.option("--stem-sparsity", type=FINITE, help="Sparsity of the first convolution (default 0: left dense, it is small and sensitive)."),
        click.option("--classifier-sparsity", type=FINITE, help="Sparsity of the last Dense layer (default 0: left dense)."),
        click.option("--device-check", type=click.Choice(["pi"]), help="Also evaluate every emitted model inside an emulated Raspberry Pi (arm64, tflite-runtime 2.14; build it once with scripts/build_pi_env.sh) on the --eval images: the report adds the Pi's top-1 and marks models that would not load there."),
        click.option("--trust-model-code", is_flag=True, help="Load MODEL even if it carries code (Lambda layers, custom classes, file or process ops in a SavedModel); that code then runs on this machine as you, so use it only for models you or someone you trust made."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


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


def _qat_config(kw):
    """A QATConfig when --qat is given (it needs --train), else None."""
    if not kw.get("qat"):
        return None
    if kw.get("train") is None:
        raise click.UsageError("--qat fine-tunes on labelled images; add --train DIR (one sub-folder per class)")
    from edgeresnet.host.training.qat import QATConfig

    return QATConfig(seed=kw["seed"], **{k: kw[k] for k in _TRANSFER_KEYS if kw.get(k) is not None})


def _prune_config(sparsity, kw, flag):
    """A PruneConfig from the pruning options, or None; pruning options without pruning are an error."""
    given = {cfg: kw[opt] for opt, cfg in _PRUNE_KEYS.items() if kw.get(opt) is not None}
    if sparsity is None:
        if kw.get("classes") is not None or kw.get("qat"):  # --epochs/--batch-size/--learning-rate/--strategy set those
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
        **extra,
    )


def _run_with_progress(fn, *args, **kwargs):
    from edgeresnet._util.progress import StageProgress

    progress = StageProgress()
    try:
        return fn(*args, progress=progress, notify=lambda m: (progress.close(), click.echo(m, err=True)), **kwargs)
    finally:
        progress.close()


@cli.command(context_settings=CONTEXT)
@click.argument("model", required=False)
@click.option("--int8", "int8", is_flag=True, help="Full-integer int8 (int8 weights and activations, calibrated). Never falls back to dynamic-range.")
@click.option("--precision", metavar="P", help="Precision instead of --int8: fp32, dynamic (int8 weights only), int8, or int16x8 (16-bit activations; XNNPACK does not accelerate it).")
@click.option("--prune", "prune", type=FINITE, metavar="SPARSITY", help="Magnitude-prune to this sparsity (0 < s < 1) before quantizing; fine-tunes when --train is given.")
@click.option("--format", "formats", multiple=True, metavar="F", help="Also write the report as F: csv, png (accuracy vs size) or html (embeds the png when both are asked for). Repeat for several; report.json and report.md are always written.")
@_data_options
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
    if _worker_done(report, opts.out):
        return
    _print_summary(report.to_dict(), opts.out)


def _floats(text):
    try:
        return tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise click.UsageError(f"--sparsity takes comma-separated numbers such as 0.5,0.75, got {text!r}") from None


@cli.command(context_settings=CONTEXT)
@click.argument("model", required=False)
@click.option("--sparsity", "sparsity", default="", metavar="S1,S2", help="Also build pruned + int8 variants at these sparsities, e.g. 0.5,0.75 (fine-tuned when --train is given).")
@click.option("--latency/--no-latency", default=True, show_default=True, help="Time every variant on this machine (ai-edge-litert).")
@click.option("--jobs", type=int, default=1, show_default=True, metavar="N", help="Convert the variants in N processes at once (results identical to --jobs 1; latency is measured afterwards, one model at a time).")
@click.option("--bench-repeats", type=int, default=30, show_default=True, help="Timed runs per variant for the latency figures.")
@_data_options
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
    if _worker_done(result, opts.out):
        return
    data = result.to_dict()
    _print_summary(data, opts.out)
    click.echo(f"open {opts.out}/report.html (plot: {opts.out}/accuracy_vs_size.png)")


def _worker_done(result, out: str) -> bool:
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


@cli.command(context_settings=CONTEXT)
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


@cli.command(context_settings=CONTEXT)
@click.argument("model", type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("--strict", is_flag=True, help="Exit 4 when the model would not run entirely on the Edge TPU (or is not GPU-compatible).")
@click.option("--no-gpu", is_flag=True, help="Skip the GPU-delegate compatibility analysis.")
def inspect(model, as_json, strict, no_gpu):
    """Answer "will this .tflite run on cpu / edgetpu / gpu (every registered target)?" for any TFLite model.

    Shows the op histogram, input/output types and quantization, tensor dtypes,
    size, a verdict per target, and which interpreters load it. Works without
    TensorFlow. Set EDGERESNET_TFLITE_RUNTIME_PYTHON to a Python that has
    tflite-runtime 2.14 to check that interpreter too.
    """
    from edgeresnet.device.inspection import format_inspect, inspect_tflite

    report = inspect_tflite(model, gpu=not no_gpu)
    click.echo(report.to_json() if as_json else format_inspect(report))
    if strict:
        bad = report.strict_failures()
        if bad:
            _fail(f"{model}: not compatible with {', '.join(bad)} (--strict)", EXIT_INCOMPATIBLE)


@cli.command(context_settings=CONTEXT)
@click.argument("model", type=click.Path())
@click.option("--threads", type=int, metavar="N", help="Interpreter threads (default: the interpreter's own choice).")
@click.option("--warmup", type=int, default=10, show_default=True, metavar="N", help="Untimed runs before timing.")
@click.option("--repeats", type=int, default=50, show_default=True, metavar="N", help="Timed runs; median, p90, mean and min are reported.")
@click.option("--interpreter", metavar="NAME", help="Force an interpreter: ai-edge-litert, tflite-runtime or tf.lite (default: the first installed, or EDGERESNET_INTERPRETER).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON (with every timed run in times_ms).")
@click.option("--precision", metavar="P", help="With a built-in architecture as MODEL: the precision to convert it to before timing (fp32, dynamic, int8, int16x8, fp16; default int8).")
@click.option("--input-size", type=int, metavar="PX", help="With a built-in architecture as MODEL: square input side in pixels (default: the architecture's).")
def bench(model, threads, warmup, repeats, interpreter, as_json, precision, input_size):
    """Time a .tflite model's invoke() on this machine (random input; needs no TensorFlow).

    Works on a device that has only ai-edge-litert or tflite-runtime installed.
    MODEL may also be a built-in architecture (e.g. resnet50): it is built with
    random weights and converted here (needs TensorFlow), for timing only.
    """
    from dataclasses import replace

    from edgeresnet._util.progress import Stage, StageProgress
    from edgeresnet.device.bench import BenchConfig, benchmark, format_bench
    from edgeresnet.host.models.zoo import zoo_spec

    config = BenchConfig(warmup=warmup, repeats=repeats, threads=threads)
    label = None
    if zoo_spec(model) is not None:
        from edgeresnet.host.pipeline import zoo_timing_model
        from edgeresnet.targets import PRECISIONS

        precision = precision or "int8"
        if precision not in PRECISIONS:
            raise click.UsageError(f"unknown --precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
        if input_size is not None:  # before the line saying it is built
            from edgeresnet.host.models.zoo import check_input_size

            check_input_size(input_size)
        label = f"{zoo_spec(model).name} ({precision}, random weights: timing only)"
        click.echo(f"build {label} and convert it ...", err=True)
        model = zoo_timing_model(model, precision, input_size)
    elif precision is not None or input_size is not None:
        flag = "--precision" if precision is not None else "--input-size"
        raise click.UsageError(f"{flag} applies to a built-in architecture MODEL (e.g. resnet50), not to a .tflite file")
    progress = StageProgress(min_seconds=1.0)  # a fast model's runs are over before a line would help

    def runs(done, total):
        if done <= warmup:
            progress(Stage("benchmark", "warm-up runs"), done, warmup)
        else:
            progress(Stage("benchmark", "timed runs"), done - warmup, repeats)

    try:
        result = benchmark(model, config, backend=interpreter, progress=runs, isolate=label is None)
    finally:
        progress.close()
    if label is not None:
        result = replace(result, model=label)
    click.echo(json.dumps(result.to_dict(include_times=True), indent=2) if as_json else format_bench(result))


def _device_options(f):
    """Options shared by `predict` and `eval`: overrides for models whose metadata is missing or wrong."""
    options = [
        click.option("--labels", type=click.Path(), metavar="FILE", help="Class names, one per line in output order (default: the labels in the model's metadata)."),
        click.option("--preset", metavar="NAME", help="Normalize with a bundled preset (raw, unit, symmetric, caffe, torch) instead of the model's metadata."),
        click.option("--mean", metavar="M[,M,M]", help="Normalization mean on 0..255 pixels, (pixel - mean) / std; one value or one per channel (default: the model's metadata)."),
        click.option("--std", metavar="S[,S,S]", help="Normalization std on 0..255 pixels; one value or one per channel (default: the model's metadata)."),
        click.option("--resize", type=click.Choice(["crop", "stretch"]), default="crop", show_default=True, help="How images of another size are fitted to the model's input: crop = shorter side to size then centre crop; stretch = straight resize."),
        click.option("--interpreter", metavar="NAME", help="Force an interpreter: ai-edge-litert, tflite-runtime or tf.lite (default: the first installed, or EDGERESNET_INTERPRETER)."),
        click.option("--threads", type=int, metavar="N", help="Interpreter threads (default: the interpreter's own choice)."),
        click.option("--json", "as_json", is_flag=True, help="Print the result as JSON."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def _classifier(model, kw):
    from edgeresnet.device.predict import Classifier, Overrides, parse_numbers

    overrides = Overrides(
        labels=kw["labels"], preset=kw["preset"], mean=parse_numbers(kw["mean"], "--mean"),
        std=parse_numbers(kw["std"], "--std"), resize=kw["resize"],
    )
    if kw["threads"] is not None and kw["threads"] <= 0:
        raise click.UsageError(f"--threads must be a positive number, got {kw['threads']}")
    clf = Classifier(model, overrides, backend=kw["interpreter"], num_threads=kw["threads"])
    for note in clf.setup.notes:
        click.echo(f"warning: {note}", err=True)
    return clf


@cli.command(context_settings=CONTEXT)
@click.argument("model", type=click.Path())
@click.argument("images", nargs=-1, required=True, type=click.Path())
@click.option("--top-k", "k", type=int, default=5, show_default=True, metavar="K", help="How many classes to show per image, best first.")
@_device_options
def predict(model, images, k, **kw):
    """Classify IMAGES with a .tflite MODEL: the top-K class names and scores (needs no TensorFlow).

    Input size, normalization and class names come from the model's metadata
    (every model edgeresnet writes carries them); the options override them
    for models from elsewhere. int8/uint8 inputs are quantized with the
    model's own scale and zero point.
    """
    from edgeresnet.device.predict import predict as run_predict

    clf = _classifier(model, kw)
    results = run_predict(clf, list(images), k)
    if kw["as_json"]:
        doc = {"model": model, "interpreter": clf.interpreter, "preprocessing": clf.setup.to_dict(),
               "predictions": [r.to_dict() for r in results]}
        click.echo(json.dumps(doc, indent=2))
        return
    width = max([len(name) for r in results for _, name, _ in r.top] + [5])
    for r in results:
        click.echo(r.image)
        for rank, (index, name, score) in enumerate(r.top, 1):
            click.echo(f"  {rank}. {name:<{width}}  {score:.4f}" + ("" if clf.setup.labels is None else f"  [{index}]"))


@cli.command("eval", context_settings=CONTEXT)
@click.argument("model", type=click.Path())
@click.option("--images", "images", type=click.Path(), required=True, metavar="DIR", help="Labelled images: one sub-folder per class (matched to the model's labels by name; without labels, sorted folder names are the output indices).")
@click.option("--samples", type=int, metavar="N", help="Evaluate at most N images, picked as convert --eval-samples N picks them (default: all).")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True, help="Seed for picking --samples images (the same as convert's --seed).")
@click.option("--against", type=click.Path(), metavar="OTHER.tflite", help="A second model run on the same images: its top-1/top-5 and the share of images where both agree.")
@click.option("--report", "report_path", type=click.Path(), metavar="report.json", help="The host's report for this model (found by sha256, or file name): shows the host's top-1 and the drop on this device.")
@click.option("--max-drop", type=FINITE, metavar="PTS", help="Exit 3 when top-1 here is more than PTS points below the host's top-1 in --report.")
@click.option("--predictions", "predictions_path", type=click.Path(), metavar="FILE.csv", help="Also write each image's label and predicted class (CSV), to compare two devices image by image. Must not exist yet.")
@_device_options
def eval_(model, images, samples, seed, against, report_path, max_drop, predictions_path, **kw):
    """Measure top-1/top-5 of a .tflite MODEL on a labelled image folder, on this device (needs no TensorFlow).

    With --report, compares with the number the host measured for the same
    file: drift verified on the device itself (--max-drop fails with exit 3).
    """
    from edgeresnet._util.progress import StageProgress
    from edgeresnet.device.predict import evaluate

    if samples is not None and samples <= 0:
        raise click.UsageError(f"--samples must be a positive number of images, got {samples}")
    if predictions_path is not None:
        _check_new_file(predictions_path, "--predictions")
    clf = _classifier(model, kw)
    other = None
    if against is not None:
        other = _classifier(against, kw)
    progress = StageProgress()
    try:
        result = evaluate(clf, images, samples=samples, seed=seed, against=other, report=report_path,
                          max_drop=max_drop, progress=progress)
    finally:
        progress.close()
    for w in result.warnings:
        click.echo(f"warning: {w}", err=True)
    if predictions_path is not None:
        from edgeresnet._util.files import atomic_write_text
        from edgeresnet.device.predict import predictions_csv

        atomic_write_text(predictions_path, predictions_csv(result))
    if kw["as_json"]:
        click.echo(json.dumps(result.to_dict(), indent=2))
    else:
        click.echo(format_eval(result))
    if result.over_budget:
        _fail(
            f"{model}: top-1 {result.top1:.2f} % here is {result.drop_pts:.2f} pts below the host's "
            f"{result.host.top1:.2f} %, over --max-drop {max_drop}", EXIT_FAILED,
        )


def _check_new_file(path: str, flag: str) -> None:
    """A file the command will create: refused when it exists or its folder does not."""
    p = os.path.abspath(path)
    if os.path.lexists(p):
        _fail(f"{path} already exists; {flag} writes a new file: remove it or choose another path")
    parent = os.path.dirname(p)
    if not os.path.isdir(parent):
        _fail(f"the folder {parent} of {flag} does not exist; create it first")
    if not os.access(parent, os.W_OK):
        _fail(f"cannot write in {parent} ({flag}); choose a writable folder")


def format_eval(result) -> str:
    d = result.to_dict()
    lines = [
        f"model       {result.model}  ({result.interpreter})",
        f"images      {result.images}: {result.count} images, {result.classes} classes (labels {result.labels_matched})",
        f"top-1       {result.top1:.2f} %",
        f"top-5       {result.top5:.2f} %",
    ]
    if result.against is not None:
        a = result.against
        lines.append(f"against     {a['model']}: top-1 {a['top1']:.2f} %, top-5 {a['top5']:.2f} %, agreement {a['agreement']:.2f} %")
    if result.host is not None:
        h = result.host
        verdict = "" if result.max_drop is None else ("  FAIL" if result.over_budget else "  ok") + f" (--max-drop {result.max_drop})"
        lines.append(f"host        {h.variant} in {h.report} (matched by {h.matched_by}): top-1 {h.top1:.2f} % on {h.count} images")
        lines.append(f"drop        {d['drop_pts']:.2f} pts (host minus this device){verdict}")
    return "\n".join(lines)


def _interrupted(exc) -> None:
    """Exit 130 on Ctrl-C, 143 on SIGTERM; partial output was removed on the way out."""
    code = getattr(exc, "exit_code", EXIT_SIGINT)
    name = getattr(exc, "args", ("",))[0] if code != EXIT_SIGINT else "Ctrl-C"
    _fail(f"interrupted ({name or 'Ctrl-C'}); partial output removed, any previous output left as it was", code)


_python_showwarning = warnings.showwarning


def _show_warning(message, category, filename, lineno, file=None, line=None):
    """edgeresnet's own warnings as one ``warning:`` line; anything else as Python shows it."""
    if issubclass(category, EdgeResNetWarning):
        click.echo(f"warning: {message}", err=True)
    else:
        _python_showwarning(message, category, filename, lineno, file, line)


def main(argv=None):
    """Console entry point: every user-facing failure is one line and a non-zero exit."""
    from edgeresnet._util.signals import handle_signals

    try:
        with handle_signals(), warnings.catch_warnings():  # SIGTERM (CI cancel, docker stop) is handled like Ctrl-C
            warnings.simplefilter("always", EdgeResNetWarning)
            # Pillow's raw decompression-bomb warning names no file; calibration warns with the file name instead.
            warnings.filterwarnings("ignore", message=r"Image size \(\d+ pixels\) exceeds limit")
            warnings.showwarning = _show_warning
            rv = cli.main(args=argv, prog_name="edgeresnet", standalone_mode=False)
    except click.exceptions.UsageError as exc:
        hint = f" (see: {exc.ctx.command_path} --help)" if exc.ctx is not None else ""
        _fail(" ".join(exc.format_message().split()) + hint, EXIT_USAGE)
    except click.exceptions.Abort as exc:  # click turns KeyboardInterrupt into Abort
        _interrupted(exc.__context__)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except ClusterError as exc:
        # TensorFlow's cluster threads never return from a failed join and would
        # hold the interpreter's shutdown forever: say it, then leave at once
        # (everything edgeresnet made was removed on the way here).
        click.echo(f"error: {exc}", err=True)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(exc.exit_code)
    except EdgeResNetError as exc:
        _fail(str(exc), exc.exit_code)
    except KeyboardInterrupt as exc:
        _interrupted(exc)
    except Exception as exc:  # a bug: keep it one line unless asked for the traceback
        if os.environ.get("EDGERESNET_DEBUG"):
            raise
        _fail(f"internal error: {type(exc).__name__}: {exc} (set EDGERESNET_DEBUG=1 for the traceback)", EXIT_INTERNAL)
    sys.exit(rv if isinstance(rv, int) else 0)


if __name__ == "__main__":  # pragma: no cover
    main()

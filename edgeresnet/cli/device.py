"""The commands that run on a device: `predict`, `eval`, `inspect` and `bench` (no TensorFlow needed).

Only `bench` with a built-in architecture as MODEL converts it here first, and
imports TensorFlow for that.
"""

from __future__ import annotations

import json
import os

import click

from edgeresnet.cli.options import CONTEXT, FINITE, _fail, device_options
from edgeresnet.errors import EXIT_FAILED, EXIT_INCOMPATIBLE

@click.command(context_settings=CONTEXT)
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


@click.command(context_settings=CONTEXT)
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


@click.command(context_settings=CONTEXT)
@click.argument("model", type=click.Path())
@click.argument("images", nargs=-1, required=True, type=click.Path())
@click.option("--top-k", "k", type=int, default=5, show_default=True, metavar="K", help="How many classes to show per image, best first.")
@device_options
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


@click.command("eval", context_settings=CONTEXT)
@click.argument("model", type=click.Path())
@click.option("--images", "images", type=click.Path(), required=True, metavar="DIR", help="Labelled images: one sub-folder per class (matched to the model's labels by name; without labels, sorted folder names are the output indices).")
@click.option("--samples", type=int, metavar="N", help="Evaluate at most N images, picked as convert --eval-samples N picks them (default: all).")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True, help="Seed for picking --samples images (the same as convert's --seed).")
@click.option("--against", type=click.Path(), metavar="OTHER.tflite", help="A second model run on the same images: its top-1/top-5 and the share of images where both agree.")
@click.option("--report", "report_path", type=click.Path(), metavar="report.json", help="The host's report for this model (found by sha256, or file name): shows the host's top-1 and the drop on this device.")
@click.option("--max-drop", type=FINITE, metavar="PTS", help="Exit 3 when top-1 here is more than PTS points below the host's top-1 in --report.")
@click.option("--predictions", "predictions_path", type=click.Path(), metavar="FILE.csv", help="Also write each image's label and predicted class (CSV), to compare two devices image by image. Must not exist yet.")
@device_options
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


def _margin_text(result) -> str:
    """`` ± M`` and what it means after the drop: exact on the host's images, a 95 % margin on others."""
    margin = result.drop_margin_pts
    if margin is None:
        return ""
    if result.same_images:
        return " (the host's images: exact)"
    return f" ± {margin:.2f}" + (" (95 %, other images)" if result.same_images is False else " (95 %)")


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
        lines.append(f"drop        {d['drop_pts']:.2f}{_margin_text(result)} pts (host minus this device){verdict}")
    return "\n".join(lines)



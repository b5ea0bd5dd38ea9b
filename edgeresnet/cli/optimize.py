"""The ``optimize`` command: the most accurate model within the device's budgets (docs/optimize.md)."""

from __future__ import annotations

import click

from edgeresnet.cli.host import worker_done
from edgeresnet.cli.options import CONTEXT, FINITE
from edgeresnet.defaults import DEFAULT_RESIZE, DEFAULT_SAMPLES, RESIZE_POLICIES
from edgeresnet.host.optimize.options import SEARCH_METHOD
from edgeresnet.host.training.cluster import STRATEGIES


def _run(opts):
    from edgeresnet._util.progress import StageProgress
    from edgeresnet.host.optimize.run import run_optimize

    progress = StageProgress()
    try:
        return run_optimize(opts, progress=progress, notify=lambda m: (progress.close(), click.echo(m, err=True)))
    finally:
        progress.close()


@click.command(context_settings=CONTEXT)
@click.argument("model")
@click.option("--target", default="cpu", show_default=True, metavar="NAME", help="Deployment target that runs int8: cpu or edgetpu.")
@click.option("--train", type=click.Path(), required=True, help="Labelled images (one sub-folder per class): the layer profile and the fine-tuning of every pruned candidate.")
@click.option("--eval", "eval_path", type=click.Path(), required=True, help="Images every candidate is scored on in the interpreter: labelled gives top-1, otherwise agreement with the float model.")
@click.option("--max-size", type=int, metavar="BYTES", help="Budget: bytes of the .tflite file.")
@click.option("--max-download", type=int, metavar="BYTES", help="Budget: zlib-compressed (level 9) bytes of the .tflite file.")
@click.option("--max-latency", type=FINITE, metavar="MS", help="Budget: median ms per image in the interpreter on this machine (with --threads).")
@click.option("--max-memory", type=int, metavar="BYTES", help="Budget: peak memory the interpreter needs to load, allocate and run the model, measured in a fresh process.")
@click.option("--max-drop", type=FINITE, metavar="PTS", help="Budget: top-1 points lost against the float model (unlabelled --eval: disagreement in %%).")
@click.option("--threads", type=int, metavar="N", help="Interpreter threads for latency and memory (default: the interpreter's choice).")
@click.option("--epochs", type=int, default=3, show_default=True, help="Fine-tuning epochs of every pruned candidate.")
@click.option("--batch-size", type=int, default=64, show_default=True, help="Fine-tuning batch size.")
@click.option("--learning-rate", type=FINITE, help="Fine-tuning learning rate (Adam; default 3e-4).")
@click.option("--strategy", type=click.Choice(STRATEGIES), default="auto", show_default=True, help="tf.distribute strategy the fine-tunings run under (as convert's --strategy; in a TF_CONFIG cluster the chief searches and every worker fine-tunes each candidate with it).")
@click.option("--jobs", type=int, default=1, show_default=True, metavar="N", help="Build the fine-tuned candidates in N processes at once.")
@click.option("--int8-method", default=SEARCH_METHOD, show_default=True, metavar="M", help="int8 method of every candidate (as convert's --int8-method; auto scores up to three methods per candidate, a slower search).")
@click.option("--qat", is_flag=True, help="Every fine-tuned candidate then gets --epochs of quantization-aware training (sparsity- and cluster-preserving) and its int8 file from it, instead of post-training int8: slower, often more accurate.")
@click.option("--calib", type=click.Path(), help="Calibration images (default: --train).")
@click.option("--calib-samples", type=int, default=DEFAULT_SAMPLES, show_default=True, help="How many calibration images to use.")
@click.option("--eval-samples", type=int, help="Score on at most this many --eval images (default: all).")
@click.option("--bench-repeats", type=int, default=30, show_default=True, help="Timed runs per candidate when --max-latency is given.")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True, help="Seed for sampling images and fine-tuning.")
@click.option("--preset", default="raw", show_default=True, metavar="NAME", help="Preprocessing the model was trained with: raw, unit, symmetric, caffe, torch.")
@click.option("--resize", type=click.Choice(RESIZE_POLICIES), default=DEFAULT_RESIZE, show_default=True, help="How images of another size are fitted.")
@click.option("--out", type=click.Path(), default="edgeresnet-optimize", show_default=True, help="Output folder.")
@click.option("--overwrite", is_flag=True, help="Replace an existing output folder.")
@click.option("--trust-model-code", is_flag=True, help="Load MODEL even if it carries code (see convert).")
@click.option("--weights", type=click.Path(), metavar="FILE", help="With a built-in architecture as MODEL (e.g. resnet8): its trained weights, a .h5 loaded by layer name (required then).")
@click.option("--input-size", type=int, metavar="PX", help="With a built-in architecture as MODEL: its square input side (default: the architecture's); the input family tries smaller ones.")
def optimize(model, max_size, max_download, max_latency, max_memory, max_drop, eval_path, **kw):
    """Search pruned and weight-clustered int8 variants of MODEL for the most accurate one within every budget.

    MODEL is a .h5/.keras file, or a built-in architecture name with
    --weights: then, under a latency or memory budget the int8 model is over,
    also the architecture at a smaller input size (the same weights,
    fine-tuned). On --target cpu also the int8 model, and the most accurate fine-tuned
    candidate within budget, with their 1, 2 and 3 worst int8 layers in float (never on the Edge TPU, which has no float fallback; there every
    candidate's parameters are checked against its 8 MiB on-chip memory).
    Every pruned or clustered candidate is fine-tuned on --train; every one is
    converted, run on --eval in the interpreter and measured; a killed search started again resumes from the
    candidates it finished. Writes optimized.tflite, optimize.json, optimize.md,
    front.png (accuracy against the budgeted quantity, with the Pareto front).
    """
    from edgeresnet.host.optimize import Budgets, OptimizeOptions

    budgets = Budgets(size=max_size, download=max_download, latency=max_latency, memory=max_memory, drop=max_drop)
    opts = OptimizeOptions(model=model, eval=eval_path, budgets=budgets, **kw)
    result = _run(opts)
    if worker_done(result, opts.out):  # a non-chief worker of a fine-tuning cluster
        return
    c = result.chosen
    click.echo(f"chosen: {c['label']}: {result.summary['metric']} {c['score']:.2f} % "
               f"(float {result.summary['float_score']:.2f} %), "
               + ", ".join(f"{q} {v}" for q, v in c["measured"].items()))
    click.echo(f"why: {result.why}")
    click.echo(f"wrote {opts.out}/optimized.tflite, optimize.md, optimize.json, front.png "
               f"({result.summary['search_seconds']} s, {len(result.candidates)} candidates)")

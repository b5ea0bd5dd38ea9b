"""The ``edgeresnet`` command line. The only module that talks to the terminal.

Heavy modules (TensorFlow, the pipeline) are imported inside the commands so
``edgeresnet --help`` answers at once.
"""

from __future__ import annotations

import json
import os
import sys

import click

from .errors import EdgeResNetError

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


def _fail(message: str, code: int = 2):
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


@click.group(context_settings=CONTEXT)
@click.version_option(package_name="edgeresnet")
def cli():
    """Take Keras ResNets to verified TFLite models for CPU (XNNPACK), Coral Edge TPU and mobile GPU.

    Start with `edgeresnet convert --int8`: it converts the built-in reference
    ResNet and verifies it on built-in real data.
    """


@cli.command(context_settings=CONTEXT)
@click.argument("model", required=False)
@click.option("--int8", "int8", is_flag=True, help="Full-integer int8 (int8 weights and activations, calibrated). Never falls back to dynamic-range.")
@click.option("--target", "targets", multiple=True, metavar="NAME", help="Deployment target: cpu (XNNPACK), edgetpu (Coral) or gpu (mobile GPU, float16). Repeat for several. Default: cpu.")
@click.option("--precision", metavar="P", help="CPU precision instead of --int8: fp32, dynamic (int8 weights only), int8, or int16x8 (16-bit activations; XNNPACK does not accelerate it).")
@click.option("--io", "io_type", metavar="TYPE", help="Input/output type of full-integer models: int8 (cpu default), uint8 (edgetpu default) or float32.")
@click.option("--calib", type=click.Path(), help="Calibration data: an image folder (flat or one sub-folder per class), or a .npy/.npz array.")
@click.option("--calib-samples", type=int, default=300, show_default=True, help="How many calibration images to use (seeded, class-balanced when labelled).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for sampling images.")
@click.option("--preset", metavar="NAME", help="Preprocessing the model was trained with: raw (0..255), unit ([0,1]), symmetric ([-1,1]), caffe, torch. Default: raw (the reference model knows its own).")
@click.option("--resize", type=click.Choice(["crop", "stretch"]), default="crop", show_default=True, help="How images of another size are fitted: crop = shorter side to size then centre crop; stretch = straight resize.")
@click.option("--fold-preprocessing", is_flag=True, help="Put the preset inside the model so the deployed model takes raw 0..255 pixels.")
@click.option("--eval", "eval_path", type=click.Path(), help="Evaluation images: labelled (class sub-folders) gives top-1/top-5; otherwise agreement with the float model.")
@click.option("--eval-samples", type=int, help="Evaluate on at most this many images (default: all).")
@click.option("--max-drop", type=float, metavar="PTS", help="Fail (exit 3, report still written) when a model loses more than PTS top-1 points against the float model.")
@click.option("--out", default="edgeresnet-out", show_default=True, type=click.Path(), help="Output folder for the .tflite files, report.json and report.md.")
@click.option("--overwrite", is_flag=True, help="Replace an existing output folder.")
def convert(model, int8, targets, precision, io_type, calib, calib_samples, seed, preset, resize, fold_preprocessing, eval_path, eval_samples, max_drop, out, overwrite):
    """Convert MODEL (.h5, .keras or SavedModel folder) to TFLite, verify drift, write a report.

    Without MODEL, converts the built-in reference ResNet-8 (trained on
    scikit-learn's digits) and verifies it on built-in held-out digits.
    """
    from ._progress import StageProgress
    from .pipeline import ConvertOptions, run_convert
    from .report import variants_table

    opts = ConvertOptions(
        model=model,
        targets=tuple(targets) or ("cpu",),
        int8=int8,
        precision=precision,
        io_type=io_type,
        calib=calib,
        calib_samples=calib_samples,
        seed=seed,
        preset=preset,
        resize=resize,
        fold_preprocessing=fold_preprocessing,
        eval=eval_path,
        eval_samples=eval_samples,
        max_drop=max_drop,
        out=out,
        overwrite=overwrite,
    )
    progress = StageProgress()
    try:
        report = run_convert(opts, progress=progress, notify=lambda m: click.echo(m, err=True))
    finally:
        progress.close()
    _print_summary(report.to_dict(), out)


def _print_summary(data: dict, out: str) -> None:
    from .report import variants_table

    f = data["float"]
    if f.get("top1") is not None:
        click.echo(f"float model: top-1 {f['top1']:.2f} % on {f['count']} images")
    click.echo(variants_table(data))
    click.echo(f"wrote {out}/report.json and report.md ({data['seconds']} s)")


@cli.command(context_settings=CONTEXT)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def models(as_json):
    """List the built-in ResNet architectures with parameters, MACs and input size."""
    from .models import architecture_table

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
    """Answer "will this .tflite run on cpu / edgetpu / gpu?" for any TFLite model.

    Shows the op histogram, input/output types and quantization, tensor dtypes,
    size, a verdict per target, and which interpreters load it. Works without
    TensorFlow. Set EDGERESNET_TFLITE_RUNTIME_PYTHON to a Python that has
    tflite-runtime 2.14 to check that interpreter too.
    """
    from .inspect import format_inspect, inspect_tflite

    report = inspect_tflite(model, gpu=not no_gpu)
    click.echo(report.to_json() if as_json else format_inspect(report))
    if strict:
        bad = [name for name, v in report.verdicts.items() if name != "cpu" and v.ok is False]
        if bad:
            _fail(f"{model}: not compatible with {', '.join(bad)} (--strict)", 4)


@cli.command(context_settings=CONTEXT)
@click.argument("model", type=click.Path())
@click.option("--threads", type=int, metavar="N", help="Interpreter threads (default: the interpreter's own choice).")
@click.option("--warmup", type=int, default=10, show_default=True, metavar="N", help="Untimed runs before timing.")
@click.option("--repeats", type=int, default=50, show_default=True, metavar="N", help="Timed runs; median, p90, mean and min are reported.")
@click.option("--interpreter", metavar="NAME", help="Force an interpreter: ai-edge-litert, tflite-runtime or tf.lite (default: the first installed, or EDGERESNET_INTERPRETER).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON (with every timed run in times_ms).")
def bench(model, threads, warmup, repeats, interpreter, as_json):
    """Time a .tflite model's invoke() on this machine (random input; needs no TensorFlow).

    Works on a device that has only ai-edge-litert or tflite-runtime installed.
    """
    from ._progress import StageProgress
    from .bench import BenchConfig, benchmark, format_bench

    config = BenchConfig(warmup=warmup, repeats=repeats, threads=threads)
    progress = StageProgress()
    try:
        result = benchmark(model, config, backend=interpreter, progress=lambda d, t: progress("benchmark", d, t))
    finally:
        progress.close()
    click.echo(json.dumps(result.to_dict(include_times=True), indent=2) if as_json else format_bench(result))


def main(argv=None):
    """Console entry point: every user-facing failure is one line and a non-zero exit."""
    try:
        rv = cli.main(args=argv, prog_name="edgeresnet", standalone_mode=False)
    except click.exceptions.UsageError as exc:
        hint = f" (see: {exc.ctx.command_path} --help)" if exc.ctx is not None else ""
        _fail(" ".join(exc.format_message().split()) + hint, 2)
    except click.exceptions.Abort:
        _fail("aborted", 130)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except EdgeResNetError as exc:
        _fail(str(exc), exc.exit_code)
    except KeyboardInterrupt:
        _fail("interrupted; nothing was written", 130)
    except Exception as exc:  # a bug: keep it one line unless asked for the traceback
        if os.environ.get("EDGERESNET_DEBUG"):
            raise
        _fail(f"internal error: {type(exc).__name__}: {exc} (set EDGERESNET_DEBUG=1 for the traceback)", 1)
    sys.exit(rv if isinstance(rv, int) else 0)


if __name__ == "__main__":  # pragma: no cover
    main()

"""What the commands share: context settings, the finite-float type, the option groups, the one-line exit.

Choices and defaults come from the library's light modules, so ``edgeresnet --help``
shows what the library accepts without importing TensorFlow.
"""

from __future__ import annotations

import math
import sys

import click

from edgeresnet.errors import EXIT_USAGE
from edgeresnet.defaults import DEFAULT_RESIZE, DEFAULT_SAMPLES, PRUNE_SCHEDULES, RESIZE_POLICIES
from edgeresnet.host.device_check import DEVICES
from edgeresnet.host.quantize.registry import DEFAULT_METHOD
from edgeresnet.host.training.cluster import STRATEGIES

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


class _TargetOption(click.Option):
    """``--target``: its help lists the target registry, read only when help is shown."""

    def get_help_record(self, ctx):
        from edgeresnet.targets import targets

        names = "; ".join(f"{t.name} ({t.description})" for t in targets().values())
        self.help = f"Deployment target: {names}. Repeat for several."
        return super().get_help_record(ctx)


def _apply(f, options):
    for option in reversed(options):
        f = option(f)
    return f


def data_options(f):
    """Options shared by `convert` and `report`: targets, data, preprocessing, budget, output."""
    return _apply(f, [
        click.option("--target", "targets", multiple=True, metavar="NAME", cls=_TargetOption, help="Deployment target (one of the target registry). Repeat for several."),
        click.option("--io", "io_type", metavar="TYPE", help="Input/output type of full-integer models: uint8 (default on cpu and edgetpu: what MediaPipe and the TFLite Task Library take), int8 or float32."),
        click.option("--calib", type=click.Path(), help="Calibration data: an image folder (flat or one sub-folder per class), or a .npy/.npz array."),
        click.option("--calib-samples", type=int, default=DEFAULT_SAMPLES, show_default=True, help="How many calibration images to use (seeded, class-balanced when labelled)."),
        click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True, help="Seed for sampling images."),
        click.option("--preset", metavar="NAME", help="Preprocessing the model was trained with: raw (0..255), unit ([0,1]), symmetric ([-1,1]), caffe, torch. Default: raw (the reference model knows its own)."),
        click.option("--resize", type=click.Choice(RESIZE_POLICIES), default=DEFAULT_RESIZE, show_default=True, help="How images of another size are fitted: crop = shorter side to size then centre crop; stretch = straight resize."),
        click.option("--fold-preprocessing", is_flag=True, help="Put the preset inside the model so the deployed model takes raw 0..255 pixels."),
        click.option("--eval", "eval_path", type=click.Path(), help="Evaluation images: labelled (class sub-folders) gives top-1/top-5; otherwise agreement with the float model."),
        click.option("--eval-samples", type=int, help="Evaluate on at most this many images (default: all)."),
        click.option("--max-drop", type=FINITE, metavar="PTS", help="Fail (exit 3) when a model loses more than PTS top-1 points against the float model; the report then goes to OUT.failed and OUT is left as it was."),
        click.option("--int8-method", default=DEFAULT_METHOD, show_default=True, metavar="M", help="How int8 ranges and weights are chosen (accuracy recovery starts from the same method's model): auto (tries mse+gptq, mse+bias and mse+gptq+ranges as the model's size allows, keeps the one closest to float on held-out calibration images), minmax (the plain converter), mse (error-minimising activation ranges), mse+bias (plus bias correction of weight rounding), mse+gptq (plus GPTQ rounding), mse+gptq+ranges (plus activation ranges learned together; slower), mse+learned (mse ranges and block-wise learned rounding; slower)."),
        click.option("--recover/--no-recover", default=True, show_default=True, help="When an int8 model exceeds --max-drop, keep its worst layers in float one at a time until it fits (cpu; the Edge TPU cannot run float layers, so there the worst layers are only named)."),
        click.option("--strict", is_flag=True, help="Fail the run when a target check fails (a model that would not map fully to the Edge TPU, or a GPU-delegate blocker); by default such findings are reported."),
        click.option("--labels", type=click.Path(), metavar="FILE", help="Class names for the models' metadata, one per line in output order (default: the class folder names of --eval, --calib or --train)."),
        click.option("--out", type=click.Path(), help="Output folder (convert: edgeresnet-out; report: edgeresnet-report)."),
        click.option("--overwrite", is_flag=True, help="Replace an existing output folder."),
        click.option("--train", type=click.Path(), help="Labelled images (one sub-folder per class) to fine-tune on, read as a stream of batches: the pruned model (without it pruning is one-shot), --qat, and the new classifier of --classes."),
        click.option("--cluster", type=int, metavar="N", help="Cluster the weights of every Conv2D/Dense layer but the first to N values (weight sharing; zeros of --prune kept), fine-tuned on --train keeping the clusters: smaller downloads. With --qat the QAT copy keeps them too."),
        click.option("--qat", is_flag=True, help="Also emit int8 models made by quantization-aware fine-tuning on --train (tfmot; pruned models keep their zeros). Needs --train."),
        click.option("--weights", type=click.Path(), metavar="FILE.h5", help="With a built-in architecture as MODEL (e.g. resnet50): a local Keras .h5 to load by layer name (never downloaded)."),
        click.option("--classes", type=int, metavar="N", help="With a built-in architecture as MODEL: a new classifier for N classes, fine-tuned on --train (backbone from --weights frozen for the first epoch, then trained too)."),
        click.option("--input-size", type=int, metavar="PX", help="With a built-in architecture as MODEL: square input side in pixels (default: the architecture's, 224 or 32)."),
        click.option("--epochs", type=int, help="Fine-tuning epochs for pruning, --qat and --classes with --train (default 3)."),
        click.option("--batch-size", type=int, help="Fine-tuning batch size (default: 64, lowered to 32, 16 or 8 where the model's training memory would exceed 3 GiB or the memory available; report.json's memory says which)."),
        click.option("--learning-rate", type=FINITE, help="Fine-tuning learning rate (Adam; default 3e-4 for pruning, 1e-4 for --qat (3e-4 for --qat after --prune), 1e-3 for the new classifier of --classes)."),
        click.option("--strategy", type=click.Choice(STRATEGIES), help="tf.distribute strategy for fine-tuning: auto (default: multiworker when TF_CONFIG lists a cluster, mirrored with several GPUs, else one device), one, mirrored or multiworker. In a cluster only the chief writes --out."),
        click.option("--prune-schedule", type=click.Choice(PRUNE_SCHEDULES), help="Sparsity schedule while fine-tuning (default polynomial decay)."),
        click.option("--prune-structure", metavar="S", help="unstructured (default), block (1x4 blocks; tfmot supports it on Dense layers only) or 2:4 (two of every four weights; sparsity must be 0.5)."),
        click.option("--prune-policy", metavar="P", help="xnnpack: prune only what XNNPACK's sparse kernels run (1x1 convolutions, at least 2/3 sparse); refused for models where it would not make them faster."),
        click.option("--stem-sparsity", type=FINITE, help="Sparsity of the first convolution (default 0: left dense, it is small and sensitive)."),
        click.option("--classifier-sparsity", type=FINITE, help="Sparsity of the last Dense layer (default 0: left dense)."),
        click.option("--device-check", type=click.Choice(DEVICES), help="Also evaluate every emitted model inside an emulated Raspberry Pi (arm64, tflite-runtime 2.14; build it once with scripts/build_pi_env.sh) on the --eval images: the report adds the Pi's top-1 and marks models that would not load there."),
        click.option("--trust-model-code", is_flag=True, help="Load MODEL even if it carries code (Lambda layers, custom classes, file or process ops in a SavedModel); that code then runs on this machine as you, so use it only for models you or someone you trust made."),
    ])


def device_options(f):
    """Options shared by `predict` and `eval`: overrides for models whose metadata is missing or wrong."""
    return _apply(f, [
        click.option("--labels", type=click.Path(), metavar="FILE", help="Class names, one per line in output order (default: the labels in the model's metadata)."),
        click.option("--preset", metavar="NAME", help="Normalize with a bundled preset (raw, unit, symmetric, caffe, torch) instead of the model's metadata."),
        click.option("--mean", metavar="M[,M,M]", help="Normalization mean on 0..255 pixels, (pixel - mean) / std; one value or one per channel (default: the model's metadata)."),
        click.option("--std", metavar="S[,S,S]", help="Normalization std on 0..255 pixels; one value or one per channel (default: the model's metadata)."),
        click.option("--resize", type=click.Choice(RESIZE_POLICIES), default=DEFAULT_RESIZE, show_default=True, help="How images of another size are fitted to the model's input: crop = shorter side to size then centre crop; stretch = straight resize."),
        click.option("--interpreter", metavar="NAME", help="Force an interpreter: ai-edge-litert, tflite-runtime or tf.lite (default: the first installed, or EDGERESNET_INTERPRETER)."),
        click.option("--threads", type=int, metavar="N", help="Interpreter threads (default: the interpreter's own choice)."),
        click.option("--json", "as_json", is_flag=True, help="Print the result as JSON."),
    ])

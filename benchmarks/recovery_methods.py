"""Accuracy recovery from each int8 method: what keeping the worst layers in float gives.

Measured, not asserted. Recovery starts from the model the chosen
``--int8-method`` produced and returns its worst layers to float one at a time
(``edgeresnet.host.quantize.recovery``). With a budget of 0 points it runs every
step it is allowed (``--steps``), so the two starting points are compared over
the same number of float layers:

- the outlier model of the tests (``tests/conftest.py``: one channel scaled
  1000x, float function unchanged), on the synthetic colour images, labelled;
- the real MLPerf Tiny ResNet-8, 300 CIFAR-10 training images for calibration,
  the 1,000 test images for evaluation. Its int8 models already meet a top-1
  budget, so the budget is disagreement with the float model (unlabelled).

    python benchmarks/recovery_methods.py [--steps 3] [--methods minmax mse+bias]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from _data import data_root  # noqa: E402


def _row(name, method, result, seconds, labelled) -> str:
    def acc(d):
        return f"{d.top1:6.1f}" if labelled else "     -"

    return (
        f"{name:9s} {method:9s} {result.initial.agreement:7.1f} {acc(result.initial)} "
        f"{result.final.agreement:7.1f} {acc(result.final)} {len(result.float_layers):6d} {len(result.steps) - 1:5d} "
        f"{seconds:6.1f}"
    )


def _cases(steps: int):
    """(name, make_converter, calibration, eval images, float outputs, labels or None) per model."""
    import numpy as np

    from edgeresnet.device.images import load_images

    from edgeresnet.device.presets import get_preset
    from edgeresnet.host.models.loading import LoadedModel, load_model
    from tests.conftest import build_outlier_model, write_image_folder

    tmp = Path(tempfile.mkdtemp(prefix="recovery-bench-"))
    calib_dir = write_image_folder(tmp / "calib", classes=4, per_class=30, seed=2)  # as tests/conftest.py tiny_data
    eval_dir = write_image_folder(tmp / "eval", classes=4, per_class=15, seed=3)
    outlier = LoadedModel.from_keras(build_outlier_model(calib_dir), "outlier")
    unit = get_preset("unit")
    ev = load_images(eval_dir, (16, 16, 3))
    x = unit.apply(ev.images)
    yield ("outlier", outlier.tflite_converter, unit.apply(load_images(calib_dir, (16, 16, 3)).images), x,
           outlier.predict(x), ev.labels)

    root = data_root()
    resnet8 = load_model(root / "mlperf-tiny-resnet8" / "pretrainedResnet.h5")
    calib = load_images(root / "cifar10" / "train", (32, 32, 3), samples=300, seed=0).images.astype(np.float32)
    test = load_images(root / "cifar10" / "test", (32, 32, 3)).images.astype(np.float32)
    yield "resnet8", resnet8.tflite_converter, calib, test, resnet8.predict(test), None


def main() -> None:
    from edgeresnet.host.quantize import method_names
    from edgeresnet.host.quantize.recovery import RecoveryConfig, recover_int8

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=3, help="layers returned to float at most (one per step)")
    ap.add_argument("--methods", nargs="+", default=["minmax", "mse+bias"], choices=method_names())
    args = ap.parse_args()
    header = (f"{'model':9s} {'method':9s} {'agree0 %':>7s} {'top1-0':>6s} {'agree %':>7s} {'top-1':>6s} "
              f"{'float':>6s} {'steps':>5s} {'sec':>6s}")
    print(f"budget 0 points, at most {args.steps} steps; agree0/top1-0: the method's int8 model, "
          "agree/top-1: after recovery\n")
    print(header)
    print("-" * len(header))
    for name, make_converter, calib, x, ref, labels in _cases(args.steps):
        for method in args.methods:
            start = time.perf_counter()
            result = recover_int8(make_converter, calib, x, ref, labels,
                                  RecoveryConfig(max_drop=0, max_steps=args.steps), method=method)
            print(_row(name, method, result, time.perf_counter() - start, labels is not None), flush=True)


if __name__ == "__main__":
    from _results import run

    sys.exit(run(main))

"""Int8 conversion time: edgeresnet (default ``auto``, which on ResNet-50 runs ``mse+bias`` alone) vs a bare TFLiteConverter, same run.

Measured, not asserted. Both paths get the same Keras model and the same
preprocessed calibration array, in one process, alternating, so machine load
hits both alike. The pipeline path is what `edgeresnet convert --int8` runs for
a model: LoadedModel.tflite_converter() + edgeresnet.host.converter.convert().
ResNet-50 (224x224, random weights, CIFAR-10 images resized) for each
``--samples`` count, then the real MLPerf Tiny ResNet-8 (32x32) with its own
images unless ``--no-resnet8``.

    python benchmarks/convert_overhead.py [--images DIR] [--samples 100 300 1000] [--rounds 1]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from _data import data_root  # noqa: E402


def _ours(loaded, calib) -> float:
    from edgeresnet.host.converter import ConversionSpec, convert

    start = time.perf_counter()
    convert(loaded.tflite_converter, ConversionSpec("int8", "int8"), calib)
    return time.perf_counter() - start


def _row(name: str, n: int, bare: list, ours: list) -> str:
    b, o = statistics.median(bare), statistics.median(ours)
    load = "/".join(f"{v:.1f}" for v in os.getloadavg())
    return (f"{name:<10} {n:>7d} {', '.join(f'{t:.1f}' for t in bare):>14} {', '.join(f'{t:.1f}' for t in ours):>14} "
            f"{o / b:>6.2f}  {load}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", default=str(data_root() / "cifar10" / "train"),
                    help="calibration image folder (resized to 224x224 for ResNet-50)")
    ap.add_argument("--samples", type=int, nargs="+", default=[100, 300, 1000], help="calibration image counts")
    ap.add_argument("--rounds", type=int, default=1, help="alternating rounds per row (the median is compared)")
    ap.add_argument("--no-resnet8", action="store_true", help="skip the real ResNet-8 row")
    args = ap.parse_args()

    from _bare import bare_int8_seconds

    from edgeresnet._util import tf as _tf
    from edgeresnet.device.images import load_images
    from edgeresnet.device.presets import get_preset
    from edgeresnet.host.models import build_model
    from edgeresnet.host.models.loading import LoadedModel, load_model

    tf = _tf.tf()
    model = build_model("resnet50")
    loaded = LoadedModel.from_keras(model, "resnet50")
    print(f"TF {tf.__version__}, {os.cpu_count()} cores, load average at start {os.getloadavg()[0]:.1f}; "
          f"calibration images from {args.images} (loading not counted)")
    print(f"{'model':<10} {'samples':>7} {'bare s':>14} {'edgeresnet s':>14} {'ratio':>6}  load 1/5/15 min after the row")
    for n in args.samples:
        calib = get_preset("caffe").apply(load_images(args.images, (224, 224, 3), samples=n, seed=0).images)
        bare, ours = [], []
        for _ in range(args.rounds):
            bare.append(bare_int8_seconds(tf, model, calib))
            ours.append(_ours(loaded, calib))
        print(_row("ResNet-50", len(calib), bare, ours), flush=True)
    if not args.no_resnet8:
        r8 = load_model(data_root() / "mlperf-tiny-resnet8" / "pretrainedResnet.h5")
        calib = load_images(args.images, (32, 32, 3), samples=300, seed=0).images.astype("float32")
        bare, ours = [], []
        for _ in range(args.rounds):
            bare.append(bare_int8_seconds(tf, r8.model, calib))
            ours.append(_ours(r8, calib))
        print(_row("ResNet-8", len(calib), bare, ours), flush=True)
    print(f"load average at end {'/'.join(f'{v:.1f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    from _results import run

    sys.exit(run(main))

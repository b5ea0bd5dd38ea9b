"""Conversion time of ResNet-50 (224x224, 300 calibration images): edgeresnet vs a bare TFLiteConverter.

Measured, not asserted. Both paths get the same Keras model and the same
preprocessed calibration array, in one process, alternating, so machine load
hits both alike. The pipeline path is what `edgeresnet convert --int8` runs for
a model: LoadedModel.tflite_converter() + edgeresnet.convert.convert().

    python benchmarks/convert_overhead.py [--images DIR] [--samples 300] [--rounds 2]
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_images = Path(os.environ.get("EDGERESNET_TEST_DATA", REPO.parent / "shared" / "data")) / "cifar10" / "train"
    ap.add_argument("--images", default=str(default_images), help="calibration image folder (resized to 224x224)")
    ap.add_argument("--samples", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()

    from _bare import bare_int8_seconds

    from edgeresnet import _tf
    from edgeresnet.calibration import get_preset, load_images
    from edgeresnet.convert import ConversionSpec, convert
    from edgeresnet.models import build_model
    from edgeresnet.models.loading import LoadedModel

    tf = _tf.tf()
    t0 = time.perf_counter()
    images = load_images(args.images, (224, 224, 3), samples=args.samples, seed=0)
    calib = get_preset("caffe").apply(images.images)
    load_s = time.perf_counter() - t0
    model = build_model("resnet50")
    loaded = LoadedModel.from_keras(model, "resnet50")

    def pipeline() -> float:
        start = time.perf_counter()
        convert(loaded.tflite_converter, ConversionSpec("int8", "int8"), calib)
        return time.perf_counter() - start

    times = {"bare TFLiteConverter": [], "edgeresnet convert()": []}
    for _ in range(args.rounds):
        times["bare TFLiteConverter"].append(bare_int8_seconds(tf, model, calib))
        times["edgeresnet convert()"].append(pipeline())
    base = statistics.median(times["bare TFLiteConverter"])
    print(f"ResNet-50 224x224x3, {len(calib)} calibration images from {args.images} "
          f"(loaded and resized in {load_s:.1f} s, not counted), TF {tf.__version__}, {os.cpu_count()} cores")
    print(f"{'path':<24} {'runs (s)':<24} {'median s':>9} {'ratio':>6}")
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"{name:<24} {', '.join(f'{t:.1f}' for t in ts):<24} {med:>9.1f} {med / base:>6.2f}")


if __name__ == "__main__":
    main()

"""Batched evaluation: a converted model run N images per invoke vs one at a time, same process.

Measured, not asserted. The real MLPerf Tiny ResNet-8 (``--images`` CIFAR-10
test images) and ResNet-50 (224x224, random weights, ``--resnet50-images``
CIFAR-10 test images resized), each converted to int8 (default method, uint8
io: what convert emits for the cpu target) and fp32. Every batch size runs in
each round, alternating, so machine load hits them alike; the median seconds
are compared with batch 1, and the outputs must equal batch 1's bit for bit.

    python benchmarks/eval_batch.py [--batches 1 8 16 32] [--rounds 3] [--images 1000] [--resnet50-images 192]
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

from _data import data_root  # noqa: E402


def _models(name: str, n_images: int):
    """(label, loaded model, calibration, evaluation inputs) of one benchmark model."""
    import numpy as np

    from edgeresnet.device.images import load_images

    from edgeresnet.device.presets import get_preset
    from edgeresnet.host.models import build_model
    from edgeresnet.host.models.loading import LoadedModel, load_model

    root = data_root() / "cifar10"
    if name == "resnet8":
        loaded = load_model(data_root() / "mlperf-tiny-resnet8" / "pretrainedResnet.h5")
        prep, shape = (lambda a: a.astype(np.float32)), (32, 32, 3)
    else:
        loaded = LoadedModel.from_keras(build_model("resnet50"), "resnet50")
        prep, shape = (lambda a: get_preset("caffe").apply(a).astype(np.float32)), (224, 224, 3)
    calib = prep(load_images(root / "train", shape, samples=100, seed=0).images)
    x = prep(load_images(root / "test", shape, samples=n_images, seed=0).images)
    return loaded, calib, x


def _table(name, loaded, calib, x, batches, rounds) -> None:
    import numpy as np

    from edgeresnet.host.converter import ConversionSpec, convert
    from edgeresnet.device.runtime import TFLiteModel

    for spec in (ConversionSpec("int8", "uint8"), ConversionSpec("fp32", "float32")):
        model = convert(loaded.tflite_converter, spec, calib if spec.needs_calibration else None).model
        seconds = {b: [] for b in batches}
        outputs = {}
        for _ in range(rounds):
            for b in batches:
                tfl = TFLiteModel(model)  # a fresh interpreter each time: the resize is part of the cost
                start = time.perf_counter()
                outputs[b] = tfl.predict(x, batch=b)
                seconds[b].append(time.perf_counter() - start)
        base = statistics.median(seconds[batches[0]])
        for b in batches:
            t = statistics.median(seconds[b])
            same = np.array_equal(outputs[b], outputs[batches[0]])
            print(f"{name:<9} {spec.precision:<5} {len(x):>6d} {b:>5d} {t:>8.2f} {len(x) / t:>8.1f} {base / t:>7.2f}x "
                  f"{'yes' if same else 'NO':>9}  {os.getloadavg()[0]:4.1f}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8, 16, 32], help="images per invoke (first: the baseline)")
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds (the median is compared)")
    ap.add_argument("--images", type=int, default=1000, help="ResNet-8 evaluation images")
    ap.add_argument("--resnet50-images", type=int, default=192, help="ResNet-50 evaluation images (0: skip)")
    args = ap.parse_args()

    from edgeresnet.device.runtime import EVAL_BATCH

    print(f"{os.cpu_count()} cores, load average at start {os.getloadavg()[0]:.1f}; convert/report evaluate "
          f"{EVAL_BATCH} images per invoke")
    print(f"{'model':<9} {'prec':<5} {'images':>6} {'batch':>5} {'median s':>8} {'img/s':>8} {'speed-up':>8} "
          f"{'same out':>9}  load")
    _table("ResNet-8", *_models("resnet8", args.images), args.batches, args.rounds)
    if args.resnet50_images:
        _table("ResNet-50", *_models("resnet50", args.resnet50_images), args.batches, args.rounds)
    print(f"load average at end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    from _results import run

    sys.exit(run(main))

"""Does measuring the activation histograms on fewer calibration images cost accuracy?

Measured, not asserted. The int8 conversion takes its activation ranges from histograms of
``QuantOptConfig.stats_samples`` evenly spread calibration images (128 by default), not from all
of them, which is what makes it fast. For each seed this calibrates ``--model`` on ``--samples``
class-balanced CIFAR-10 training images with ``--method``, once with 128 histogram images and
once with all of them, and measures both int8 models against the float model on every image the
calibration did not see: the 1,000 CIFAR-10 test images and the training images the seed did not
draw (4,700 at 300 samples). Drops carry their 95 % margin (``verify.drop_margin``): with a few
thousand images a difference of a tenth of a point is within it.

``--model`` defaults to the MLPerf Tiny ResNet-8 (raw 0..255 inputs); any Keras CIFAR-10 model
file works, with ``--input-scale`` the factor its inputs take (``0.00392156862745098`` for x/255).

    python benchmarks/stats_samples.py [--model FILE.h5] [--input-scale 1] [--seeds 0 1 2]
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from _data import data_root  # noqa: E402

SUBSETS = (128, None)  # histogram images: the default, and all of them
T95 = (12.71, 4.30, 3.18, 2.78, 2.57, 2.45, 2.36, 2.31, 2.26)  # Student's t, 97.5 % quantile, 1..9 degrees of freedom


def table(model_path: Path, scale: float, method: str, seeds, samples: int) -> None:
    import numpy as np

    from edgeresnet.device import verify
    from edgeresnet.device.images import load_images
    from edgeresnet.device.runtime import TFLiteModel
    from edgeresnet.host.models.loading import load_model
    from edgeresnet.host.quantize import Int8Session, QuantOptConfig

    root = data_root() / "cifar10"
    loaded = load_model(model_path)
    test = load_images(root / "test", (32, 32, 3))
    print(f"{model_path.name}, {method}, {samples} calibration images per seed; unseen images: the test images "
          f"and the training images the seed did not draw\n")
    header = f"{'seed':>4s} {'histogram images':>16s} {'images':>6s} {'agree %':>8s} {'drop pts':>14s} {'sqnr dB':>8s}"
    print(header)
    print("-" * len(header))
    rows = {}
    for seed in seeds:
        calib = load_images(root / "train", (32, 32, 3), samples=samples, seed=seed)
        held = load_images(root / "train", (32, 32, 3), exclude=calib.paths)
        x = np.concatenate([test.images, held.images]).astype(np.float32) * scale
        labels = np.concatenate([test.labels, held.labels])
        ref = loaded.predict(x)
        for subset in SUBSETS:
            session = Int8Session(loaded.tflite_converter, calib.images.astype(np.float32) * scale, "int8", method,
                                  config=QuantOptConfig(seed=seed, stats_samples=subset))
            d = verify.drift(ref, TFLiteModel(session.model).predict(x), labels)
            rows.setdefault(subset, []).append(d)
            name = "all" if subset is None else str(subset)
            print(f"{seed:4d} {name:>16s} {d.count:6d} {d.agreement:8.2f} {d.drop_pts:6.2f} ± {d.drop_margin_pts:4.2f} "
                  f"{d.sqnr_db:8.2f}", flush=True)
    print("\nmean over seeds:")
    for subset, ds in rows.items():
        name = "all" if subset is None else str(subset)
        a, drop, q = (statistics.mean(getattr(d, k) for d in ds) for k in ("agreement", "drop_pts", "sqnr_db"))
        print(f"histogram images {name:>4s}: agree {a:5.2f} %  drop {drop:5.2f} pts  sqnr {q:5.2f} dB")
    if len(seeds) > 1:
        few, every = rows[SUBSETS[0]], rows[SUBSETS[1]]
        for key in ("drop_pts", "agreement"):
            diffs = [getattr(a, key) - getattr(b, key) for a, b in zip(few, every)]
            half = T95[min(len(diffs) - 1, len(T95)) - 1] * statistics.stdev(diffs) / len(diffs) ** 0.5
            print(f"{SUBSETS[0]} minus all, {key}: {statistics.mean(diffs):+.2f} ± {half:.2f} "
                  f"(95 % interval over the {len(diffs)} seeds)")


def main() -> None:
    from edgeresnet.host.quantize import method_names

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=data_root() / "mlperf-tiny-resnet8" / "pretrainedResnet.h5")
    ap.add_argument("--input-scale", type=float, default=1.0, help="the factor the model's 0..255 inputs take")
    ap.add_argument("--method", default="mse+bias", choices=method_names())
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--samples", type=int, default=300)
    args = ap.parse_args()
    table(args.model, args.input_scale, args.method, args.seeds, args.samples)


if __name__ == "__main__":
    from _results import run

    sys.exit(run(main))

"""Pruning sweep on the real pretrained ResNet-8: size, compressed size, top-1, fine-tuning time.

Measured, not asserted. Loads the MLPerf Tiny ResNet-8 and the CIFAR-10 JPEGs
from the shared data folder (``EDGERESNET_TEST_DATA``, default ../shared/data),
prunes it with :func:`edgeresnet.host.training.prune.prune_model` at each sparsity
(fine-tuning on cifar10/train unless ``--one-shot``), converts every variant to
full-integer int8 (int8 input/output, 200 calibration images from
cifar10/train) and prints, per sparsity: the .tflite size, its zlib size (and
the ratio to the unpruned int8 model), the share of zero int8 conv/fc weights
counted in the file, top-1 on cifar10/test for the float Keras model and for
the int8 .tflite, and the fine-tuning time. Sparsity 0 is the unpruned model.

    python benchmarks/prune_sweep.py [--sparsity 0.5 0.75 0.9] [--epochs 3] [--lr 3e-4]
                                     [--one-shot] [--keep DIR]

Fine-tuning time depends on the machine's load (the load average is printed).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _data import data_root  # noqa: E402

from edgeresnet._util import tf as _tf
from edgeresnet.device.images import load_images  # noqa: E402
from edgeresnet.host.converter import ConversionSpec, convert  # noqa: E402
from edgeresnet.host.models import load_model  # noqa: E402
from edgeresnet.host.training.prune import DEFAULT_EPOCHS, DEFAULT_LEARNING_RATE, PruneConfig, prune_model  # noqa: E402
from edgeresnet.device.runtime import TFLiteModel  # noqa: E402
from edgeresnet.device.sparsity import size_summary, tflite_weight_sparsity  # noqa: E402

CALIBRATION_IMAGES = 200


def _data_dir() -> Path:
    return data_root().resolve()


def _top1(outputs: np.ndarray, labels: np.ndarray) -> float:
    return 100.0 * float(np.mean(np.argmax(outputs, axis=-1) == labels))


def resnet8_and_cifar10():
    """(the real ResNet-8, cifar10/train, cifar10/test) from the shared data, or None (said on stderr)."""
    data = _data_dir()
    h5 = data / "mlperf-tiny-resnet8" / "pretrainedResnet.h5"
    if not h5.exists():
        print(f"no shared data at {data}; set EDGERESNET_TEST_DATA", file=sys.stderr)
        return None
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())} on {os.cpu_count()} cores")
    loaded = load_model(h5)
    train = load_images(data / "cifar10" / "train", loaded.input_shape)
    test = load_images(data / "cifar10" / "test", loaded.input_shape)
    return loaded, train, test


def print_table(rows: list) -> None:
    """Rows of equal-keyed dicts as an aligned text table (also used by benchmarks/qat.py)."""
    cols = list(rows[0])
    widths = [max(len(c), *(len(str(r[c])) for r in rows)) for c in cols]
    print(" | ".join(c.rjust(w) for c, w in zip(cols, widths)))
    print("-|-".join("-" * w for w in widths))
    for r in rows:
        print(" | ".join(str(r[c]).rjust(w) for c, w in zip(cols, widths)))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sparsity", type=float, nargs="+", default=[0.5, 0.75, 0.9])
    ap.add_argument("--epochs", type=int, default=DEFAULT_EPOCHS)
    ap.add_argument("--lr", type=float, default=DEFAULT_LEARNING_RATE)
    ap.add_argument("--schedule", default="polynomial", choices=["polynomial", "constant"])
    ap.add_argument("--one-shot", action="store_true", help="no fine-tuning (magnitude pruning only)")
    ap.add_argument("--keep", type=Path, help="folder to save the .tflite files in")
    args = ap.parse_args(argv)

    real = resnet8_and_cifar10()
    if real is None:
        return 2
    loaded, train, test = real
    tf = _tf.tf()
    x_train, x_test = train.images.astype(np.float32), test.images.astype(np.float32)  # raw 0..255, as trained
    calib = x_train[np.random.default_rng(0).permutation(len(x_train))[:CALIBRATION_IMAGES]]
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)

    rows = []
    base_zlib = None
    for s in [0.0] + [s for s in args.sparsity if s > 0]:
        if s == 0:
            model, seconds, keras_sparsity = loaded.model, 0.0, None
        else:
            cfg = PruneConfig(s, epochs=args.epochs, learning_rate=args.lr, schedule=args.schedule)
            result = prune_model(loaded, cfg, train=None if args.one_shot else (x_train, train.labels))
            model, seconds, keras_sparsity = result.model, result.train_seconds, result.keras_sparsity
        float_top1 = _top1(model.predict(x_test, batch_size=256, verbose=0), test.labels)
        tflite = convert(
            lambda m=model: tf.lite.TFLiteConverter.from_keras_model(m), ConversionSpec("int8", "int8"), calib
        ).model
        if args.keep:
            (args.keep / f"resnet8_pruned{int(round(s * 100))}_int8.tflite").write_bytes(tflite)
        int8_top1 = _top1(TFLiteModel(tflite).predict(x_test), test.labels)
        size = size_summary(tflite)
        if base_zlib is None:
            base_zlib = size["zlib_bytes"]
        rows.append(
            {
                "sparsity": s,
                "keras zeros": "-" if keras_sparsity is None else f"{keras_sparsity:.3f}",
                "int8 zeros": f"{tflite_weight_sparsity(tflite)['fraction']:.3f}",
                "int8 bytes": size["bytes"],
                "zlib bytes": size["zlib_bytes"],
                "zlib vs 0": f"{size['zlib_bytes'] / base_zlib:.3f}",
                "float top-1": f"{float_top1:.1f}",
                "int8 top-1": f"{int8_top1:.1f}",
                "fine-tune s": "-" if s == 0 else ("one-shot" if args.one_shot else f"{seconds:.0f}"),
            }
        )
        print(f"done sparsity {s} at {time.strftime('%H:%M:%S')}", file=sys.stderr, flush=True)

    mode = "one-shot" if args.one_shot else f"{args.epochs} epochs, lr {args.lr}, {args.schedule}"
    print(f"\nResNet-8 (MLPerf Tiny), cifar10/test {len(x_test)} images, pruning: {mode}\n")
    print_table(rows)
    print(f"\nload average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    from _results import run

    sys.exit(run(main))

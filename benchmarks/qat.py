"""Quantization-aware fine-tuning vs post-training int8 on the real ResNet-8 (dense and pruned).

Measured, not asserted. Loads the MLPerf Tiny ResNet-8 and the CIFAR-10 JPEGs
from the shared data folder (``EDGERESNET_TEST_DATA``, default ../shared/data),
fine-tunes on all of cifar10/train and evaluates top-1 on all of cifar10/test
(1,000 images: 0.1 point is one image).

Dense rows: the pretrained float model; PTQ int8 (edgeresnet's default
``mse+bias``, 300 calibration images from cifar10/train); the float model
fine-tuned with the QAT recipe but no fake quantization
(:func:`edgeresnet.host.training.qat.float_fine_tune`: same epochs, learning rate and
schedule, batch size, batch order and seed: the fair float reference for
QAT); and the QAT int8 model (:func:`edgeresnet.host.training.qat.quantize_aware_train` +
``convert_qat``).

Pruned rows, per sparsity: pruning with fine-tuning (edgeresnet's defaults),
then PTQ int8; pruning fine-tuned for as many epochs as pruning + QAT take
together, then PTQ int8 (so extra training alone is not credited to QAT); and
PQAT (the first pruned model, then sparsity-preserving QAT) int8. Each int8
row gives the share of zero int8 conv/fc weights counted in the .tflite.

Every row is run once per seed (the seed of fine-tuning, pruning and batch
order); the table gives each seed's top-1 and their mean, then the goals
(QAT >= PTQ, QAT within 0.1 pt of its float reference, PQAT >= PTQ + 2) computed on the means.

    python benchmarks/qat.py [--seeds 0 1] [--sparsity 0.75 0.9] [--epochs 3] [--lr LR] [--schedule cosine]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edgeresnet.host.converter import ConversionSpec, convert  # noqa: E402
from edgeresnet.host.models.loading import LoadedModel  # noqa: E402
from edgeresnet.host.training.prune import PruneConfig, prune_model  # noqa: E402
from edgeresnet.host.training.qat import (  # noqa: E402
    DEFAULT_EPOCHS, DEFAULT_LEARNING_RATE, DEFAULT_SCHEDULE, PRUNED_LEARNING_RATE, SCHEDULES, QATConfig, convert_qat, float_fine_tune,
    quantize_aware_train,
)
from edgeresnet.device.runtime import TFLiteModel  # noqa: E402
from edgeresnet.device.sparsity import tflite_weight_sparsity  # noqa: E402
from prune_sweep import _top1, print_table, resnet8_and_cifar10  # noqa: E402 - this folder is on sys.path when run

CALIBRATION_IMAGES = 300


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sparsity", type=float, nargs="*", default=[0.75, 0.9])
    ap.add_argument("--epochs", type=int, default=DEFAULT_EPOCHS)
    ap.add_argument("--lr", type=float, help=f"default {DEFAULT_LEARNING_RATE:g}, {PRUNED_LEARNING_RATE:g} for PQAT")
    ap.add_argument("--schedule", choices=SCHEDULES, default=DEFAULT_SCHEDULE)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    args = ap.parse_args(argv)

    real = resnet8_and_cifar10()
    if real is None:
        return 2
    loaded, train, test = real
    x, y = train.images.astype(np.float32), train.labels  # raw 0..255, as the model was trained
    xt, yt = test.images.astype(np.float32), test.labels
    calib = x[np.random.default_rng(0).permutation(len(x))[:CALIBRATION_IMAGES]]
    results = {}  # (model, sparsity) -> {"top1": [per seed], "zeros": [...], "seconds": [...]}

    def ptq(model):
        lm = LoadedModel.from_keras(model, "m")
        return convert(lm.tflite_converter, ConversionSpec("int8", "int8"), calib).model

    def qat_int8(model):
        return convert_qat(LoadedModel.from_keras(model, "q").tflite_converter, "int8", calib)

    def measure(what, sparsity, tflite=None, keras_model=None, seconds=None):
        out = TFLiteModel(tflite).predict(xt) if tflite is not None else keras_model.predict(xt, batch_size=256, verbose=0)
        r = results.setdefault((what, sparsity), {"top1": [], "zeros": [], "seconds": []})
        r["top1"].append(_top1(out, yt))
        r["zeros"].append(None if tflite is None else tflite_weight_sparsity(tflite)["fraction"] * 100)
        r["seconds"].append(seconds)
        print(f"{time.strftime('%H:%M:%S')} seed {seed} {what} ({sparsity:g}): top-1 {r['top1'][-1]:.1f}",
              file=sys.stderr, flush=True)

    for seed in args.seeds:
        qcfg = QATConfig(epochs=args.epochs, learning_rate=args.lr, schedule=args.schedule, seed=seed)
        measure("float (pretrained)", 0, keras_model=loaded.model)
        measure("PTQ int8", 0, tflite=ptq(loaded.model))
        t = time.perf_counter()
        tuned = float_fine_tune(loaded, qcfg, (x, y))
        measure("float fine-tuned (QAT recipe)", 0, keras_model=tuned, seconds=time.perf_counter() - t)
        q = quantize_aware_train(loaded, qcfg, (x, y))
        measure("QAT int8", 0, tflite=qat_int8(q.model), seconds=q.train_seconds)
        for s in args.sparsity:
            pruned = prune_model(loaded, PruneConfig(s, seed=seed), train=(x, y))
            measure("pruned, PTQ int8", s, tflite=ptq(pruned.model), seconds=pruned.train_seconds)
            longer = prune_model(loaded, PruneConfig(s, epochs=PruneConfig(s).epochs + args.epochs, seed=seed), train=(x, y))
            measure(f"pruned {longer.config.epochs} ep, PTQ int8", s, tflite=ptq(longer.model),
                    seconds=longer.train_seconds)
            pq = quantize_aware_train(pruned.model, qcfg, (x, y), preserve_sparsity=True)
            measure("pruned, PQAT int8", s, tflite=qat_int8(pq.model), seconds=pq.train_seconds)

    def mean(values):
        values = [v for v in values if v is not None]
        return sum(values) / len(values) if values else None

    rows = []
    for (what, sparsity), r in results.items():
        row = {"model": what, "sparsity": f"{sparsity:g}"}
        row.update({f"seed {seed}": f"{v:.1f}" for seed, v in zip(args.seeds, r["top1"])})
        zeros, seconds = mean(r["zeros"]), mean(r["seconds"])
        row.update({"mean top-1 %": f"{mean(r['top1']):.2f}", "int8 zeros %": "-" if zeros is None else f"{zeros:.1f}",
                    "train s": "-" if seconds is None else f"{seconds:.0f}"})
        rows.append(row)
    lr = f"{args.lr:g}" if args.lr else f"{DEFAULT_LEARNING_RATE:g} ({PRUNED_LEARNING_RATE:g} for PQAT)"
    print(f"\nResNet-8 (MLPerf Tiny): fine-tuned on cifar10/train ({len(x)} images), top-1 on cifar10/test "
          f"({len(xt)} images, 0.1 pt = 1 image); QAT: {args.epochs} epochs, Adam lr {lr} {args.schedule}, "
          f"batch 64, seeds {' '.join(map(str, args.seeds))}\n")
    print_table(rows)
    top1 = {key: mean(r["top1"]) for key, r in results.items()}
    gap = top1[("QAT int8", 0)] - top1[("float fine-tuned (QAT recipe)", 0)]
    per_seed = [q - f for q, f in zip(results[("QAT int8", 0)]["top1"], results[("float fine-tuned (QAT recipe)", 0)]["top1"])]
    print(f"\ndense: QAT - PTQ {top1[('QAT int8', 0)] - top1[('PTQ int8', 0)]:+.2f} pts (goal >= 0); "
          f"QAT - float fine-tuned {gap:+.2f} pts (goal >= -0.1; per seed {' '.join(f'{d:+.1f}' for d in per_seed)})")
    for s in args.sparsity:
        print(f"{s:g} sparsity: PQAT - PTQ pruned {top1[('pruned, PQAT int8', s)] - top1[('pruned, PTQ int8', s)]:+.2f} pts"
              + (" (goal >= +2)" if s == 0.75 else ""))
    print(f"\nload average after: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    from _results import run

    sys.exit(run(main))

"""Quantization-aware fine-tuning vs post-training int8 on the real ResNet-8 (dense and pruned).

Measured, not asserted. Loads the MLPerf Tiny ResNet-8 and the CIFAR-10 JPEGs
from the shared data folder (``EDGERESNET_TEST_DATA``, default ../shared/data),
fine-tunes on all of cifar10/train and evaluates top-1 on all of cifar10/test.

Dense rows: the pretrained float model; PTQ int8 (edgeresnet's default
``mse+bias``, 300 calibration images from cifar10/train); the float model
fine-tuned with the QAT recipe but no fake quantization (same epochs, learning
rate, batch size, seed: the fair float reference for QAT); and the QAT int8
model (:func:`edgeresnet.qat.quantize_aware_train` + ``convert_qat``).

Pruned rows, per sparsity: pruning with fine-tuning (edgeresnet's defaults),
then PTQ int8; pruning fine-tuned for as many epochs as pruning + QAT take
together, then PTQ int8 (so extra training alone is not credited to QAT); and
PQAT (the first pruned model, then sparsity-preserving QAT) int8. Each int8 row gives the share of zero int8
conv/fc weights counted in the .tflite.

    python benchmarks/qat.py [--sparsity 0.75 0.9] [--epochs 3] [--lr 1e-4]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edgeresnet import _tf  # noqa: E402
from edgeresnet.convert import ConversionSpec, convert  # noqa: E402
from edgeresnet.models.loading import LoadedModel  # noqa: E402
from edgeresnet.prune import PruneConfig, prune_model  # noqa: E402
from edgeresnet.qat import DEFAULT_EPOCHS, DEFAULT_LEARNING_RATE, QATConfig, convert_qat, quantize_aware_train  # noqa: E402
from edgeresnet.runtime import TFLiteModel  # noqa: E402
from edgeresnet.sparsity import tflite_weight_sparsity  # noqa: E402
from prune_sweep import _top1, print_table, resnet8_and_cifar10  # noqa: E402 - this folder is on sys.path when run

CALIBRATION_IMAGES = 300


def _float_fine_tune(model, config: QATConfig, x, y):
    """The QAT recipe without fake quantization: same optimizer, epochs, batch size and seed."""
    keras = _tf.tf_keras()
    keras.utils.set_random_seed(config.seed)
    work = keras.models.clone_model(model)
    work.set_weights(model.get_weights())
    work.compile(keras.optimizers.Adam(learning_rate=config.learning_rate),
                 keras.losses.SparseCategoricalCrossentropy(), metrics=["accuracy"])
    work.fit(x, y, batch_size=config.batch_size, epochs=config.epochs, shuffle=True, verbose=0)
    return work


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sparsity", type=float, nargs="*", default=[0.75, 0.9])
    ap.add_argument("--epochs", type=int, default=DEFAULT_EPOCHS)
    ap.add_argument("--lr", type=float, default=DEFAULT_LEARNING_RATE)
    args = ap.parse_args(argv)

    real = resnet8_and_cifar10()
    if real is None:
        return 2
    loaded, train, test = real
    x, y = train.images.astype(np.float32), train.labels  # raw 0..255, as the model was trained
    xt, yt = test.images.astype(np.float32), test.labels
    calib = x[np.random.default_rng(0).permutation(len(x))[:CALIBRATION_IMAGES]]
    qcfg = QATConfig(epochs=args.epochs, learning_rate=args.lr)

    def ptq(model):
        lm = LoadedModel.from_keras(model, "m")
        return convert(lm.tflite_converter, ConversionSpec("int8", "int8"), calib).model

    def row(what, sparsity, tflite=None, keras_model=None, seconds=None):
        out = TFLiteModel(tflite).predict(xt) if tflite is not None else keras_model.predict(xt, batch_size=256, verbose=0)
        zeros = f"{tflite_weight_sparsity(tflite)['fraction'] * 100:.1f}" if tflite is not None else "-"
        r = {"model": what, "sparsity": f"{sparsity:g}", "top-1 %": f"{_top1(out, yt):.1f}", "int8 zeros %": zeros,
             "train s": "-" if seconds is None else f"{seconds:.0f}"}
        print(f"{time.strftime('%H:%M:%S')} {r}", file=sys.stderr, flush=True)
        return r

    rows = [row("float (pretrained)", 0, keras_model=loaded.model), row("PTQ int8", 0, tflite=ptq(loaded.model))]
    t = time.perf_counter()
    tuned = _float_fine_tune(loaded.model, qcfg, x, y)
    rows.append(row(f"float fine-tuned {args.epochs} ep", 0, keras_model=tuned, seconds=time.perf_counter() - t))
    q = quantize_aware_train(loaded, qcfg, (x, y))
    rows.append(row("QAT int8", 0, tflite=convert_qat(LoadedModel.from_keras(q.model, "q").tflite_converter, "int8", calib),
                    seconds=q.train_seconds))
    for s in args.sparsity:
        pruned = prune_model(loaded, PruneConfig(s), train=(x, y))
        rows.append(row("pruned, PTQ int8", s, tflite=ptq(pruned.model), seconds=pruned.train_seconds))
        longer = prune_model(loaded, PruneConfig(s, epochs=PruneConfig(s).epochs + args.epochs), train=(x, y))
        rows.append(row(f"pruned {longer.config.epochs} ep, PTQ int8", s, tflite=ptq(longer.model),
                        seconds=longer.train_seconds))
        pq = quantize_aware_train(pruned.model, qcfg, (x, y), preserve_sparsity=True)
        pq_tflite = convert_qat(LoadedModel.from_keras(pq.model, "pq").tflite_converter, "int8", calib)
        rows.append(row("pruned, PQAT int8", s, tflite=pq_tflite, seconds=pq.train_seconds))

    print(f"\nResNet-8 (MLPerf Tiny): fine-tuned on cifar10/train ({len(x)} images), top-1 on cifar10/test "
          f"({len(xt)} images); QAT: {args.epochs} epochs, Adam lr {args.lr:g}, batch {qcfg.batch_size}\n")
    print_table(rows)
    print(f"\nload average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

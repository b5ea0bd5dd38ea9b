"""Where the int8 ResNet-8's disagreements with its float model come from.

Measured, not asserted. For each seed, ``--samples`` class-balanced CIFAR-10 training images
calibrate the MLPerf Tiny ResNet-8 with ``--method``; the agreement with the float model is
measured on the training images the seed did not draw (4,700 at 300 samples), for:

- ``int8``: the real int8 model in the interpreter;
- ``weights only``, ``activations only``, ``logits only``: the calibrated model run in
  TensorFlow (``edgeresnet.host.quantize.tfgraph``) with only the int8 weights, only the int8
  activations (every tensor on its int8 grid), or only the classifier's logits on their int8 grid;
- ``output only``: the float model's probabilities rounded to the int8 output's 1/256 steps.

``ties`` counts the images whose two top classes get the same value (the lower class index
then wins, whichever the float model preferred). The simulated rows show what each part of the
model costs on its own; they are not the interpreter's kernels, so they do not add up to the
``int8`` row exactly.

    python benchmarks/agreement_floor.py [--seeds 0 1 2] [--samples 300] [--method mse+gptq]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from _data import data_root, ties  # noqa: E402


def simulated(graph, x, keep, weights_float=None):
    """The model's outputs for ``x`` in TensorFlow: activations in ``keep`` on their int8 grid, the others float;
    ``weights_float`` {weight or bias tensor: float value} puts those back to float."""
    import numpy as np

    from edgeresnet.host.quantize.tfgraph import Ops

    class Only(Ops):
        def fake_quant(self, i, value):
            return super().fake_quant(i, value) if i in keep else value

    ops, inp, out = Only(graph), int(graph.sg.inputs[0]), int(graph.sg.outputs[0])
    tf = ops.tf
    weights = {k: tf.constant(v) for k, v in (weights_float or {}).items()}
    return np.concatenate([ops.run(graph.ops, {inp: tf.constant(x[a : a + 500])}, weights, True)[out].numpy()
                           for a in range(0, len(x), 500)])


def rows_for_seed(loaded, root, seed, samples, method):
    import numpy as np

    from edgeresnet.device import verify
    from edgeresnet.device.images import load_images
    from edgeresnet.device.runtime import TFLiteModel
    from edgeresnet.host.quantize import Int8Session, QuantOptConfig
    from edgeresnet.host.quantize import graph as qg

    calib = load_images(root / "cifar10" / "train", (32, 32, 3), samples=samples, seed=seed)
    x = load_images(root / "cifar10" / "train", (32, 32, 3), exclude=calib.paths).images.astype(np.float32)
    ref = loaded.predict(x)
    cfg = QuantOptConfig(seed=seed)
    session = Int8Session(loaded.tflite_converter, calib.images.astype(np.float32), "int8", method, config=cfg)
    graph = qg.Graph(session.calibrated())
    plain = qg.Graph(Int8Session(loaded.tflite_converter, calib.images.astype(np.float32), "int8", "mse",
                                 config=cfg).calibrated())
    float_weights = {t: plain.const(t) for layer in graph.weight_layers(True, True) for t in (layer.w, layer.b)
                     if t is not None}  # the same tensors before the method rounded the weights
    logits = int(graph.ops[-1][1].inputs[0])
    everything = {i for i in range(len(graph.sg.tensors)) if graph.has_range(i)}
    outputs = {
        "int8": TFLiteModel(session.model).predict(x),
        "weights only": simulated(graph, x, set()),
        "activations only": simulated(graph, x, everything, float_weights),
        "logits only": simulated(graph, x, {logits}, float_weights),
        "output only": np.round(ref * 256.0) / 256.0,
    }
    out = []
    for name, y in outputs.items():
        out.append((name, verify.agreement(ref, y), ties(y), len(x)))
    return out


def main() -> None:
    import statistics

    from edgeresnet.host.models.loading import load_model

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--samples", type=int, default=300)
    ap.add_argument("--method", default="mse+gptq")
    args = ap.parse_args()
    root = data_root()
    loaded = load_model(root / "mlperf-tiny-resnet8" / "pretrainedResnet.h5")
    print(f"ResNet-8, {args.method}, {args.samples} calibration images per seed; agreement with the float model on "
          "the training images the seed did not draw\n")
    print(f"{'what is int8':18s} {'seed':>4s} {'images':>6s} {'agree %':>8s} {'ties':>5s}")
    summary = {}
    for seed in args.seeds:
        for name, agree, tied, n in rows_for_seed(loaded, root, seed, args.samples, args.method):
            summary.setdefault(name, []).append(agree)
            print(f"{name:18s} {seed:4d} {n:6d} {agree:8.2f} {tied:5d}", flush=True)
    if len(args.seeds) > 1:
        print("\nmean over seeds:")
        for name, values in summary.items():
            print(f"{name:18s} {statistics.mean(values):6.2f} %")


if __name__ == "__main__":
    from _results import run

    sys.exit(run(main))

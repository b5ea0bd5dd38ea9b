"""Full-integer int8 quantization methods compared on the MLPerf Tiny ResNet-8 (CIFAR-10).

Measured, not asserted. For each method of the ``edgeresnet.host.quantize`` registry the real
pretrained ResNet-8 is converted to full-integer int8 (int8 input/output),
calibrated on ``--samples`` class-balanced CIFAR-10 training images (one seeded
draw per ``--seeds`` value), and compared with the Keras float model on the
1,000 CIFAR-10 test images (which no calibration sees): top-1 agreement with the float model, top-1
accuracy, drop against float, mean squared error and SQNR of the softmax
outputs, the conversion time, and how many test images the int8 model answers with a tie (its two
top classes get the same int8 probability, and the lower class index wins); for ``auto``, the method
it kept. ``held %`` is the agreement on the training images the seed did not draw for calibration
(4,700 at 300 samples): five times the test images, so it separates methods the test set cannot. Each seed draws other
calibration images and seeds the methods' own sampling. The MLPerf reference int8 model is listed for scale.

``--int16x8`` adds two 16-bit-activation rows (float input/output): ``int16x8 plain``, the
converter's own (``--int8-method minmax``), and ``int16x8 default``, whose int8 weights are chosen
by ``mse+gptq`` (``edgeresnet.host.quantize.int16x8``).

``--resnet50`` also times each method on ResNet-50 (224x224, random weights,
``--samples`` CIFAR-10 images resized) against a bare ``TFLiteConverter`` call,
alternating in one process so machine load hits both alike.

    python benchmarks/quant_methods.py [--seeds 0 1 2] [--samples 300] [--methods ...] [--int16x8] [--resnet50]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from _data import data_root, ties  # noqa: E402


# --int16x8 rows: label -> the --int8-method of the int16x8 conversion
INT16X8 = {"int16x8 plain": "minmax", "int16x8 default": "auto"}


def resnet8_table(methods, seeds, samples, int16x8=False) -> None:
    import numpy as np

    from edgeresnet.device import verify
    from edgeresnet.host.converter import ConversionSpec, convert
    from edgeresnet.device.images import load_images
    from edgeresnet.host.models.loading import load_model
    from edgeresnet.host.quantize import Int8Session, QuantOptConfig
    from edgeresnet.device.runtime import TFLiteModel

    root = data_root()
    h5 = root / "mlperf-tiny-resnet8" / "pretrainedResnet.h5"
    loaded = load_model(h5)
    test = load_images(root / "cifar10" / "test", (32, 32, 3))
    x_test = test.images.astype(np.float32)  # the model takes raw 0..255 RGB
    ref = loaded.predict(x_test)
    print(f"ResNet-8, {len(x_test)} test images; float top-1 {verify.topk_accuracy(ref, test.labels):.1f} %")
    peer = TFLiteModel(root / "mlperf-tiny-resnet8" / "pretrainedResnet_quant.tflite").predict(x_test)
    print(
        f"MLPerf reference int8: agreement {verify.agreement(ref, peer):.1f} %, "
        f"top-1 {verify.topk_accuracy(peer, test.labels):.1f} %\n"
    )
    header = (f"{'method':16s} {'seed':>4s} {'agree %':>8s} {'held %':>7s} {'top-1 %':>8s} {'drop pts':>8s} "
              f"{'mse e-4':>8s} {'sqnr dB':>8s} {'ties':>4s} {'convert s':>9s}")
    print(header)
    print("-" * len(header))
    summary = {}
    float_top1 = verify.topk_accuracy(ref, test.labels)
    for seed in seeds:
        calib = load_images(root / "cifar10" / "train", (32, 32, 3), samples=samples, seed=seed)
        x_cal = calib.images.astype(np.float32)
        held = load_images(root / "cifar10" / "train", (32, 32, 3), exclude=calib.paths).images.astype(np.float32)
        ref_held = loaded.predict(held)
        for method in list(methods) + (list(INT16X8) if int16x8 else []):
            start = time.perf_counter()
            if method in INT16X8:  # 16-bit activations: the plain converter's, or with an int8 method's weights
                model = convert(loaded.tflite_converter, ConversionSpec("int16x8", "float32", INT16X8[method]), x_cal).model
                kept = ""
            else:
                session = Int8Session(loaded.tflite_converter, x_cal, "int8", method, config=QuantOptConfig(seed=seed))
                model = session.model
                kept = f" (kept {session.method.name})" if session.method.name != method else ""
            seconds = time.perf_counter() - start
            out = TFLiteModel(model).predict(x_test)
            agree = verify.agreement(ref, out)
            agree_held = verify.agreement(ref_held, TFLiteModel(model).predict(held))
            tied = ties(out)
            top1 = verify.topk_accuracy(out, test.labels)
            mse = float(np.mean((out - ref) ** 2)) * 1e4
            sqnr = verify.sqnr_db(ref, out)
            summary.setdefault(method, []).append((agree, top1, mse, seconds, sqnr, agree_held))
            print(f"{method:16s} {seed:4d} {agree:8.1f} {agree_held:7.2f} {top1:8.1f} {float_top1 - top1:8.1f} "
                  f"{mse:8.2f} {sqnr:8.2f} {tied:4d} {seconds:9.1f}{kept}", flush=True)
    if len(seeds) > 1:
        print("\nmean over seeds (min agreement, max drop):")
        for method, rows in summary.items():
            a, t, m, s, q, h = (statistics.mean(r[k] for r in rows) for k in range(6))
            worst_a = min(r[0] for r in rows)
            worst_drop = max(float_top1 - r[1] for r in rows)
            print(
                f"{method:16s} agree {a:5.2f} (min {worst_a:4.1f})  held {h:5.2f}  top-1 {t:5.2f}  "
                f"drop {float_top1 - t:4.2f} (max {worst_drop:4.1f})  mse {m:5.2f}  sqnr {q:5.2f} dB  {s:5.1f} s"
            )


def resnet50_timing(methods, samples, rounds) -> None:
    import numpy as np

    from _bare import bare_int8_seconds

    from edgeresnet._util import tf as _tf
    from edgeresnet.device.images import load_images
    from edgeresnet.device.presets import get_preset
    from edgeresnet.host.models import build_model
    from edgeresnet.host.models.loading import LoadedModel
    from edgeresnet.host.quantize import quantize_int8

    tf = _tf.tf()
    images = load_images(data_root() / "cifar10" / "train", (224, 224, 3), samples=samples, seed=0)
    calib = get_preset("caffe").apply(images.images).astype(np.float32)
    model = build_model("resnet50")
    loaded = LoadedModel.from_keras(model, "resnet50")

    times = {"bare": []}
    for _ in range(rounds):
        times["bare"].append(bare_int8_seconds(tf, model, calib))
        for method in methods:
            start = time.perf_counter()
            quantize_int8(loaded.tflite_converter, calib, "int8", method)
            times.setdefault(method, []).append(time.perf_counter() - start)
            print(f"  {method}: {times[method][-1]:.1f} s (bare {times['bare'][-1]:.1f} s)", flush=True)
    base = statistics.median(times["bare"])
    print(f"\nResNet-50 224x224, {len(calib)} calibration images, {rounds} round(s), median seconds:")
    print(f"{'bare TFLiteConverter':22s} {base:7.1f}  1.00x")
    for method in methods:
        t = statistics.median(times[method])
        print(f"{method:22s} {t:7.1f}  {t / base:4.2f}x")


def main() -> None:
    from edgeresnet.host.quantize import method_names

    METHODS = method_names()

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--samples", type=int, default=300)
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    ap.add_argument("--resnet50", action="store_true", help="also time each method on ResNet-50 224x224")
    ap.add_argument("--rounds", type=int, default=1, help="ResNet-50 timing rounds")
    ap.add_argument("--skip-resnet8", action="store_true")
    ap.add_argument("--int16x8", action="store_true",
                    help="also int16x8 (float io): the plain converter's and the default's (mse+gptq's int8 weights)")
    args = ap.parse_args()
    if not args.skip_resnet8:
        resnet8_table(args.methods, args.seeds, args.samples, args.int16x8)
    if args.resnet50:
        print()
        resnet50_timing(args.methods, args.samples, args.rounds)


if __name__ == "__main__":
    from _results import run

    sys.exit(run(main))

"""ResNet-50 (224x224x3) latency on this CPU: fp32 against full-integer int8 TFLite.

Measured, not asserted. Builds ``edgeresnet.host.models.build_model("resnet50")``
with random weights (latency does not depend on weight values), converts it to
fp32 and to full-int8 (int8 input/output) calibrated on random images (uniform
in [-1, 1): the values only set quantization ranges, which do not change the
op graph or its cost), then times ``interpreter.invoke()`` with
``edgeresnet.device.bench.benchmark`` at each thread count.

    python benchmarks/latency_resnet50.py [--threads 1 2] [--warmup 5] [--repeats 30] [--keep DIR]

Run it on an idle machine: other processes on the same cores inflate the
figures (the load average is printed before and after).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edgeresnet.device.bench import BenchConfig, benchmark  # noqa: E402
from edgeresnet.host.converter import ConversionSpec, convert  # noqa: E402
from edgeresnet.host.models import build_model  # noqa: E402
from edgeresnet.host.models.loading import LoadedModel  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--calib", type=int, default=50, help="number of random calibration images")
    ap.add_argument("--keep", type=Path, help="folder to save the two .tflite files in")
    args = ap.parse_args(argv)

    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())} on {os.cpu_count()} cores")
    t0 = time.perf_counter()
    model = build_model("resnet50")
    loaded = LoadedModel.from_keras(model, "resnet50")
    calib = np.random.default_rng(0).uniform(-1.0, 1.0, (args.calib, 224, 224, 3)).astype(np.float32)
    variants = {}
    for label, spec, data in (
        ("fp32", ConversionSpec("fp32"), None),
        ("int8", ConversionSpec("int8", "int8"), calib),
    ):
        res = convert(loaded.tflite_converter, spec, data)
        variants[label] = res.model
        print(f"converted {label}: {len(res.model) / 1e6:.1f} MB in {res.seconds:.1f} s")
        if args.keep:
            args.keep.mkdir(parents=True, exist_ok=True)
            (args.keep / f"resnet50_{label}.tflite").write_bytes(res.model)
    print(f"build + convert: {time.perf_counter() - t0:.0f} s")

    rows, fp32_median, info = [], {}, None
    for threads in args.threads:
        for label, data in variants.items():
            r = benchmark(data, BenchConfig(warmup=args.warmup, repeats=args.repeats, threads=threads))
            info = r
            if label == "fp32":
                fp32_median[threads] = r.median_ms
            rows.append((label, threads, r))

    print()
    print(f"interpreter: {info.interpreter} {info.interpreter_version}; "
          f"{args.warmup} warm-up + {args.repeats} timed invoke() per row; input 1x224x224x3")
    head = f"{'variant':<8} {'threads':>7} {'size MB':>8} {'median ms':>10} {'p90 ms':>9} {'min ms':>9} {'speed-up vs fp32':>17}"
    print(head)
    print("-" * len(head))
    for label, threads, r in rows:
        speedup = fp32_median[threads] / r.median_ms
        print(f"{label:<8} {threads:>7} {r.size_bytes / 1e6:>8.1f} {r.median_ms:>10.1f} {r.p90_ms:>9.1f} "
              f"{r.min_ms:>9.1f} {speedup:>16.2f}x")
    print(f"\nload average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    from _results import run

    sys.exit(run(main))

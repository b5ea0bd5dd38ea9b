"""Edge TPU mapping prediction against the real compiler's output, op by op.

Measured, not asserted. For every pair ``X.tflite`` + ``X_edgetpu.tflite`` in
the Coral ground-truth folder (``<data>/coral-edgetpu/models``, from the public
google-coral/test_data repository), edgeresnet predicts which ops of
``X.tflite`` edgetpu_compiler leaves on the CPU, without the compiler, and
compares that with the compiled file, where the CPU ops keep their original
output tensor names. Prints one row per pair and the share of ops placed
correctly over all pairs.

    python benchmarks/edgetpu_mapping.py [--data DIR] [--verbose]
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from _data import data_root  # noqa: E402


def pairs(folder: Path) -> list[tuple[str, Path, Path]]:
    out = []
    for compiled in sorted(folder.glob("*_edgetpu.tflite")):
        source = compiled.with_name(compiled.name[: -len("_edgetpu.tflite")] + ".tflite")
        if source.is_file():
            out.append((source.stem, source, compiled))
    return out


def _ops(graph, indices) -> str:
    counts = Counter(graph.ops[i].name for i in indices)
    return ", ".join(f"{n}x{c}" if c > 1 else n for n, c in sorted(counts.items())) or "-"


def main(argv=None) -> int:
    from edgeresnet.targets.edgetpu.ground_truth import check_against_compiled
    from edgeresnet.device.tflite_graph import read_graph

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=data_root() / "coral-edgetpu" / "models",
                    help="folder with X.tflite + X_edgetpu.tflite pairs")
    ap.add_argument("--verbose", action="store_true", help="list every misplaced op")
    args = ap.parse_args(argv)
    found = pairs(args.data)
    if not found:
        print(f"error: no X.tflite + X_edgetpu.tflite pairs in {args.data}", file=sys.stderr)
        return 2
    header = f"{'pair':52s} {'ops':>4s} {'cpu pred':>8s} {'cpu real':>8s} {'correct':>7s} {'fully p/r':>9s}  verdict"
    print(header)
    print("-" * len(header))
    total = correct = exact = 0
    for name, src, comp in found:
        source = read_graph(src)
        check = check_against_compiled(source, read_graph(comp))
        total += check.ops_total
        correct += check.correct
        exact += check.exact
        fully = f"{'yes' if check.predicted_maps_fully else 'no'}/{'yes' if check.compiler_maps_fully else 'no'}"
        print(f"{name[:52]:52s} {check.ops_total:4d} {len(check.predicted_cpu):8d} {len(check.compiler_cpu):8d} "
              f"{check.correct:7d} {fully:>9s}  {'exact' if check.exact else 'WRONG'}")
        if args.verbose or not check.exact:
            print(f"    predicted on CPU: {_ops(source, check.predicted_cpu)}")
            print(f"    compiler  on CPU: {_ops(source, check.compiler_cpu)}")
            if check.wrong:
                print(f"    misplaced ops: {', '.join(f'#{i} {source.ops[i].name}' for i in check.wrong)}")
    print("-" * len(header))
    print(f"{exact}/{len(found)} pairs exact; {correct}/{total} ops placed correctly ({100 * correct / total:.1f} %)")
    return 0


if __name__ == "__main__":
    from _results import run

    sys.exit(run(main))

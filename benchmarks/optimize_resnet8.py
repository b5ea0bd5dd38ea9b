"""`edgeresnet optimize` on the real MLPerf Tiny ResNet-8 against the best uniform-sparsity variant.

Two budgets, each run through :func:`edgeresnet.host.optimize.run.run_optimize` exactly as the CLI runs it
(--train cifar10/train, --eval cifar10/test, the same fine-tuning epochs for every pruned model):

1. ``--max-download`` = 60 % of the plain int8 model's zlib size;
2. ``--max-latency`` = 120 % of the plain int8 model's median latency on this machine.

The uniform variants (one sparsity for every body layer, stem and classifier dense, as ``report
--sparsity``) are pruned and fine-tuned with the same epochs at --uniform levels; for each budget the
table compares optimize's choice with the most accurate uniform variant of no larger zlib size (resp.
latency). Prints the search time of each optimize run.

3. ``--max-latency`` = ``--input-latency`` (60 %) of the plain int8 model's latency, on the built-in
   ``resnet8`` (the same network) with the MLPerf weights copied in layer by layer (``--weights``),
   so the search may also shrink the input: no pruned or clustered model gets faster, so this is the
   input-size lever's case. ``--only-input`` runs just this one.

   With ``--input-download SHARE`` that run also has a download budget, so the input candidate is pruned too.

    python benchmarks/optimize_resnet8.py [--epochs 3] [--uniform 0.1 0.3 0.5 0.62 0.66 0.7] [--only-input
                                          [--input-download 0.8]] [--results]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edgeresnet.host.optimize import Budgets, OptimizeOptions  # noqa: E402
from edgeresnet.host.optimize.budgets import measure  # noqa: E402
from edgeresnet.host.optimize.candidates import candidate  # noqa: E402
from edgeresnet.host.optimize.evaluate import convert_int8, evaluate, load_search_data  # noqa: E402
from edgeresnet.host.optimize.result import markdown  # noqa: E402
from edgeresnet.host.optimize.run import run_optimize  # noqa: E402
from edgeresnet.host.optimize.candidates import LayerInfo  # noqa: E402

from _data import data_root  # noqa: E402

DATA = data_root()


def _row(name, r, q):
    return f"| {name} | {r['label']} | {r['measured'][q]:,} | {r['score']:.2f} |"


def _compare(title, q, chosen, uniform, seconds, limit):
    """optimize's model against the best uniform variant of no larger q, and against the best within the budget."""
    fits = [u for u in uniform if u["measured"][q] <= chosen["measured"][q]]
    best = max(fits, key=lambda u: u["score"]) if fits else None
    within = [u for u in uniform if u["measured"][q] <= limit]
    best_within = max(within, key=lambda u: u["score"]) if within else None
    print(f"\n### {title}\n")
    print(f"| model | settings | {q} | top-1 % |\n|---|---|---:|---:|")
    print(_row("optimize", chosen, q))
    print(_row(f"best uniform of no larger {q}", best, q) if best else f"| best uniform of no larger {q} | none | | |")
    print(_row("best uniform within the budget", best_within, q) if best_within else "| best uniform within the budget | none | | |")
    gains = [f"{chosen['score'] - b['score']:+.2f} top-1 points against the {name}"
             for name, b in (("uniform of no larger " + q, best), ("uniform within the budget", best_within)) if b]
    print(f"\ngain: {'; '.join(gains)}; search time {seconds:.0f} s")


def _zoo_weights(h5: str, path: str) -> None:
    """The MLPerf ResNet-8's trained weights saved under the built-in resnet8's layer names."""
    from edgeresnet._util import tf as _tf
    from edgeresnet.host.models import build_model

    ref, ours = _tf.tf_keras().models.load_model(h5, compile=False), build_model("resnet8")

    def split(model):
        kinds = lambda k: [la for la in model.layers if type(la).__name__ == k]  # noqa: E731
        convs = kinds("Conv2D")
        return ([la for la in convs if tuple(la.kernel_size) != (1, 1)] + [la for la in convs if tuple(la.kernel_size) == (1, 1)]
                + kinds("BatchNormalization") + kinds("Dense"))

    for mine, theirs in zip(split(ours), split(ref), strict=True):
        mine.set_weights(theirs.get_weights())
    ours.save_weights(path)


def _input_size_run(model, train, test, args, tmp):
    """The latency budget no pruned model meets, on the built-in resnet8: what the input-size lever finds."""
    weights = f"{tmp}/resnet8-mlperf.h5"
    _zoo_weights(model, weights)
    base = OptimizeOptions(model="resnet8", weights=weights, train=train, eval=test, budgets=Budgets(latency=1e9),
                           epochs=args.epochs, threads=1)
    data = load_search_data(base)
    plain = measure(convert_int8(data.loaded.model, base, data.calib), base.budgets, 1)
    limit = round(args.input_latency * plain["latency"], 3)
    download = int(args.input_download * plain["download"]) if args.input_download else None
    opts = OptimizeOptions(model="resnet8", weights=weights, train=train, eval=test, jobs=args.jobs, out=f"{tmp}/input",
                           budgets=Budgets(latency=limit, download=download), epochs=args.epochs, threads=1)
    started = time.perf_counter()
    result = run_optimize(opts, notify=lambda m: print(m, file=sys.stderr))
    chosen = result.chosen
    also = (f" and download budget {download:,} bytes ({args.input_download:.0%} of its {plain['download']:,})"
            if download else "")
    print(f"\n### latency budget {limit} ms ({args.input_latency:.0%} of the plain int8 model's "
          f"{plain['latency']:.3f} ms, 1 thread){also}, built-in resnet8 with the MLPerf weights\n")
    print(f"chosen: {chosen['label']}, input {chosen.get('input_shape')}, top-1 {chosen['score']:.2f} %, "
          f"{chosen['measured']['latency']:.3f} ms; search time {time.perf_counter() - started:.0f} s\n")
    print("\n".join(line for line in markdown(result).splitlines() if line.startswith("|")))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--uniform", type=float, nargs="+", default=[0.1, 0.3, 0.5, 0.62, 0.66, 0.7])
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--input-latency", type=float, default=0.6, help="budget 3: share of the plain model's latency")
    ap.add_argument("--only-input", action="store_true", help="run budget 3 only")
    ap.add_argument("--input-download", type=float, help="budget 3 also limits the download to this share of the plain "
                    "int8 model's (the input candidate is then pruned too)")
    args = ap.parse_args()
    model = str(DATA / "mlperf-tiny-resnet8" / "pretrainedResnet.h5")
    train, test = str(DATA / "cifar10" / "train"), str(DATA / "cifar10" / "test")
    if args.only_input:
        with tempfile.TemporaryDirectory() as tmp:
            _input_size_run(model, train, test, args, tmp)
        return
    train, test = str(DATA / "cifar10" / "train"), str(DATA / "cifar10" / "test")
    probe = OptimizeOptions(model=model, train=train, eval=test, budgets=Budgets(latency=1e9), epochs=args.epochs)
    data = load_search_data(probe)
    plain = measure(convert_int8(data.loaded.model, probe, data.calib), probe.budgets, None)
    budgets = {"download": Budgets(download=int(0.6 * plain["download"])),
               "latency": Budgets(latency=round(1.2 * plain["latency"], 3))}
    print(f"plain int8: {plain['download']:,} zlib bytes, {plain['latency']:.3f} ms median on this machine; "
          f"budgets: download {budgets['download'].download:,} bytes, latency {budgets['latency'].latency} ms; "
          f"{args.epochs} fine-tuning epochs for every pruned model")
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for q, b in budgets.items():
            opts = OptimizeOptions(model=model, train=train, eval=test, budgets=b, epochs=args.epochs,
                                   jobs=args.jobs, out=f"{tmp}/{q}")
            started = time.perf_counter()
            result = run_optimize(opts, notify=lambda m: print(m, file=sys.stderr))
            results[q] = (result, time.perf_counter() - started)
    layers = [LayerInfo(**row) for row in results["download"][0].summary["layers"]]
    both = Budgets(latency=1e9)
    uniform = []
    for level in args.uniform:
        opts = OptimizeOptions(model=model, train=train, eval=test, budgets=both, epochs=args.epochs)
        uniform.append(evaluate(candidate("uniform", layers, level), opts, data)[1])
        print(f"uniform {level}: {uniform[-1]['score']:.2f} %, {uniform[-1]['measured']['download']:,} B", file=sys.stderr)
    for q in budgets:
        result, seconds = results[q]
        others = [r for r in result.candidates if r["settings"]["family"] == "uniform"]
        _compare(f"{q} budget", q, result.chosen, uniform + others, seconds, getattr(budgets[q], q))
        print("\nevery candidate of the search:\n")
        print("\n".join(line for line in markdown(result).splitlines() if line.startswith("|")))
    print("\nuniform variants measured: " + ", ".join(f"{u['label']} {u['score']:.2f} % "
                                                         f"({u['measured']['download']:,} B, {u['measured']['latency']:.3f} ms)"
                                                         for u in uniform))


if __name__ == "__main__":
    from _results import run

    sys.exit(run(main))

"""The search: profile the layers, find each family's sparsity level by cheap probes, build and measure
the candidates for real, keep the most accurate one inside every budget.

1. The plain int8 model is built and measured first (candidate 0).
2. Every Conv2D/Dense layer is profiled (:func:`~edgeresnet.host.optimize.candidates.profile_layers`):
   weights, MACs, and the top-1 points the float model loses when that layer alone is 75 % pruned.
3. For each family (uniform; allocated with skew 0.5; 16 and 8 clusters on uniform sparsity), the lowest sparsity level that meets the
   size and download budgets is found by bisection on *probes*: the plain int8 file with the level's
   smallest weights zeroed (:func:`~edgeresnet.host.optimize.candidates.probe_model`, milliseconds).
   Without a size budget the levels are LADDER.
4. Each family's candidate is pruned with fine-tuning on --train, converted with --int8-method, run on
   --eval in the interpreter and measured (size, download, and latency and memory when budgeted). A
   candidate that the measurement puts over a size budget is rebuilt RETRY_STEP higher, RETRIES times.
5. On a target that runs float layers (cpu), the mixed family: the plain int8 model with its 1, 2 and 3
   worst int8 layers in float (:mod:`~edgeresnet.host.optimize.precision`), built and measured the same
   way; never on the Edge TPU.
6. For a built-in architecture with a latency or memory budget the plain int8 model exceeds, the input
   family: the architecture rebuilt at the largest smaller input size whose probe meets those budgets
   (:mod:`~edgeresnet.host.optimize.inputs`), fine-tuned and measured the same way; one measured over
   them is rebuilt one size smaller.
7. On a target that runs float layers, without --qat: the mixed family again on top of the most accurate
   fine-tuned candidate within every budget (its own int8 layers ranked), so sparsity or clusters and
   per-layer precision are searched together; built from its kept weights, nothing is trained again.
8. Of all measured candidates, the highest top-1 within every budget wins; ties (within
   ``result.TIE_POINTS``) go to the smaller one.
"""

from __future__ import annotations

from typing import Optional

from edgeresnet.host.optimize.budgets import Budgets, file_sizes
from edgeresnet.host.optimize.candidates import Candidate, LayerInfo, allocate, candidate, probe_model, profile_layers
from edgeresnet.host.optimize.evaluate import SearchData, evaluate, fine_tuned, held_out, load_search_data
from edgeresnet.host.optimize.inputs import SCALED, plan_inputs, smaller
from edgeresnet.host.optimize.options import OptimizeOptions
from edgeresnet.host.optimize.precision import plan_mixed, plan_on_best
from edgeresnet.host.optimize.result import budgeted_values
from edgeresnet.host.optimize.state import SearchState

# (family, skew, clusters): uniform sparsity; sensitivity-allocated sparsity; clustering (BY_BUDGET: the most
# clusters that meet the size budgets without pruning, else CLUSTERS_WITH_PRUNING clusters on uniform sparsity)
BY_BUDGET = -1
FAMILIES = (("uniform", 0.0, 0), ("allocated", 0.5, 0), ("clustered", 0.0, BY_BUDGET))
CLUSTER_CHOICES = (32, 24, 16, 12, 10, 8, 6, 4)
CLUSTERS_WITH_PRUNING = 8
CLUSTERS_WITHOUT_BUDGET = 16
# Levels tried when no size or download budget sets one: zeros then buy nothing (int8 kernels run dense), and
# the fine-tuning on --train is what lifts top-1, so a light and a medium level.
LADDER = (0.25, 0.5)
MAX_LEVEL = 0.95
BISECTIONS = 12
PROBE_MARGIN = 0.975  # probes aim this far under a size budget: fine-tuned weights compress a little differently
RETRIES = 2
RETRY_STEP = 0.03


def _stage(progress, name: str, unit: str = ""):
    from edgeresnet.host.pipeline.context import stage_progress

    return stage_progress(progress, name, unit)


def layer_profile(opts: OptimizeOptions, data: SearchData, state: SearchState, progress=None) -> list[LayerInfo]:
    """The layers' weights, MACs and sensitivities (kept in the resume state)."""
    kept = state.load("profile.json")
    if kept is not None:
        return [LayerInfo(**row) for row in kept]
    x, y = held_out(data, opts.seed)
    layers = profile_layers(data.loaded.model, x, y, _stage(progress, "profile layers (sensitivity)", "layers"))
    state.keep("profile.json", [layer.to_dict() for layer in layers])
    return layers


class _Prober:
    """Size and download of the plain int8 model with a level's zeros put in (memoised): a candidate's stand-in."""

    def __init__(self, plain: bytes, layers: list[LayerInfo]):
        self.plain, self.layers, self.seen = plain, layers, {}

    def __call__(self, level: float, skew: float, clusters: int = 0) -> dict:
        key = (round(level, 4), skew, clusters)
        if key not in self.seen:
            clustered = tuple(layer.name for layer in self.layers if layer.role != "stem")
            tflite = probe_model(self.plain, allocate(self.layers, level, skew), clusters, clustered)
            self.seen[key] = file_sizes(tflite)
        return self.seen[key]


def _fits(measured: dict, budgets: Budgets, margin: float = 1.0) -> bool:
    return all(measured[q] <= getattr(budgets, q) * margin for q in ("size", "download") if getattr(budgets, q))


def find_level(probe: _Prober, skew: float, budgets: Budgets, progress=None, clusters: int = 0) -> Optional[float]:
    """The lowest level whose probe meets the size budgets (bisection), or None when MAX_LEVEL does not."""
    if not _fits(probe(MAX_LEVEL, skew, clusters), budgets, PROBE_MARGIN):
        return None
    if _fits(probe(0.0, skew, clusters), budgets, PROBE_MARGIN):
        return 0.0
    lo, hi = 0.0, MAX_LEVEL
    for k in range(BISECTIONS):
        mid = (lo + hi) / 2.0
        lo, hi = (lo, mid) if _fits(probe(mid, skew, clusters), budgets, PROBE_MARGIN) else (mid, hi)
        if progress is not None:
            progress(k + 1, BISECTIONS)
    return round(hi, 3)


def plan_candidates(opts, plain: bytes, layers, progress=None, notify=None) -> list[Candidate]:
    """One fine-tuned candidate per family at the level the probes chose (or per LADDER level)."""
    budgets = opts.budgets
    if not (budgets.size or budgets.download):
        return [candidate(f, layers, 0.0, skew, CLUSTERS_WITHOUT_BUDGET) if n == BY_BUDGET else
                candidate(f, layers, level, skew, n) for f, skew, n in FAMILIES for level in LADDER]
    probe, out = _Prober(plain, layers), []
    for family, skew, n in FAMILIES:
        if n == BY_BUDGET:
            n = next((k for k in CLUSTER_CHOICES if _fits(probe(0.0, skew, k), budgets, PROBE_MARGIN)),
                     CLUSTERS_WITH_PRUNING)
        name = f"{family} (skew {skew:g})" if family == "allocated" else f"{family} ({n})" if n else family
        level = find_level(probe, skew, budgets, _stage(progress, f"probe sizes: {name}", "steps"), n)
        if level is None:
            if notify:
                notify(f"{name} cannot meet the size budgets even at sparsity {MAX_LEVEL}")
            continue
        if level == 0 and not n:  # no pruning and no clusters: the plain int8 model, measured already
            if notify:
                notify(f"{name}: the plain int8 model already meets the size budgets; nothing to prune")
            continue
        out.append(candidate(family, layers, level, skew, n))
    return out


class _Runner:
    """Evaluates candidates (in this process, or in --jobs processes) and keeps each in the resume state."""

    def __init__(self, opts: OptimizeOptions, data: SearchData, state: SearchState, progress=None, followers=None):
        self.opts, self.data, self.state, self.progress = opts, data, state, progress
        self.followers = followers  # a cluster's other workers (distributed.Followers): told each fine-tuning
        self.built: dict = {}  # key -> Candidate, every one run (or reused)

    def run(self, cands: list[Candidate]) -> list[dict]:
        self.built.update((c.key, c) for c in cands)
        todo = [c for c in dict.fromkeys(cands) if self.state.finished(c.key) is None]
        if self.opts.jobs > 1 and len(todo) > 1:
            self._parallel(todo)
        else:
            for k, c in enumerate(todo):
                if self.followers is not None and fine_tuned(c):
                    self.followers.announce(c)
                stage = _stage(self.progress, f"candidate {k + 1}/{len(todo)}: fine-tune {c.label}", "steps")
                model, record = evaluate(c, self.opts, self.data, stage, self.state.path)
                self.state.save(c.key, model, record)
        return [self.state.finished(c.key) for c in cands]

    def _parallel(self, todo: list[Candidate]) -> None:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor, as_completed

        from edgeresnet.host.optimize import worker

        with ProcessPoolExecutor(max_workers=min(self.opts.jobs, len(todo)), mp_context=multiprocessing.get_context("spawn"),
                                 initializer=worker.start, initargs=(self.opts,)) as pool:
            futures = {pool.submit(worker.evaluate_candidate, c, self.state.path): c for c in todo}
            tick = _stage(self.progress, f"candidates in {self.opts.jobs} processes", "candidates")
            for k, done in enumerate(as_completed(futures)):
                model, record = done.result()
                self.state.save(futures[done].key, model, record)
                if tick:
                    tick(k + 1, len(todo))


def _pruned_at(size: int, plain: bytes, layers, budgets: Budgets) -> Optional[Candidate]:
    """The input candidate at ``size`` with the uniform sparsity the size budgets need, found by probes on the plain
    int8 file (its weights, and so its bytes, do not depend on the input size); None when none meets them."""
    level = find_level(_Prober(plain, layers), 0.0, budgets)
    if level is None:
        return None
    return candidate("input", layers, level, input_size=size) if level else Candidate("input", input_size=size)


def _retry(cand: Candidate, measured: dict, opts: OptimizeOptions, data: SearchData, layers) -> Optional[Candidate]:
    """The candidate to build instead of one measured over budget: sparser (size budgets), one input size
    smaller (latency and memory budgets, the input family), or None (a mixed candidate has no other version)."""
    if cand.input_size:
        scaled = any(measured.get(q, 0) > getattr(opts.budgets, q) for q in SCALED if getattr(opts.budgets, q))
        if scaled:
            return smaller(cand, data)
    if cand.float_nodes or _fits(measured, opts.budgets) or cand.level >= MAX_LEVEL:
        return None
    return candidate(cand.family, layers, min(MAX_LEVEL, cand.level + RETRY_STEP), cand.skew, cand.clusters,
                     cand.input_size)


def search(opts: OptimizeOptions, data: SearchData, state: SearchState, progress=None, notify=None,
           followers=None) -> tuple:
    """(every measured candidate's record, the layer profile); ``followers``: a cluster's other workers."""
    runner = _Runner(opts, data, state, progress, followers)
    records = runner.run([Candidate("int8")])
    layers = layer_profile(opts, data, state, progress)
    plain = state.model_path(Candidate("int8").key).read_bytes()
    cands = plan_candidates(opts, plain, layers, progress, notify)
    cands += plan_mixed(opts, data, state, notify, _stage(progress, "rank int8 layers by error", "passes"))
    cands += plan_inputs(opts, data, state, records[0], notify, _stage(progress, "probe an input size", "conversion"),
                         lambda size: _pruned_at(size, plain, layers, opts.budgets))
    for _ in range(RETRIES + 1):
        fresh = runner.run(cands)
        records += fresh
        cands = [n for n in (_retry(c, r["measured"], opts, data, layers) for c, r in zip(cands, fresh)) if n is not None]
        if not cands:
            break
        if notify:
            notify(f"{len(cands)} candidate(s) measured over budget; rebuilding them {RETRY_STEP} sparser "
                   "(or, at a smaller input size)")
    best = _best_fine_tuned(runner.built, records, opts)
    on_best = plan_on_best(opts, data, state, best, notify, _stage(progress, "rank the best one's int8 layers", "passes"))
    records += runner.run(on_best)
    unique = {r["key"]: r for r in records}
    return list(unique.values()), layers


def _best_fine_tuned(built: dict, records: list[dict], opts: OptimizeOptions) -> Optional[Candidate]:
    """The most accurate fine-tuned candidate within every budget, or None."""
    within = [r for r in records if r["key"] in built and fine_tuned(built[r["key"]])
              and not opts.budgets.excess(budgeted_values(r))]
    return built[max(within, key=lambda r: r["score"])["key"]] if within else None


__all__ = ["search", "load_search_data", "plan_candidates", "find_level", "layer_profile"]

"""``edgeresnet optimize`` as one call: check, search (resumable), choose, write --out (staged, then swapped in)."""

from __future__ import annotations

import time
from pathlib import Path

from edgeresnet._util.files import StagedDir, check_output, clean_stale_partials
from edgeresnet._util.outlock import output_lock
from edgeresnet._util.tf import require_host
from edgeresnet.errors import ModelLoadError
from edgeresnet.host.optimize.distributed import Followers, follow, search_cluster
from edgeresnet.host.optimize.evaluate import load_search_data
from edgeresnet.host.optimize.inputs import input_note
from edgeresnet.host.optimize.options import OptimizeOptions
from edgeresnet.host.optimize.precision import precision_note
from edgeresnet.host.optimize.result import OptimizeResult, choose, front_keys, machine, write_output
from edgeresnet.host.optimize.search import search
from edgeresnet.host.optimize.state import SearchState


def _inputs(opts: OptimizeOptions) -> dict:
    return {"model": opts.model, "--train": opts.train, "--eval": opts.eval, "--calib": opts.calib}


def _cluster_note(cluster):
    """optimize.json's record of the fine-tuning cluster (None on one machine)."""
    if cluster is None:
        return None
    return {"workers": cluster.size, "chief": cluster.address, "tasks": [f"{t} {i} at {a}" for t, i, a in cluster.tasks]}


def run_optimize(opts: OptimizeOptions, progress=None, notify=None):
    """Search for the most accurate int8 model of ``opts.model`` within ``opts.budgets``; write ``opts.out``.

    Raises :class:`~edgeresnet.errors.BudgetNotMet` (nothing written to --out; the finished candidates stay
    in the resume state) when no candidate meets every budget. In a fine-tuning cluster (``TF_CONFIG``) only
    the chief searches and returns an :class:`OptimizeResult`; every other worker fine-tunes what the chief
    announces and returns a :class:`~edgeresnet.host.pipeline.WorkerRun` (:mod:`.distributed`).
    """
    require_host("optimize")
    from edgeresnet.host.models.loading import check_model_path

    notify = notify or (lambda message: None)
    cluster = search_cluster(opts)
    if cluster is not None and not cluster.is_chief:  # it fine-tunes what the chief announces; writes nothing
        return follow(opts, cluster, progress)
    if opts.zoo is None:
        check_model_path(opts.model)
    elif not Path(opts.weights).is_file():
        raise ModelLoadError(f"--weights {opts.weights}: no such file; pass the .h5 of {opts.zoo.name}'s trained weights")
    check_output(opts.out, opts.overwrite, _inputs(opts))
    started = time.perf_counter()
    with output_lock(opts.out):
        for note in clean_stale_partials(opts.out):
            notify(note)
        if cluster is not None:  # before TensorFlow runs anything (collective ops are set up at start)
            from edgeresnet.host.training.cluster import join

            join(cluster)
        with Followers(cluster) as followers:
            data = load_search_data(opts)
            state = SearchState(opts.out, opts.fingerprint())
            if state.resumed:
                notify(f"resuming: reusing {state.resumed} finished candidate(s) from {state.path}")
            records, layers = search(opts, data, state, progress, notify, followers)
        metric = "top-1" if data.labels is not None else "agreement"
        chosen, why = choose(records, opts.budgets, metric)
        primary = opts.budgets.primary
        front = front_keys(records, primary)
        summary = {
            "model": opts.model, "target": opts.target_name, "budgets": opts.budgets.to_dict(), "metric": metric,
            "float_score": round(data.float_top1, 3), "eval_images": len(data.eval), "epochs": opts.epochs,
            "int8_method": opts.int8_method, "threads": opts.threads or "interpreter default",
            "machine": machine(), "chosen": chosen["key"], "why": why, "front": front, "primary": primary,
            "layers": [layer.to_dict() for layer in layers], "precision": precision_note(opts.target),
            "input": input_note(opts, data, records), "input_shape": chosen.get("input_shape"),
            "candidates": records, "cluster": _cluster_note(cluster),
            "search_seconds": round(time.perf_counter() - started, 1), "resumed_candidates": state.resumed,
        }
        result = OptimizeResult(chosen, records, front, primary, why, summary)
        with StagedDir(opts.out, opts.overwrite, _inputs(opts)) as staged:
            write_output(staged.path, result, opts.budgets, metric, state.model_path)
            staged.commit()
        state.remove()
        return result

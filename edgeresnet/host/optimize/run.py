"""``edgeresnet optimize`` as one call: check, search (resumable), choose, write --out (staged, then swapped in)."""

from __future__ import annotations

import time
from pathlib import Path

from edgeresnet._util.files import StagedDir, check_output, clean_stale_partials
from edgeresnet._util.outlock import output_lock
from edgeresnet._util.tf import require_host
from edgeresnet.errors import ModelLoadError
from edgeresnet.host.optimize.evaluate import load_search_data
from edgeresnet.host.optimize.inputs import input_note
from edgeresnet.host.optimize.options import OptimizeOptions
from edgeresnet.host.optimize.precision import precision_note
from edgeresnet.host.optimize.result import OptimizeResult, choose, front_keys, machine, write_output
from edgeresnet.host.optimize.search import search
from edgeresnet.host.optimize.state import SearchState


def _inputs(opts: OptimizeOptions) -> dict:
    return {"model": opts.model, "--train": opts.train, "--eval": opts.eval, "--calib": opts.calib}


def run_optimize(opts: OptimizeOptions, progress=None, notify=None) -> OptimizeResult:
    """Search for the most accurate int8 model of ``opts.model`` within ``opts.budgets``; write ``opts.out``.

    Raises :class:`~edgeresnet.errors.BudgetNotMet` (nothing written to --out; the finished candidates stay
    in the resume state) when no candidate meets every budget.
    """
    require_host("optimize")
    from edgeresnet.host.models.loading import check_model_path

    from edgeresnet.host.training.clustering import refuse_multiworker

    notify = notify or (lambda message: None)
    refuse_multiworker(opts.strategy, "optimize")
    if opts.zoo is None:
        check_model_path(opts.model)
    elif not Path(opts.weights).is_file():
        raise ModelLoadError(f"--weights {opts.weights}: no such file; pass the .h5 of {opts.zoo.name}'s trained weights")
    check_output(opts.out, opts.overwrite, _inputs(opts))
    started = time.perf_counter()
    with output_lock(opts.out):
        for note in clean_stale_partials(opts.out):
            notify(note)
        data = load_search_data(opts)
        state = SearchState(opts.out, opts.fingerprint())
        if state.resumed:
            notify(f"resuming: reusing {state.resumed} finished candidate(s) from {state.path}")
        records, layers = search(opts, data, state, progress, notify)
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
            "candidates": records,
            "search_seconds": round(time.perf_counter() - started, 1), "resumed_candidates": state.resumed,
        }
        result = OptimizeResult(chosen, records, front, primary, why, summary)
        with StagedDir(opts.out, opts.overwrite, _inputs(opts)) as staged:
            write_output(staged.path, result, opts.budgets, metric, state.model_path)
            staged.commit()
        state.remove()
        return result

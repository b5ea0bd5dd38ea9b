"""The search's answer: which candidate wins and why, the Pareto front, and the output folder's files."""

from __future__ import annotations

import json
import os
import platform
import shutil
from dataclasses import dataclass
from pathlib import Path

from edgeresnet.errors import BudgetNotMet, MissingDependencyError
from edgeresnet.host.optimize.budgets import QUANTITIES, Budgets, describe
from edgeresnet.report.markdown import fmt_drop
from edgeresnet.report.plot import pareto_front

MODEL_FILE = "optimized.tflite"


@dataclass(frozen=True)
class OptimizeResult:
    chosen: dict
    candidates: list  # every measured record, with within_budget, over and on_front
    front: list  # keys on the Pareto front (score against the primary quantity)
    primary: str
    why: str
    summary: dict  # what optimize.json holds

    def to_dict(self) -> dict:
        return self.summary


def budgeted_values(record: dict) -> dict:
    """A candidate record's values the budgets limit: its measured quantities and its drop."""
    return {**record["measured"], "drop": record["drop"]}


def _over_text(record: dict, budgets: Budgets, over: dict) -> str:
    return ", ".join(f"{q} {describe(q, budgeted_values(record)[q])} > {describe(q, getattr(budgets, q))}" for q in over)


# Scores this close to the most accurate candidate's count as equal (the smaller one wins): on 1,000 images two
# candidates of one model differ by more than this from fine-tuning and rounding alone.
TIE_POINTS = 0.5


def choose(records: list[dict], budgets: Budgets, metric: str) -> tuple[dict, str]:
    """The most accurate record within every budget (ties, within TIE_POINTS: the smaller primary quantity), and
    why it won.

    :class:`BudgetNotMet` naming the closest candidate when none is within."""
    primary = budgets.primary
    for r in records:
        r["over"] = {q: round(x, 4) for q, x in budgets.excess(budgeted_values(r)).items()}
        r["within_budget"] = not r["over"]
    within = [r for r in records if r["within_budget"]]
    if not within:
        closest = min(records, key=lambda r: max(r["over"].values()))
        flags = {q: QUANTITIES[q][1] if q in QUANTITIES else "--max-drop" for q in closest["over"]}
        raise BudgetNotMet(
            f"no model meets the budgets ({len(records)} built and measured); the closest is {closest['label']} "
            f"({metric} {closest['score']:.2f} %): {_over_text(closest, budgets, closest['over'])}; loosen "
            + " and ".join(flags.values())
        )
    top = max(r["score"] for r in within)
    ranked = sorted(within, key=lambda r: (r["score"] < top - TIE_POINTS, r["measured"][primary], -r["score"]))
    best = ranked[0]
    limits = "; ".join(f"{q} {describe(q, budgeted_values(best)[q])} <= {describe(q, getattr(budgets, q))}"
                       for q in budgets.given + (("drop",) if budgets.drop is not None else ()))
    runner = (f"; the next best within budget, {ranked[1]['label']}, scores {ranked[1]['score']:.2f} %"
              if len(ranked) > 1 else "; it is the only candidate within budget")
    rejected = [r for r in records if not r["within_budget"] and r["score"] > best["score"]]
    beaten = (f"; {len(rejected)} more accurate candidate(s) were over budget ("
              + "; ".join(f"{r['label']}: {_over_text(r, budgets, r['over'])}" for r in rejected[:3]) + ")"
              if rejected else "")
    if best["score"] < top:
        lead = (f"{best['label']} is within {TIE_POINTS} points of the highest {metric} within every budget "
                f"({top:.2f} %), {best['score']:.2f} %, with the smallest {primary} of those")
    else:
        lead = f"{best['label']} has the highest {metric} within every budget, {best['score']:.2f} %"
    why = f"{lead} ({limits})" + runner + beaten
    return best, why


def front_keys(records: list[dict], primary: str) -> list[str]:
    order = pareto_front([(r["measured"].get(primary), r["score"]) for r in records])
    keys = [records[i]["key"] for i in order]
    for r in records:
        r["on_front"] = r["key"] in keys
    return keys


def machine() -> dict:
    """Where latency and memory were measured: this machine."""
    from edgeresnet.device.runtime import get_backend

    backend = get_backend(None)
    return {"host": platform.node(), "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "interpreter": f"{backend.name} {backend.version}"}


def plot_front(result: OptimizeResult, budgets: Budgets, metric: str, path: Path) -> None:
    """Accuracy against the budgeted quantity: every candidate, the front joined, the budget line, the chosen model."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise MissingDependencyError(f"the plot needs matplotlib ({exc}); pip install matplotlib") from None

    q = result.primary
    unit = QUANTITIES[q][0]
    fig = Figure(figsize=(7, 4.5))
    FigureCanvasAgg(fig)  # its own Agg canvas, as report/plot.py: the caller's matplotlib backend is left alone
    ax = fig.add_subplot()
    pts = [(r["measured"][q], r["score"], r) for r in result.candidates]
    ax.scatter([p[0] for p in pts], [p[1] for p in pts], c=["tab:blue" if p[2]["within_budget"] else "tab:grey" for p in pts])
    front = [p for k in result.front for p in pts if p[2]["key"] == k]
    ax.plot([p[0] for p in front], [p[1] for p in front], "-", color="tab:orange", label="Pareto front")
    for x, y, r in pts:
        ax.annotate(r["label"], (x, y), fontsize=7, xytext=(4, 3), textcoords="offset points")
    if getattr(budgets, q) is not None:
        ax.axvline(getattr(budgets, q), color="tab:red", linestyle="--", label=f"budget {describe(q, getattr(budgets, q))}")
    c = result.chosen
    ax.scatter([c["measured"][q]], [c["score"]], s=160, facecolors="none", edgecolors="tab:green", label="chosen")
    ax.set_xlabel(f"{q} ({unit})")
    ax.set_ylabel(f"{metric} (%)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def markdown(result: OptimizeResult) -> str:
    s = result.summary
    quantities = [q for q in QUANTITIES if q in result.chosen["measured"]]
    lines = [f"# edgeresnet optimize: {s['model']}", "",
             f"Target {s['target']}; budgets: "
             + ", ".join(f"{q} {describe(q, v)}" for q, v in s["budgets"].items()), "",
             f"Float model: {s['metric']} {s['float_score']:.2f} %. Latency and memory measured on this machine "
             f"({s['machine']['host']}, {s['machine']['cores']} cores, {s['machine']['interpreter']}, "
             f"threads: {s['threads']}).", "",
             f"**Chosen: {result.chosen['label']}** -> `{MODEL_FILE}`, input {_shape(s.get('input_shape'))}. "
             f"{result.why}.", "",
             f"Per-layer precision: {s.get('precision', '')}.", "", f"Input size: {s.get('input', '')}.", ""]
    tpu = all(r.get("edgetpu_memory") for r in result.candidates)
    if tpu:
        cache = result.candidates[0]["edgetpu_memory"]["cache_bytes"]
        lines += [f"Edge TPU on-chip parameter memory: {cache / 2**20:.0f} MiB; 'on-chip' says whether a candidate's "
                  "parameters (of the ops predicted to map, as `inspect` estimates them) fit it, else the rest "
                  "streams from off-chip memory on every inference (slower).", ""]
    lines += ["| candidate | " + " | ".join(quantities) + f" | {s['metric']} % | drop | within | front |"
              + (" on-chip |" if tpu else ""),
              "|---|" + "---:|" * len(quantities) + "---:|---:|---|---|" + ("---|" if tpu else "")]
    for r in sorted(result.candidates, key=lambda r: r["measured"][result.primary]):
        label = r["label"] + (" + QAT" if r.get("qat") else "")
        lines.append(f"| {label} | " + " | ".join(describe(q, r["measured"][q]) for q in quantities)
                     + f" | {r['score']:.2f} | {fmt_drop(r, 'drop', 'drop_margin')} | {'yes' if r['within_budget'] else 'no'} | "
                     + f"{'yes' if r['on_front'] else ''} |" + (_on_chip(r["edgetpu_memory"]) if tpu else ""))
    lines += ["", "Settings of each candidate (per-layer sparsity, layers in float) are in optimize.json; the front's models are in "
              "candidates/." + (" '+ QAT': the int8 file comes from quantization-aware training that kept the "
                                "candidate's zeros and clusters (--qat)." if any(r.get("qat") for r in result.candidates) else ""), ""]
    return "\n".join(lines)


def _shape(shape) -> str:
    return "x".join(str(d) for d in shape) if shape else "as the model's"


def _on_chip(memory: dict) -> str:
    return f" {'yes' if memory['fits_cache'] else 'no'} ({memory['param_bytes'] / 2**20:.2f} MiB) |"


def write_output(folder: Path, result: OptimizeResult, budgets: Budgets, metric: str, models_from) -> None:
    """optimized.tflite, optimize.json, optimize.md, front.png and candidates/<key>.tflite for the front."""
    shutil.copyfile(models_from(result.chosen["key"]), folder / MODEL_FILE)
    (folder / "candidates").mkdir()
    for key in result.front:
        shutil.copyfile(models_from(key), folder / "candidates" / f"{key}.tflite")
    (folder / "optimize.json").write_text(json.dumps(result.summary, indent=1) + "\n", "utf-8")
    (folder / "optimize.md").write_text(markdown(result), "utf-8")
    plot_front(result, budgets, metric, folder / "front.png")

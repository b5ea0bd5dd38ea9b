"""The run report: one record per emitted variant, written as JSON and Markdown.

``report.json`` schema (stable; other tools read it):

- ``model``: name, source, flavor, input_shape, classes, params, safe_mode (loaded with the
  code checks on; false after ``--trust-model-code``)
- ``preprocessing``: preset, folded
- ``calibration``: the calibration record (source, count, seed, preset, ...)
- ``evaluation``: source, origin, count, labelled
- ``float``: the float Keras model's count, top1, top5
- ``variants``: list of records with at least ``target``, ``precision``,
  ``path``, ``sha256`` (of the file), ``size_bytes``, ``top1``, ``drop_pts``, ``agreement`` and a
  ``status`` of ``ok``, ``over_budget``, ``convert_failed`` (no model was
  produced) or ``validation_failed`` (a model was produced, and it failed a check)
- ``max_drop``, ``passed``, ``seconds``, ``edgeresnet_version``, ``created``
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from . import device_check
from . import __version__
from .fsutil import atomic_write_text
from .verify import Baseline, Drift

STATUSES = ("ok", "over_budget", "convert_failed", "validation_failed")


@dataclass
class VariantRecord:
    name: str
    target: str
    precision: str
    io_type: str
    status: str = "ok"
    error: Optional[str] = None
    path: Optional[str] = None
    sha256: Optional[str] = None  # of the emitted file: a device finds its numbers by it (edgeresnet eval --report)
    size_bytes: Optional[int] = None
    compressed_bytes: Optional[int] = None
    convert_seconds: Optional[float] = None
    interpreter: Optional[str] = None
    drift: Optional[Drift] = None
    checks: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)

    def fail(self, status: str, error: str) -> None:
        if status not in STATUSES:
            raise ValueError(f"unknown status {status!r}")
        self.status = status
        self.error = error

    def set_drift(self, d: Drift) -> None:
        self.drift = d

    def set_file(self, path: Path, out_dir) -> None:
        data = Path(path).read_bytes()
        self.size_bytes = len(data)
        self.sha256 = hashlib.sha256(data).hexdigest()
        self.compressed_bytes = len(zlib.compress(data, 9))
        self.path = str(Path(out_dir) / Path(path).name)

    def drop_text(self) -> str:
        if self.drift is None:
            return "n/a"
        if self.drift.drop_pts is not None:
            return f"{self.drift.drop_pts:.2f} pts"
        return f"{100 - self.drift.agreement:.2f} pts disagreement"

    def to_dict(self) -> dict:
        d = self.drift.to_dict() if self.drift is not None else {}
        return {
            "name": self.name,
            "target": self.target,
            "precision": self.precision,
            "io_type": self.io_type,
            "status": self.status,
            "error": self.error,
            "path": self.path,
            "sha256": self.sha256,
            "size_bytes": self.size_bytes,
            "compressed_bytes": self.compressed_bytes,
            "top1": d.get("top1"),
            "top5": d.get("top5"),
            "drop_pts": d.get("drop_pts"),
            "agreement": d.get("agreement"),
            "cosine": d.get("cosine"),
            "sqnr_db": d.get("sqnr_db"),
            "eval_count": d.get("count"),
            "convert_seconds": self.convert_seconds,
            "interpreter": self.interpreter,
            "checks": self.checks,
            **self.extra,
        }


@dataclass
class RunReport:
    model: dict
    preprocessing: dict
    calibration: Optional[dict]
    evaluation: dict
    baseline: Baseline
    max_drop: Optional[float]
    prune: Optional[dict] = None
    variants: list = field(default_factory=list)
    recovery: bool = False  # whether over-budget int8 models were allowed to keep layers in float
    metadata: Optional[dict] = None  # the TFLite metadata every emitted model carries (shipping.model_info)
    seconds: Optional[float] = None
    created: str = ""

    @classmethod
    def start(cls, *, model, source, preset, folded, calibration, evaluation, baseline, max_drop, prune=None):
        info = {
            "name": model.name,
            "source": str(source),
            "flavor": model.flavor,
            "input_shape": list(model.input_shape),
            "classes": model.num_classes,
            "safe_mode": model.safe_mode,
        }
        params = getattr(model, "params", None)
        if params is not None:
            info["params"] = params
        return cls(
            model=info,
            preprocessing={"preset": preset, "folded_into_model": bool(folded)},
            calibration=calibration,
            evaluation=evaluation,
            baseline=baseline,
            max_drop=max_drop,
            prune=prune,
            created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        )

    def add(self, rec: VariantRecord) -> None:
        self.variants.append(rec)

    def finish(self, seconds: float) -> None:
        self.seconds = round(seconds, 2)

    @property
    def passed(self) -> bool:
        """Every variant is ok, or was over budget and replaced by a recovered variant that is ok."""
        ok = {v.name for v in self.variants if v.status == "ok"}
        return all(v.status == "ok" or v.extra.get("recovered_by") in ok for v in self.variants)

    def to_dict(self) -> dict:
        out = {
            "edgeresnet_version": __version__,
            "created": self.created,
            "model": self.model,
            "preprocessing": self.preprocessing,
            "calibration": self.calibration,
            "evaluation": self.evaluation,
            "float": self.baseline.to_dict(),
            "max_drop": self.max_drop,
            "recovery": self.recovery,
            "passed": self.passed,
            "seconds": self.seconds,
            "variants": [v.to_dict() for v in self.variants],
        }
        if self.prune is not None:
            out["prune"] = self.prune
        if self.metadata is not None:
            out["metadata"] = self.metadata
        return out


def _fmt(v, spec=".2f", none="–"):
    if v is None:
        return none
    if isinstance(v, (int, float)):
        return format(v, spec)
    return str(v)


def _kib(n):
    return "–" if n is None else f"{n / 1024:.1f}"


def safe_mode_text(safe_mode) -> str:
    """How the report says whether the model file was loaded with the code checks on."""
    if safe_mode is None:
        return "not applicable (an in-memory model)"
    if safe_mode:
        return "yes (the file was checked for code before loading; none was found)"
    return "NO: --trust-model-code, the model's own code (Lambda layers, custom classes, graph ops) was allowed to run"


def variants_table(report: dict) -> str:
    """A Markdown table of the variants of a ``report.json`` dict (also used by the CLI)."""
    labelled = report["evaluation"].get("labelled")
    head = ["variant", "target", "precision", "io", "size KiB", "zlib KiB"]
    head += ["top-1 %", "drop pts"] if labelled else []
    head += ["agree %", "SQNR dB"]
    timed = any(v.get("latency") for v in report["variants"])
    head += ["median ms"] if timed else []
    head += ["status"]
    rows = []
    for v in report["variants"]:
        row = [v["name"], v["target"], v["precision"], v["io_type"], _kib(v["size_bytes"]), _kib(v["compressed_bytes"])]
        if labelled:
            row += [_fmt(v["top1"]), _fmt(v["drop_pts"])]
        row += [_fmt(v["agreement"]), _fmt(v["sqnr_db"], ".1f")]
        if timed:
            row += [_fmt((v.get("latency") or {}).get("median_ms"), ".3f")]
        row += [v["status"]]
        rows.append(row)
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def runtimes_markdown(report: dict) -> list[str]:
    """The metadata the models carry and, per model, which runtimes take it (and why not)."""
    meta = report.get("metadata")
    rows = [v for v in report["variants"] if v.get("runtimes")]
    if not meta and not rows:
        return []
    lines = ["## Shipping", ""]
    if meta:
        norm = "not stated" if meta.get("mean") is None else f"(pixel - {meta['mean']}) / {meta['std']}"
        labels = (f"{meta['labels_count']} class names in `{meta['labels_file']}` ({meta.get('labels_from')})"
                  if meta.get("labels_count") else "none (unlabelled data; pass --labels FILE)")
        lines += [f"- metadata: name `{meta['name']}`, input {meta['color_space']}, normalization {norm}, labels {labels}", ""]
    if rows:
        lines += ["| model | LiteRT interpreter | MediaPipe Tasks / Task Library | Edge TPU |", "|---|---|---|---|"]
        mark = {True: "yes", False: "no", None: "?"}
        for v in rows:
            cells = [f"{mark[r.get('ok')]}: {r.get('why', '')}" for r in (v["runtimes"].get(k, {}) for k in ("litert", "mediapipe", "edgetpu"))]
            lines.append(f"| {v['name']} | " + " | ".join(c.replace("|", "/") for c in cells) + " |")
        lines.append("")
    return lines


def to_markdown(report: dict) -> str:
    m, f, e, c = report["model"], report["float"], report["evaluation"], report.get("calibration")
    lines = [
        f"# edgeresnet report: {m['name']}",
        "",
        f"- model: `{m['source']}` ({m['flavor']}, input {tuple(m['input_shape'])}, {m['classes']} classes)",
        f"- loaded in safe mode: {safe_mode_text(m.get('safe_mode'))}",
        f"- preprocessing: preset `{report['preprocessing']['preset']}`"
        + (" folded into the model (it takes raw pixels)" if report["preprocessing"]["folded_into_model"] else ""),
    ]
    if c:
        lines.append(
            f"- calibration: {c.get('count')} images from `{c.get('source')}`, seed {c.get('seed')}, "
            f"resize `{c.get('resize')}`" + (", class-balanced" if c.get("balanced") else "")
        )
        for w in c.get("warnings") or ():
            lines.append(f"  - warning: {w}")
    lines.append(f"- evaluation: {e['count']} images from `{e['source']}` ({e['origin']})")
    if f.get("top1") is not None:
        lines.append(f"- float model: top-1 {f['top1']:.2f} %, top-5 {f['top5']:.2f} %")
    if report.get("max_drop") is not None:
        lines.append(f"- budget: --max-drop {report['max_drop']} pts: {'met' if report['passed'] else 'NOT met'}")
    if report.get("prune"):
        p = report["prune"]
        how = "fine-tuned" if p.get("fine_tuned") else "one-shot, not fine-tuned"
        lines.append(
            f"- pruning: sparsity {p.get('sparsity')} ({p.get('structure')}, {p.get('schedule')} schedule, {how}); "
            f"Keras-side sparsity {p.get('keras_sparsity')}"
        )
        for d in p.get("left_dense") or ():
            lines.append(f"  - left dense: `{d['name']}`: {d['reason']}")
        for w in p.get("warnings") or ():
            lines.append(f"  - warning: {w}")
    lines += ["", "## Variants", "", variants_table(report), ""]
    lines += runtimes_markdown(report)
    lines += device_check.markdown(report["variants"])
    for v in report["variants"]:
        if v.get("error"):
            lines.append(f"- `{v['name']}`: {v['status']}: {v['error']}")
        if v.get("recovered_by"):
            lines.append(f"- `{v['name']}` was over budget; recovered as `{v['recovered_by']}`")
        if v.get("recovery"):
            r = v["recovery"]
            cost = r.get("cost") or {}
            lines.append(
                f"- `{v['name']}`: kept in float: {', '.join(r.get('float_layers') or []) or 'nothing'} "
                f"({'budget met' if r.get('met') else 'budget NOT met'}); size "
                f"{(cost.get('size_bytes') or {}).get('initial')} -> {(cost.get('size_bytes') or {}).get('final')} bytes, "
                f"median latency {(cost.get('latency_ms') or {}).get('initial')} -> {(cost.get('latency_ms') or {}).get('final')} ms"
            )
        if v.get("worst_layers"):
            names = ", ".join(str(w.get("name") or w.get("layer")) for w in v["worst_layers"][:5])
            lines.append(f"- `{v['name']}`: layers with the largest int8 error: {names}")
        for name, chk in (v.get("checks") or {}).items():
            lines.append(f"- `{v['name']}` {name}: {'ok' if chk.get('ok') else 'NOT ok' if chk.get('ok') is False else 'unknown'}: {chk.get('summary', '')}")
    if report.get("prune") and report["prune"].get("layers"):
        lines += ["", "## Per-layer sparsity", "", "| layer | kind | target | achieved | weights |", "|---|---|---|---|---|"]
        for layer in report["prune"]["layers"]:
            lines.append(
                f"| {layer.get('name')} | {layer.get('kind')} | {_fmt(layer.get('target_sparsity'))} | "
                f"{_fmt(layer.get('achieved_sparsity'))} | {layer.get('weights')} |"
            )
    lines += ["", f"Written by edgeresnet {report['edgeresnet_version']} on {report['created']} in {report['seconds']} s.", ""]
    return "\n".join(lines)


def write_reports(report: RunReport, folder) -> dict:
    """Write report.json and report.md into ``folder`` (atomically); return the dict."""
    data = report.to_dict()
    folder = Path(folder)
    atomic_write_text(folder / "report.json", json.dumps(data, indent=2, allow_nan=False) + "\n")
    atomic_write_text(folder / "report.md", to_markdown(data))
    return data

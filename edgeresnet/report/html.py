"""The HTML view of a ``report.json`` dict (``report.html``): one self-contained page.

Reads the dict that :meth:`edgeresnet.report.RunReport.to_dict` writes and
nothing else (the plot is embedded from the PNG ``plot.py`` wrote); the file
is written atomically.
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Optional, Union

from edgeresnet.errors import ConfigError
from edgeresnet._util.files import atomic_write_text
from edgeresnet.report.markdown import (as_number, at_chance_text, clustering_text, fine_tune_text, fmt_drop, fmt_kib, fmt_number,
                                        safe_mode_text)
from edgeresnet.report.reading import accuracy_metric, cluster_count, latency_of, percent, point_labels, prune_sparsity
from edgeresnet.report.writers import check_parent

PathLike = Union[str, Path]

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:2em auto;max-width:1100px;color:#222;padding:0 1em}
h1{font-size:1.5em;margin-bottom:.2em}h2{font-size:1.15em;margin-top:1.8em;border-bottom:1px solid #ddd;padding-bottom:.2em}
table{border-collapse:collapse;font-size:.9em;margin:.5em 0}
th,td{border:1px solid #ddd;padding:.3em .6em;text-align:left;vertical-align:top}
th{background:#f4f4f4}td.num{text-align:right;font-variant-numeric:tabular-nums}
.status{font-weight:600;border-radius:3px;padding:.1em .4em;white-space:nowrap}
.s-ok{background:#dff3e3;color:#17622b}.s-over_budget{background:#fff1cc;color:#7a5200}
.s-convert_failed,.s-validation_failed{background:#fbe0e0;color:#8a1c1c}
tr.row-convert_failed,tr.row-validation_failed{background:#fff7f7}
.pass{color:#17622b;font-weight:600}.fail{color:#8a1c1c;font-weight:600}.unknown{color:#777}
img.plot{max-width:100%;border:1px solid #eee}code{background:#f6f6f6;padding:0 .2em}
.muted{color:#777;font-size:.85em}.label{color:#555;font-size:.85em}ul.errors li{margin:.2em 0}
"""


def _e(v) -> str:
    return html.escape("–" if v is None else str(v), quote=True)


def _value_html(v) -> str:
    if isinstance(v, dict):
        if not v:
            return "–"
        return "<br>".join(f"{_e(k)}: {_e(json.dumps(x) if isinstance(x, (dict, list)) else x)}" for k, x in v.items())
    if isinstance(v, (list, tuple)):
        return "<br>".join(_e(json.dumps(x) if isinstance(x, (dict, list)) else x) for x in v) if v else "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    return _e(v)


def _record_table(record: Optional[dict], skip: tuple = ()) -> str:
    if not record:
        return '<p class="muted">none</p>'
    rows = "".join(f"<tr><th>{_e(k)}</th><td>{_value_html(v)}</td></tr>" for k, v in record.items() if k not in skip)
    return f"<table>{rows}</table>"


def _status(status) -> str:
    s = str(status)
    return f'<span class="status s-{_e(s)}">{_e(s.replace("_", " "))}</span>'


def _variants_table(report: dict) -> str:
    variants = list(report.get("variants") or ())
    labelled = accuracy_metric(report)[0] == "top1"
    has_latency = any(latency_of(v)[0] is not None for v in variants)
    has_pruned = any(prune_sparsity(v) is not None for v in variants)
    has_clustered = any(cluster_count(v) is not None for v in variants)
    has_tuned = any(v.get("fine_tune") for v in variants)
    has_zeros = any(as_number(v.get("weight_sparsity")) is not None for v in variants)
    head = ["variant", "target", "precision", "io"] + (["pruned"] if has_pruned else [])
    head += ["clusters"] if has_clustered else []
    head += (["fine-tuned"] if has_tuned else []) + ["size KiB", "zlib KiB"]
    head += ["top-1 %", "top-5 %", "drop pts"] if labelled else []
    measured = not (report.get("evaluation") or {}).get("not_measured")  # timing only (random weights): no accuracy
    head += ["agree %", "cosine", "SQNR dB"] if measured else ["accuracy"]
    head += ["zero weights %"] if has_zeros else []
    head += ["median ms", "p90 ms"] if has_latency else []
    head += ["status"]
    rows = []
    for v, label in zip(variants, point_labels(variants)):
        cells = [f'<td><code>{_e(v.get("name"))}</code><br><span class="label">{_e(label)}</span></td>',
                 f"<td>{_e(v.get('target'))}</td>", f"<td>{_e(v.get('precision'))}</td>",
                 f"<td>{_e(v.get('io_type'))}</td>"]
        cells += [f"<td>{_e(_pruning_text(v))}</td>"] if has_pruned else []
        cells += [f'<td class="num">{_e(cluster_count(v) or "no")}</td>'] if has_clustered else []
        cells += [f"<td>{_e(fine_tune_text(v))}</td>"] if has_tuned else []
        cells += [f'<td class="num">{fmt_kib(v.get(k))}</td>' for k in ("size_bytes", "compressed_bytes")]
        nums = [fmt_number(v.get("top1")), fmt_number(v.get("top5")), fmt_drop(v)] if labelled else []
        nums += ([fmt_number(v.get("agreement")), fmt_number(v.get("cosine"), ".4f"), fmt_number(v.get("sqnr_db"), ".1f")]
                 if measured else ["not measured"])
        if has_zeros:
            zeros = as_number(v.get("weight_sparsity"))
            nums.append(fmt_number(None if zeros is None else 100 * zeros, ".1f"))
        if has_latency:
            med, p90 = latency_of(v)
            nums += [fmt_number(med, ".3f"), fmt_number(p90, ".3f")]
        cells += [f'<td class="num">{n}</td>' for n in nums]
        cells.append(f"<td>{_status(v.get('status'))}</td>")
        rows.append(f'<tr class="row-{_e(v.get("status"))}">' + "".join(cells) + "</tr>")
    header = "".join(f"<th>{_e(h)}</th>" for h in head)
    return f'<table class="variants"><thead><tr>{header}</tr></thead><tbody>{"".join(rows)}</tbody></table>'


def _pruning_text(variant: dict) -> str:
    """``50% one-shot``, ``50% fine-tuned, 3 epochs``, ``50%`` or ``no``."""
    s = prune_sparsity(variant)
    if s is None:
        return "no"
    prune = variant.get("prune") if isinstance(variant.get("prune"), dict) else {}
    if prune.get("fine_tuned") is True:
        epochs = prune.get("epochs")
        return f"{percent(s)} fine-tuned" + (f", {epochs} epochs" if epochs else "")
    if prune.get("fine_tuned") is False:
        return f"{percent(s)} one-shot"
    return percent(s)


def _pruning_section(report: dict) -> str:
    """The run's pruning record, else each distinct record the pruned variants carry, once."""
    if report.get("prune"):
        return _record_table(report["prune"], skip=("layers",))
    seen, parts = [], []
    for v in report.get("variants") or ():
        prune = v.get("prune")
        if isinstance(prune, dict) and prune and prune not in seen:
            seen.append(prune)
            names = [x.get("name") for x in report.get("variants") or () if x.get("prune") == prune]
            parts.append(f"<p>{_e(_pruning_text(v))}: " + ", ".join(f"<code>{_e(n)}</code>" for n in names) + "</p>"
                         + _record_table(prune, skip=("layers",)))
    return "".join(parts)


def _clustering_section(report: dict) -> str:
    """The run's --cluster record: what was clustered and how, and each layer's distinct weights."""
    c = report.get("cluster")
    if not isinstance(c, dict) or not c:
        return ""
    return f"<p>{_e(clustering_text(c))}</p>" + _record_table(c.get("layers") or {})


def _checks_table(report: dict) -> str:
    rows = []
    for v in report.get("variants") or ():
        for name, chk in (v.get("checks") or {}).items():
            chk = chk if isinstance(chk, dict) else {}
            ok = chk.get("ok")
            verdict = ('<span class="pass">ok</span>' if ok else '<span class="fail">failed</span>' if ok is False
                       else '<span class="unknown">unknown</span>')
            blocking = "yes" if chk.get("blocking", True) else "no"
            rows.append(f"<tr><td><code>{_e(v.get('name'))}</code></td><td>{_e(name)}</td><td>{verdict}</td>"
                        f"<td>{blocking}</td><td>{_e(chk.get('summary', ''))}</td></tr>")
    if not rows:
        return '<p class="muted">no checks were run</p>'
    head = "".join(f"<th>{h}</th>" for h in ("variant", "check", "result", "blocking", "summary"))
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def _summary(report: dict) -> str:
    m = report.get("model") or {}
    pre = report.get("preprocessing") or {}
    f = report.get("float") or {}
    items = [
        f"model <code>{_e(m.get('source'))}</code> ({_e(m.get('flavor'))}, input {_e(tuple(m.get('input_shape') or ()))}, "
        f"{_e(m.get('classes'))} classes" + (f", {int(m['params']):,} parameters" if m.get("params") is not None else "") + ")",
        f"loaded in safe mode: {_e(safe_mode_text(m.get('safe_mode')))}",
        f"preprocessing preset <code>{_e(pre.get('preset'))}</code>"
        + (" folded into the model (it takes raw pixels)" if pre.get("folded_into_model") else ""),
    ]
    reason = (report.get("evaluation") or {}).get("not_measured")
    if reason:
        items.append(f"accuracy not measured: {_e(reason)}; sizes and latency only")
    elif f.get("top1") is not None:
        items.append(f"float model: top-1 {fmt_number(f.get('top1'))} %, top-5 {fmt_number(f.get('top5'))} % on {_e(f.get('count'))} images")
        if f.get("at_chance"):
            items.append(f'<span class="fail">{_e(at_chance_text(f["at_chance"]))}</span>')
    else:
        items.append(f"float model scored on {_e(f.get('count'))} unlabelled images (variants compared by agreement)")
    if report.get("max_drop") is not None:
        verdict = '<span class="pass">met</span>' if report.get("passed") else '<span class="fail">NOT met</span>'
        items.append(f"budget --max-drop {_e(report['max_drop'])} pts: {verdict}")
    else:
        verdict = '<span class="pass">all variants ok</span>' if report.get("passed") else '<span class="fail">some variants failed</span>'
        items.append(f"result: {verdict}")
    return "<ul>" + "".join(f"<li>{i}</li>" for i in items) + "</ul>"


def write_html(report: dict, path: PathLike, plot_png: Optional[PathLike] = None) -> Path:
    """One self-contained HTML page (inline CSS, the plot embedded as a data: URI); return ``path``."""
    path = check_parent(Path(path))
    img = ""
    if plot_png is not None:
        p = Path(plot_png)
        try:
            data = p.read_bytes()
        except OSError as exc:
            raise ConfigError(f"cannot read the plot {p} ({exc.strerror}); pass the PNG plot_accuracy_vs_size wrote") from None
        if not data.startswith(PNG_SIGNATURE):
            raise ConfigError(f"{p} is not a PNG file; pass the PNG plot_accuracy_vs_size wrote")
        b64 = base64.b64encode(data).decode("ascii")
        img = f'<h2>Accuracy vs size</h2><img class="plot" alt="accuracy vs size" src="data:image/png;base64,{b64}">'
    m = report.get("model") or {}
    errors = [f"<li><code>{_e(v.get('name'))}</code> {_status(v.get('status'))} {_e(v.get('error'))}</li>"
              for v in report.get("variants") or () if v.get("error")]
    prune = _pruning_section(report)
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>edgeresnet report: {_e(m.get('name', 'model'))}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>edgeresnet report: {_e(m.get('name', 'model'))}</h1>",
        _summary(report),
        img,
        "<h2>Variants</h2>",
        _variants_table(report),
        ('<ul class="errors">' + "".join(errors) + "</ul>") if errors else "",
        "<h2>Checks</h2>",
        _checks_table(report),
        "<h2>Calibration</h2>",
        _record_table(report.get("calibration")),
        "<h2>Evaluation</h2>",
        _record_table(report.get("evaluation")),
    ]
    if prune:
        parts += ["<h2>Pruning</h2>", prune]
    clustering = _clustering_section(report)
    if clustering:
        parts += ["<h2>Clustering</h2>", clustering]
    parts.append(
        f'<p class="muted">Written by edgeresnet {_e(report.get("edgeresnet_version"))} on {_e(report.get("created"))} '
        f"in {_e(report.get('seconds'))} s.</p></body></html>\n"
    )
    return atomic_write_text(path, "\n".join(p for p in parts if p))

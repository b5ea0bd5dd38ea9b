"""More views of a ``report.json`` dict: a CSV table, an accuracy-vs-size plot, one HTML page.

Everything here reads the dict that :func:`edgeresnet.report.RunReport.to_dict`
writes (see that module for the schema) and nothing else, so the files can be
rebuilt later from a saved ``report.json``. Every file is written atomically
(temporary name in the same folder, then a rename).

Latency is optional in a variant record; it is read from, in this order,
``latency`` (a :meth:`edgeresnet.bench.BenchResult.to_dict`), ``latency_ms``
(a number, the median, or such a dict), or ``latency_median_ms`` /
``latency_p90_ms``.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import textwrap
from pathlib import Path
from typing import Optional, Sequence, Union

from .errors import ConfigError, MissingDependencyError, OutputExistsError
from .fsutil import atomic_write_bytes, atomic_write_text

PathLike = Union[str, Path]

CSV_COLUMNS = (
    "name",
    "target",
    "precision",
    "io_type",
    "status",
    "size_bytes",
    "compressed_bytes",
    "top1",
    "top5",
    "drop_pts",
    "agreement",
    "cosine",
    "sqnr_db",
    "eval_count",
    "latency_median_ms",
    "latency_p90_ms",
    "sparsity",
    "float_layers",
    "convert_seconds",
    "interpreter",
    "checks",
    "path",
    "error",
)

#: Statuses of variants that are not plotted (no model, or a model that failed a check).
FAILED = ("convert_failed", "validation_failed")

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


# ---------------------------------------------------------------------- reading the dict


def pareto_front(points: Sequence[tuple]) -> list[int]:
    """Indices of the points no other point beats, ordered by size (smallest first).

    Each point is ``(size, accuracy)``; smaller size and higher accuracy are
    better. A point is dominated when another is at least as good on both and
    strictly better on one. Points with a None or NaN coordinate are never on
    the front. Equal points are all kept.
    """
    valid = []
    for i, p in enumerate(points):
        size, acc = p
        if size is None or acc is None or size != size or acc != acc:
            continue
        valid.append((float(size), float(acc), i))
    front = []
    for s, a, i in valid:
        dominated = any(
            (s2 <= s and a2 >= a) and (s2 < s or a2 > a) for s2, a2, j in valid if j != i
        )
        if not dominated:
            front.append((s, -a, i))
    return [i for _, _, i in sorted(front)]


def latency_of(variant: dict) -> tuple[Optional[float], Optional[float]]:
    """(median ms, p90 ms) of a variant record, None where it holds no latency."""
    for key in ("latency", "latency_ms"):
        value = variant.get(key)
        if isinstance(value, dict):
            return _num(value.get("median_ms")), _num(value.get("p90_ms"))
        if key == "latency_ms" and value is not None:
            return _num(value), _num(variant.get("latency_p90_ms"))
    return _num(variant.get("latency_median_ms")), _num(variant.get("latency_p90_ms"))


def _num(v) -> Optional[float]:
    if v is None or isinstance(v, bool):
        return None
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def accuracy_metric(report: dict) -> tuple[str, str]:
    """(variant key, axis label): top-1 when the evaluation set is labelled, else agreement with float."""
    labelled = bool((report.get("evaluation") or {}).get("labelled"))
    if labelled and any(v.get("top1") is not None for v in report.get("variants") or ()):
        return "top1", "top-1 accuracy (%)"
    return "agreement", "top-1 agreement with the float model (%)"


def _plottable(v: dict, key: str) -> bool:
    return v.get("status") not in FAILED and v.get("size_bytes") is not None and v.get(key) is not None


def _short(text, limit: int = 60) -> str:
    """Keep the end of a long path."""
    text = str(text)
    return text if len(text) <= limit else "…" + text[-(limit - 1):]


def _clip(text, limit: int = 80) -> str:
    """Keep the start of a long message."""
    text = str(text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def point_labels(variants: Sequence[dict]) -> list[str]:
    """Short marker labels: ``target/precision``, plus ``/io_type`` where that pair repeats."""
    pairs = [(v.get("target"), v.get("precision")) for v in variants]
    return [
        f"{t}/{p}" + (f"/{v.get('io_type')}" if pairs.count((t, p)) > 1 else "")
        for v, (t, p) in zip(variants, pairs)
    ]


def _check_parent(path: Path) -> Path:
    parent = path.resolve().parent
    if not parent.is_dir():
        raise OutputExistsError(f"the folder {parent} for {path.name} does not exist; create it first")
    return path


# ---------------------------------------------------------------------- plot


def plot_accuracy_vs_size(report: dict, path: PathLike) -> Path:
    """Draw accuracy against file size for every variant that produced a usable model; return ``path``.

    x is the .tflite size in KiB (log scale when sizes span more than 10x),
    y is top-1 % (labelled evaluation) or agreement with the float model %.
    Markers are labelled ``target/precision`` and coloured by target; hollow
    markers are over budget; the float model is a dashed line; the Pareto front
    (smallest size for the accuracy) is a step line. Variants that failed are
    listed under the plot instead. Uses a bare Agg ``Figure`` (no pyplot), so
    the caller's matplotlib backend is left alone.
    """
    try:
        from matplotlib import colormaps
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.lines import Line2D
    except ImportError as exc:
        raise MissingDependencyError(f"the plot needs matplotlib ({exc}); pip install matplotlib") from None
    path = _check_parent(Path(path))
    key, ylabel = accuracy_metric(report)
    variants = list(report.get("variants") or ())
    shown = [v for v in variants if _plottable(v, key)]
    left_out = [v for v in variants if not _plottable(v, key)]

    # A Figure with its own Agg canvas: no pyplot, so the caller's matplotlib backend is never changed.
    fig = Figure(figsize=(8.0, 5.5), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()

    targets = list(dict.fromkeys(v.get("target") for v in shown))
    palette = colormaps["tab10"]
    colour = {t: palette(i % 10) for i, t in enumerate(targets)}
    xs = [v["size_bytes"] / 1024 for v in shown]
    ys = [float(v[key]) for v in shown]
    for v, x, y, text in zip(shown, xs, ys, point_labels(shown)):
        c = colour[v.get("target")]
        over = v.get("status") == "over_budget"
        ax.scatter([x], [y], s=60, marker="o", facecolors="none" if over else [c], edgecolors=[c], linewidths=1.5, zorder=3)
        ax.annotate(text, (x, y), xytext=(6, 5), textcoords="offset points", fontsize=7.5, zorder=4)

    handles = [Line2D([], [], marker="o", ls="", color=colour[t], label=str(t)) for t in targets]
    if any(v.get("status") == "over_budget" for v in shown):
        handles.append(Line2D([], [], marker="o", ls="", color="grey", markerfacecolor="none", label="over budget"))

    front = pareto_front(list(zip(xs, ys)))
    if len(front) >= 2:
        (line,) = ax.step([xs[i] for i in front], [ys[i] for i in front], where="post", color="0.35",
                          lw=1.2, zorder=2, label="Pareto front")
        handles.append(line)

    float_rec = report.get("float") or {}
    ref = float_rec.get("top1") if key == "top1" else 100.0
    if ref is not None:
        what = f"float model {ref:.2f} %" if key == "top1" else "float model (100 % agreement)"
        handles.append(ax.axhline(float(ref), color="black", ls="--", lw=1.0, zorder=1, label=what))

    if xs and max(xs) > 10 * min(xs):
        ax.set_xscale("log")
    ax.margins(x=0.12, y=0.18)
    if not shown:
        ax.text(0.5, 0.5, "no variant produced a model that could be scored", ha="center", va="center",
                transform=ax.transAxes, color="0.4")
    ax.set_xlabel(".tflite size (KiB)")
    ax.set_ylabel(ylabel)
    ax.grid(True, which="both", alpha=0.25)
    if handles:
        ax.legend(handles=handles, fontsize=8, loc="best")

    model = report.get("model") or {}
    ev = report.get("evaluation") or {}
    count = ev.get("count")
    ax.set_title(
        f"{model.get('name', 'model')}: accuracy vs size\n"
        f"evaluated on {_short(ev.get('source', 'unknown'))}" + (f" ({count} images)" if count is not None else ""),
        fontsize=10,
    )

    note_lines = []
    if left_out:
        parts = []
        for v in left_out:
            why = str(v.get("status")).replace("_", " ") if v.get("status") in FAILED else f"no size or {key}"
            err = f": {_clip(v['error'], 90)}" if v.get("error") else ""
            parts.append(f"{v.get('name')} ({why}{err})")
        note_lines = textwrap.wrap("Not plotted: " + "; ".join(parts), width=140)
    bottom = 0.11 + 0.028 * len(note_lines)
    fig.subplots_adjust(left=0.1, right=0.97, top=0.89, bottom=bottom)
    if note_lines:
        fig.text(0.01, 0.01, "\n".join(note_lines), fontsize=7, va="bottom", ha="left", color="0.25")

    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return atomic_write_bytes(path, buf.getvalue())


# ---------------------------------------------------------------------- CSV


def _cell(v) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (list, tuple)):
        return ";".join(str(x) for x in v)
    if isinstance(v, dict):
        return json.dumps(v, sort_keys=True)
    return str(v)


def _checks_cell(checks: Optional[dict]) -> str:
    out = []
    for name, chk in (checks or {}).items():
        ok = chk.get("ok") if isinstance(chk, dict) else None
        out.append(f"{name}:{'ok' if ok else 'failed' if ok is False else 'unknown'}")
    return ";".join(out)


def csv_row(variant: dict) -> dict:
    """One variant record as the CSV's columns (strings; empty where unknown)."""
    median, p90 = latency_of(variant)
    float_layers = variant.get("float_layers")
    if isinstance(float_layers, (list, tuple)):
        float_layers = len(float_layers)
    row = {col: _cell(variant.get(col)) for col in CSV_COLUMNS}
    row.update(
        latency_median_ms=_cell(median),
        latency_p90_ms=_cell(p90),
        float_layers=_cell(float_layers),
        checks=_checks_cell(variant.get("checks")),
    )
    return row


def write_csv(report: dict, path: PathLike) -> Path:
    """One row per variant with the columns of :data:`CSV_COLUMNS`, in that order."""
    path = _check_parent(Path(path))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for v in report.get("variants") or ():
        writer.writerow(csv_row(v))
    return atomic_write_text(path, buf.getvalue())


# ---------------------------------------------------------------------- HTML

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
.muted{color:#777;font-size:.85em}ul.errors li{margin:.2em 0}
"""


def _e(v) -> str:
    return html.escape("–" if v is None else str(v), quote=True)


def _fmt(v, spec: str = ".2f") -> str:
    n = _num(v)
    return "–" if n is None else format(n, spec)


def _kib(n) -> str:
    return "–" if n is None else f"{n / 1024:.1f}"


def _value_html(v) -> str:
    if isinstance(v, dict):
        if not v:
            return "–"
        return "<br>".join(f"{_e(k)}: {_e(json.dumps(x) if isinstance(x, (dict, list)) else x)}" for k, x in v.items())
    if isinstance(v, (list, tuple)):
        return "<br>".join(_e(x) for x in v) if v else "–"
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
    head = ["variant", "target", "precision", "io", "size KiB", "zlib KiB"]
    head += ["top-1 %", "top-5 %", "drop pts"] if labelled else []
    head += ["agree %", "cosine", "SQNR dB"]
    head += ["median ms", "p90 ms"] if has_latency else []
    head += ["status"]
    rows = []
    for v in variants:
        cells = [f"<td><code>{_e(v.get('name'))}</code></td>", f"<td>{_e(v.get('target'))}</td>",
                 f"<td>{_e(v.get('precision'))}</td>", f"<td>{_e(v.get('io_type'))}</td>",
                 f'<td class="num">{_kib(v.get("size_bytes"))}</td>', f'<td class="num">{_kib(v.get("compressed_bytes"))}</td>']
        nums = [_fmt(v.get("top1")), _fmt(v.get("top5")), _fmt(v.get("drop_pts"))] if labelled else []
        nums += [_fmt(v.get("agreement")), _fmt(v.get("cosine"), ".4f"), _fmt(v.get("sqnr_db"), ".1f")]
        if has_latency:
            med, p90 = latency_of(v)
            nums += [_fmt(med, ".3f"), _fmt(p90, ".3f")]
        cells += [f'<td class="num">{n}</td>' for n in nums]
        cells.append(f"<td>{_status(v.get('status'))}</td>")
        rows.append(f'<tr class="row-{_e(v.get("status"))}">' + "".join(cells) + "</tr>")
    header = "".join(f"<th>{_e(h)}</th>" for h in head)
    return f'<table class="variants"><thead><tr>{header}</tr></thead><tbody>{"".join(rows)}</tbody></table>'


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
        f"preprocessing preset <code>{_e(pre.get('preset'))}</code>"
        + (" folded into the model (it takes raw pixels)" if pre.get("folded_into_model") else ""),
    ]
    if f.get("top1") is not None:
        items.append(f"float model: top-1 {_fmt(f.get('top1'))} %, top-5 {_fmt(f.get('top5'))} % on {_e(f.get('count'))} images")
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
    path = _check_parent(Path(path))
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
    prune = report.get("prune")
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
        parts += ["<h2>Pruning</h2>", _record_table(prune, skip=("layers",))]
    parts.append(
        f'<p class="muted">Written by edgeresnet {_e(report.get("edgeresnet_version"))} on {_e(report.get("created"))} '
        f"in {_e(report.get('seconds'))} s.</p></body></html>\n"
    )
    return atomic_write_text(path, "\n".join(p for p in parts if p))


def write_all(report: dict, folder: PathLike) -> dict[str, Path]:
    """Write ``report.csv``, ``accuracy_vs_size.png`` and ``report.html`` into ``folder``."""
    folder = Path(folder)
    csv_path = write_csv(report, folder / "report.csv")
    png = plot_accuracy_vs_size(report, folder / "accuracy_vs_size.png")
    page = write_html(report, folder / "report.html", png)
    return {"csv": csv_path, "plot": png, "html": page}

"""The CSV view of a ``report.json`` dict (``report.csv``): one row per variant.

Reads the dict that :meth:`edgeresnet.report.RunReport.to_dict` writes and
nothing else; the file is written atomically.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Optional, Union

from edgeresnet._util.files import atomic_write_text
from edgeresnet.report.markdown import fine_tune_text
from edgeresnet.report.reading import cluster_count, latency_of, point_labels, prune_sparsity
from edgeresnet.report.writers import check_parent

PathLike = Union[str, Path]

CSV_COLUMNS = (
    "name",
    "label",
    "target",
    "precision",
    "io_type",
    "status",
    "size_bytes",
    "compressed_bytes",
    "top1",
    "top5",
    "drop_pts",
    "drop_margin_pts",
    "agreement",
    "cosine",
    "sqnr_db",
    "eval_count",
    "latency_median_ms",
    "latency_p90_ms",
    "prune_sparsity",
    "clusters",
    "fine_tune",
    "weight_sparsity",
    "float_layers",
    "convert_seconds",
    "interpreter",
    "checks",
    "path",
    "error",
)


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


def csv_row(variant: dict, label: Optional[str] = None) -> dict:
    """One variant record as the CSV's columns (strings; empty where unknown).

    ``label`` is the plot's name for it (see :func:`point_labels`, which needs
    all the variants to tell apart repeated target/precision pairs); by
    default the variant is labelled on its own.
    """
    median, p90 = latency_of(variant)
    float_layers = (variant.get("recovery") or {}).get("float_layers")
    if isinstance(float_layers, (list, tuple)):
        float_layers = len(float_layers)
    row = {col: _cell(variant.get(col)) for col in CSV_COLUMNS}
    row.update(
        latency_median_ms=_cell(median),
        latency_p90_ms=_cell(p90),
        float_layers=_cell(float_layers),
        checks=_checks_cell(variant.get("checks")),
        label=label if label is not None else point_labels([variant])[0],
        prune_sparsity=_cell(prune_sparsity(variant)),
        clusters=_cell(cluster_count(variant)),
        fine_tune=fine_tune_text(variant) if variant.get("fine_tune") else "",
    )
    return row


def write_csv(report: dict, path: PathLike) -> Path:
    """One row per variant with the columns of :data:`CSV_COLUMNS`, in that order."""
    path = check_parent(Path(path))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    variants = list(report.get("variants") or ())
    for v, label in zip(variants, point_labels(variants)):
        writer.writerow(csv_row(v, label))
    return atomic_write_text(path, buf.getvalue())



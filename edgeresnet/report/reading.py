"""What every view of a ``report.json`` dict reads from it: labels, pruning, clustering, latency, the accuracy metric.

The CSV table, the plot and the HTML page (``csv_table.py``, ``plot.py``,
``html.py``) name a variant, its pruning and its latency the same way; this
module is the one place that says how. Latency is optional in a variant
record: ``latency``, a :meth:`edgeresnet.device.bench.BenchResult.to_dict`.
"""

from __future__ import annotations

import re
from typing import Optional, Sequence

from edgeresnet.report.markdown import as_number, is_qat


def latency_of(variant: dict) -> tuple[Optional[float], Optional[float]]:
    """(median ms, p90 ms) of a variant record, None where it holds no latency."""
    value = variant.get("latency") or {}
    return as_number(value.get("median_ms")), as_number(value.get("p90_ms"))


def accuracy_metric(report: dict) -> tuple[str, str]:
    """(variant key, axis label): top-1 when the evaluation set is labelled, else agreement with float."""
    labelled = bool((report.get("evaluation") or {}).get("labelled"))
    if labelled and any(v.get("top1") is not None for v in report.get("variants") or ()):
        return "top1", "top-1 accuracy (%)"
    return "agreement", "top-1 agreement with the float model (%)"



#: The tag the pipeline puts in a pruned variant's file name: ``_pruned50_``.
_PRUNED_TAG = re.compile(r"_pruned(\d{1,3})(?=[_.]|$)")


def prune_sparsity(variant: dict) -> Optional[float]:
    """The sparsity (0..1) a variant was pruned to, None for a dense one.

    Read from the variant's ``prune`` record (its ``sparsity``, else
    ``config.sparsity``), else from a ``_prunedNN_`` tag in its name.
    """
    prune = variant.get("prune")
    if isinstance(prune, dict):
        for value in (prune.get("sparsity"), (prune.get("config") or {}).get("sparsity")):
            s = as_number(value)
            if s is not None:
                return s
    match = _PRUNED_TAG.search(str(variant.get("name") or ""))
    return int(match.group(1)) / 100 if match else None


def cluster_count(variant: dict) -> Optional[int]:
    """The clusters per kernel of a variant made with ``--cluster N`` (its ``cluster`` record), None otherwise."""
    cluster = variant.get("cluster")
    n = as_number(cluster.get("clusters")) if isinstance(cluster, dict) else None
    return None if n is None else int(n)


def percent(fraction: float) -> str:
    """A fraction (0..1) as a percentage with at most one decimal: ``50%``, ``12.5%``."""
    return f"{round(fraction * 100, 1):g}%"


def point_labels(variants: Sequence[dict]) -> list[str]:
    """Short marker labels: ``target/precision``, ``/io_type`` where that repeats, `` pruned 50%`` when pruned,
    `` 16 clusters`` when clustered, `` QAT`` when quantization-aware trained."""
    sparsities = [prune_sparsity(v) for v in variants]
    keys = [(v.get("target"), v.get("precision"), s, is_qat(v), cluster_count(v)) for v, s in zip(variants, sparsities)]
    labels = []
    for v, k, s in zip(variants, keys, sparsities):
        text = f"{k[0]}/{k[1]}" + (f"/{v.get('io_type')}" if keys.count(k) > 1 else "")
        text += (f" pruned {percent(s)}" if s is not None else "") + (f" {k[4]} clusters" if k[4] is not None else "")
        labels.append(text + (" QAT" if k[3] else ""))
    return labels


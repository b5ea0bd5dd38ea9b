"""Accuracy drift of an emitted model against the float model.

All numbers compare outputs on the *same* images: top-1/top-5 against labels
when they exist, and always top-1 agreement with the float model, mean cosine
similarity and SQNR of the output vectors. Percentages are in points (0..100).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Optional

import numpy as np

SQNR_CAP_DB = 200.0

def topk_accuracy(outputs: np.ndarray, labels: np.ndarray, k: int = 1) -> float:
    """Percentage of rows whose label is among the ``k`` highest outputs."""
    outputs = np.asarray(outputs)
    labels = np.asarray(labels)
    if len(outputs) == 0:
        return float("nan")
    k = min(k, outputs.shape[1])
    top = np.argsort(-outputs, axis=1, kind="stable")[:, :k]
    return float(100.0 * np.mean(np.any(top == labels[:, None], axis=1)))


def agreement(reference: np.ndarray, candidate: np.ndarray) -> float:
    """Percentage of rows where both models give the same top-1 class."""
    if len(reference) == 0:
        return float("nan")
    return float(100.0 * np.mean(np.argmax(reference, 1) == np.argmax(candidate, 1)))


def cosine_similarity(reference: np.ndarray, candidate: np.ndarray) -> float:
    """Mean cosine similarity of per-row output vectors."""
    a = np.asarray(reference, np.float64).reshape(len(reference), -1)
    b = np.asarray(candidate, np.float64).reshape(len(candidate), -1)
    num = np.sum(a * b, axis=1)
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    cos = np.where(den > 0, num / np.where(den > 0, den, 1.0), 1.0)
    return float(np.mean(cos))


def sqnr_db(reference: np.ndarray, candidate: np.ndarray) -> float:
    """Signal-to-quantization-noise ratio of the outputs, in dB (higher is better).

    Identical outputs have no noise; the value is capped at ``SQNR_CAP_DB`` so
    it stays a finite number in JSON.
    """
    ref = np.asarray(reference, np.float64)
    noise = np.sum((ref - np.asarray(candidate, np.float64)) ** 2)
    signal = np.sum(ref**2)
    if noise == 0:
        return SQNR_CAP_DB
    return float(min(SQNR_CAP_DB, 10.0 * np.log10(signal / noise)))


@dataclass(frozen=True)
class Drift:
    """How far one model's outputs are from the float model's on the same images."""

    count: int
    top1: Optional[float]
    top5: Optional[float]
    drop_pts: Optional[float]  # float top-1 minus this top-1 (positive = worse)
    agreement: float
    cosine: float
    sqnr_db: float
    drop_margin_pts: Optional[float] = None  # half-width of drop_pts's 95 % interval (drop_margin)

    def to_dict(self) -> dict:
        return {k: _round(v) for k, v in asdict(self).items()}


@dataclass(frozen=True)
class Baseline:
    """The float model's own scores on the evaluation images."""

    count: int
    top1: Optional[float]
    top5: Optional[float]

    def to_dict(self) -> dict:
        return {k: _round(v) for k, v in asdict(self).items()}


def _round(v):
    if isinstance(v, float):
        return None if not np.isfinite(v) else round(v, 4)
    return v


def baseline(float_outputs: np.ndarray, labels: Optional[np.ndarray]) -> Baseline:
    if labels is None:
        return Baseline(len(float_outputs), None, None)
    return Baseline(
        len(float_outputs), topk_accuracy(float_outputs, labels, 1), topk_accuracy(float_outputs, labels, 5)
    )


def drift(
    float_outputs: np.ndarray, outputs: np.ndarray, labels: Optional[np.ndarray] = None
) -> Drift:
    """Compare one model's outputs with the float model's (and the labels if any)."""
    if float_outputs.shape != outputs.shape:
        raise ValueError(f"output shapes differ: {float_outputs.shape} vs {outputs.shape}")
    top1 = top5 = drop = margin = None
    if labels is not None:
        top1 = topk_accuracy(outputs, labels, 1)
        top5 = topk_accuracy(outputs, labels, 5)
        drop = topk_accuracy(float_outputs, labels, 1) - top1
        margin = drop_margin(float_outputs, outputs, labels)
    return Drift(
        count=len(outputs),
        top1=top1,
        top5=top5,
        drop_pts=drop,
        agreement=agreement(float_outputs, outputs),
        cosine=cosine_similarity(float_outputs, outputs),
        sqnr_db=sqnr_db(float_outputs, outputs),
        drop_margin_pts=margin,
    )


def drop_margin(float_outputs: np.ndarray, outputs: np.ndarray, labels: np.ndarray) -> float:
    """Half-width, in points, of the 95 % confidence interval of the drop (float top-1 minus this top-1).

    Both models answer the same images, so the drop is a paired difference:
    only the images one model gets right and the other wrong move it (``b``:
    float right and this one wrong, ``c`` the other way round). Over ``n``
    images its standard error is ``sqrt(b + c - (b - c)^2 / n) / n`` (the
    normal approximation McNemar's test rests on), and 1.96 of them make the
    95 % margin. A drop smaller than its margin is not distinguishable from
    none on these images.
    """
    return paired_margin(np.argmax(float_outputs, 1) == labels, np.argmax(outputs, 1) == labels)


def paired_margin(float_right: np.ndarray, right: np.ndarray) -> float:
    """:func:`drop_margin` from which images each model gets right (two boolean arrays over the same images)."""
    n = len(right)
    if n == 0:
        return float("nan")
    b = float(np.sum(float_right & ~right))
    c = float(np.sum(~float_right & right))
    return float(100.0 * 1.96 * np.sqrt(max(b + c - (b - c) ** 2 / n, 0.0)) / n)


def unpaired_margin(top1: float, count: int, other_top1: float, other_count: int) -> float:
    """Half-width, in points, of the 95 % interval of ``other_top1 - top1`` measured on two independent sets of
    images (``count`` and ``other_count`` of them; top-1s in %): 1.96 standard errors of a difference of two
    proportions. Wider than :func:`drop_margin`, which pairs the answers image by image."""
    p, q = top1 / 100.0, other_top1 / 100.0
    return float(100.0 * 1.96 * np.sqrt(p * (1 - p) / count + q * (1 - q) / other_count))


def over_budget(d: Drift, max_drop: Optional[float]) -> bool:
    """True when the drop exceeds ``max_drop`` points.

    Without labels the drop is measured as disagreement with the float model
    (100 - agreement), which bounds the top-1 change from above.
    """
    if max_drop is None:
        return False
    drop = d.drop_pts if d.drop_pts is not None else 100.0 - d.agreement
    return drop > max_drop + 1e-9


CHANCE_SDS = 2.0  # how many binomial standard deviations above chance still count as "at chance"


def at_chance(base: Baseline, classes: int) -> Optional[dict]:
    """Whether the float model's top-1 is at or near chance: its drift figures then mean nothing.

    A model that learned nothing is right on each image with probability
    1/classes, so its top-1 over n images is binomial: mean 100/classes %,
    standard deviation 100 * sqrt(p (1 - p) / n). A top-1 up to
    :data:`CHANCE_SDS` deviations above the mean is "at chance" (such a model
    scores above it about 2 % of the time). Returns the figures, or None
    (above it, unlabelled data, or fewer than two classes).
    """
    if base.top1 is None or not base.count or classes < 2:
        return None
    p = 1.0 / classes
    threshold = 100.0 * (p + CHANCE_SDS * np.sqrt(p * (1.0 - p) / base.count))
    if base.top1 > threshold:
        return None
    return {"top1": _round(base.top1), "chance": _round(100.0 * p), "threshold": _round(float(threshold)),
            "count": base.count, "classes": classes}

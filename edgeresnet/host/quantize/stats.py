"""The statistics pass: every statistic the int8 methods use, from one float pass over the calibration samples.

:class:`StatsPass` runs the calibrated float model (``graph.py``) over the
samples in batches and collects, at once, every tensor's min/max, activation
histograms (:class:`Histogram`), layer input means, the kept inputs of
average pools, the per-channel maxima equalization reads and the input
correlations (from :func:`sample_patches`) GPTQ rounds with. What each method
does with them lives in its own module.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np

from edgeresnet.host.quantize.config import QuantOptConfig
from edgeresnet.host.quantize.equalize import chain_heads
from edgeresnet.host.quantize.graph import (
    AVERAGE_POOL_2D, FIXED_RANGE_OPS, FULLY_CONNECTED, SOFTMAX, TFLITE_FLOAT32, Graph, Layer, run_probe,
)


def _range_tensors(graph: Graph) -> list[int]:
    """The float tensors the calibrator gives a min/max (graph inputs apart: their range is the data's)."""
    return [
        i for i in range(len(graph.sg.tensors))
        if i not in graph.inputs and graph.has_range(i) and graph.sg.tensors[i].type == TFLITE_FLOAT32
    ]


def measure_ranges(graph: Graph, samples: np.ndarray, tick) -> None:
    """Every calibrated tensor's min/max over all samples, as the converter's calibrator records them.

    The calibrator logs the plain minimum and maximum of each float tensor
    over every sample it is fed, one sample at a time; this measures the same
    in batched, multi-threaded float inference and writes them into the model
    (the statistics pass, :class:`StatsPass`, with nothing else to collect).
    """
    stats = StatsPass(graph, [], samples, {}, QuantOptConfig(), False)
    stats.run(tick)
    stats.write_ranges()


def _write_range(graph: Graph, i: int, lo: float, hi: float) -> None:
    q = graph.sg.tensors[i].quantization
    q.min = np.array([lo], np.float32)
    q.max = np.array([hi], np.float32)


def _pow2_above(x: float) -> float:
    """The smallest power of two above ``x`` (and above 1e-8): where a histogram side's range R ends up."""
    return math.ldexp(1.0, math.frexp(max(float(x), 1e-8))[1])


class Histogram:
    """Counts of a tensor's values, both signs, exact zeros apart.

    Each side covers [0, R) in ``bins/2`` equal bins; R doubles (merging bin
    pairs) whenever a larger value arrives, so bin edges stay aligned with 0.
    Unless given, R starts at the power of two above the first values added,
    so it ends as the power of two above the largest value whatever the order
    and batching of the samples: the same values give the same counts (an R
    taken from the first batch as is gave bin edges, and MSE ranges, that
    depended on which samples came first), and a bin is at most 2 * max / bins
    wide. Large tensors are subsampled
    (every ``step``-th run of ``RUN`` consecutive values, each value counting
    for the share it stands for), except their tails (beyond R/4), which are
    always counted in full: the few largest values decide the clipping error.
    """

    MAX_VALUES = 1 << 14  # per tensor and sample before subsampling (ResNet-50: the same MSE ranges as counting all)
    RUN = 256  # consecutive values kept together when subsampling (contiguous reads are cheap)
    TAIL = 0.25

    def __init__(self, bins: int, lo: Optional[float] = None, hi: Optional[float] = None):
        self.k = bins // 2
        self.r = None if lo is None else [max(hi, 1e-8), max(-lo, 1e-8)]  # None: set by the first values added
        self.counts = [np.zeros(self.k), np.zeros(self.k)]
        self.zeros = 0.0
        self.vmin = 0.0
        self.vmax = 0.0
        self.offset = 0

    def _grow(self, side: int, top: float) -> None:
        while top >= self.r[side]:
            c = self.counts[side].reshape(self.k // 2, 2).sum(1)
            self.counts[side] = np.concatenate([c, np.zeros(self.k // 2)])
            self.r[side] *= 2.0

    def _count(self, side: int, a: np.ndarray, weight: float) -> None:
        if a.size:
            idx = np.minimum((a * (self.k / self.r[side])).astype(np.int64), self.k - 1)
            self.counts[side] += weight * np.bincount(idx, minlength=self.k)

    def add(self, v: np.ndarray, samples: int = 1, vmin: Optional[float] = None, vmax: Optional[float] = None) -> None:
        """Count the values ``v`` of ``samples`` samples (each may keep ``MAX_VALUES`` before subsampling).

        ``vmin``/``vmax``: the values' minimum and maximum when the caller already knows them.
        """
        v = v.reshape(-1)
        if not v.size:
            return
        if vmin is None or vmax is None:
            vmin, vmax = float(v.min()), float(v.max())
        self.vmin, self.vmax = min(self.vmin, vmin), max(self.vmax, vmax)
        if self.r is None:
            self.r = [_pow2_above(vmax), _pow2_above(-vmin)]
        if vmax > 0:
            self._grow(0, vmax)
        if vmin < 0:
            self._grow(1, -vmin)
        tail, weight = None, 1.0
        if v.size > self.MAX_VALUES * samples:
            t_pos, t_neg = self.r[0] * self.TAIL, self.r[1] * self.TAIL
            if vmax >= t_pos:
                self._count(0, v[np.flatnonzero(v >= t_pos)], 1.0)
            if vmin <= -t_neg:
                self._count(1, -v[np.flatnonzero(v <= -t_neg)], 1.0)
            tail = int(self.k * self.TAIL)  # the bins from here on hold the tails: already counted
            v, weight = self._subsample(v, samples)
        zeros = v.size - np.count_nonzero(v)
        if vmin >= 0:  # no negative values (a ReLU's output): one side
            counts = [np.bincount(np.minimum((v * np.float32(self.k / self.r[0])).astype(np.int32), self.k - 1),
                                  minlength=self.k), None]
        else:
            neg = v < 0
            scaled = np.abs(v) * np.where(neg, np.float32(self.k / self.r[1]), np.float32(self.k / self.r[0]))
            both = np.bincount(np.minimum(scaled.astype(np.int32), self.k - 1) + self.k * neg, minlength=2 * self.k)
            counts = [both[: self.k], both[self.k :]]
        counts[0][0] -= zeros  # exact zeros fell in the first positive bin
        for side, c in enumerate(counts):
            if c is not None:
                if tail is not None:
                    c[tail:] = 0
                self.counts[side] += weight * c
        self.zeros += weight * float(zeros)

    def _subsample(self, v: np.ndarray, samples: int) -> tuple[np.ndarray, float]:
        """Every ``step``-th run of ``RUN`` values (the first run rotating between calls), and the share each stands for."""
        runs = v.size // self.RUN
        step = int(math.ceil(v.size / (self.MAX_VALUES * samples)))
        kept = v[: runs * self.RUN].reshape(runs, self.RUN)[self.offset % step :: step].reshape(-1)
        self.offset += 1
        return kept, v.size / max(kept.size, 1)

    def values_and_counts(self) -> tuple[np.ndarray, np.ndarray, float]:
        """Bin centres (ascending), their counts, and the number of exact zeros."""
        if self.r is None:
            return np.zeros(0), np.zeros(0), self.zeros
        wp, wn = self.r[0] / self.k, self.r[1] / self.k
        cp = (np.arange(self.k) + 0.5) * wp
        cn = -(np.arange(self.k)[::-1] + 0.5) * wn
        c = np.concatenate([cn, cp])
        n = np.concatenate([self.counts[1][::-1], self.counts[0]])
        keep = n > 0
        return c[keep], n[keep], self.zeros


@dataclass
class Stats:
    """What the statistics pass measured (see :class:`StatsPass`)."""

    lo: dict  # calibrated tensor -> minimum over the samples
    hi: dict  # ... and maximum
    hist: dict  # activation tensor -> Histogram ("stats" samples)
    mean_inputs: dict  # layer input tensor -> mean input (1, H, W, C) or (1, C) ("stats" samples)
    pooled: dict  # tensor read only by AVERAGE_POOL_2D (or only by SOFTMAX) -> (those ops, kept samples)
    channel_max: dict  # equalization chain head -> per-channel max |value| ("equalize" samples)
    hessians: dict  # weight tensor -> E[p p^T] over its layer's input patches ("gptq" samples)


def _pool_inputs(graph: Graph) -> dict[int, list]:
    """Activation tensors read only by AVERAGE_POOL_2D ops (whose output shares their scale), or only by
    SOFTMAX (whose output the model's answer is): their ranges are scored on those ops' outputs."""
    out = {}
    for i in graph.activation_tensors():
        cons = graph.consumers.get(i, [])
        for kind in (AVERAGE_POOL_2D, SOFTMAX):
            if cons and all(code == kind for code, _ in cons):
                out[i] = [op for _, op in cons]
    return out


POOL_KEEP = 64  # "stats" samples of each average-pool (or softmax) input kept to score its range on that op's output


class StatsPass:
    """Every statistic the int8 methods use, from ONE batched float pass over the calibration samples.

    Each batch of the float model (every tensor that is measured made a graph
    output) feeds all collectors at once: the min/max of every calibrated
    tensor over all samples (what the converter's calibrator records; a
    tensor with a histogram over its samples only, as its range comes from
    the histogram, and samples that feed no statistic are not run), and on
    the evenly spread subsets ``subsets`` names (sample indices): ``"stats"``
    the activation histograms, the kept average-pool (and softmax) inputs and, with
    ``want_means``, every weight layer's mean input; ``"equalize"`` the
    per-channel maxima of the equalization chains' heads; ``"gptq"`` the
    GPTQ input correlations. When equalization rescales the model (measured on
    the "equalize" samples, which run first), :meth:`run` starts again on the
    rescaled model.
    """

    def __init__(self, graph: Graph, layers: list, samples: np.ndarray, subsets: dict, cfg: QuantOptConfig,
                 want_means: bool):
        self.graph, self.samples, self.cfg = graph, samples, cfg
        n = len(samples)
        self.rows = {key: np.isin(np.arange(n), subsets.get(key, ())) for key in ("stats", "equalize", "gptq")}
        want = {key: bool(mask.any()) for key, mask in self.rows.items()}
        self.range_tensors = _range_tensors(graph)
        self.acts = graph.activation_tensors() if want["stats"] else []
        self.pools = _pool_inputs(graph) if want["stats"] else {}
        self.mean_layers = sorted({layer.x for layer in layers}) if want["stats"] and want_means else []
        self.heads = chain_heads(graph) if want["equalize"] else []
        self.gptq_layers = list(layers) if want["gptq"] else []
        self.stats = Stats({}, {}, {}, {}, {}, {}, {})
        self._mean_sums: dict = {}
        self._mean_count = self._pool_rows = 0
        self._gptq_rows: dict = {}

    # the pass -----------------------------------------------------------
    def run(self, tick, rescale: Optional[Callable[[dict], set]] = None) -> Stats:
        """Measure everything over all samples.

        ``rescale(channel_max)`` (equalization) is called once the "equalize" samples, which go first, are
        measured; when it changes the model (returns the rescaled tensors), the pass starts again on the
        rescaled model, so every statistic describes the model that is quantized. Only the samples seen
        before that point are run twice.
        """
        acts, pools, means, heads, gptq = self.acts, self.pools, self.mean_layers, self.heads, self.gptq_layers
        self._reset(acts, pools, means, gptq)
        # Histogram tensors take their range from the histogram (min/max matter on its samples only), and
        # fixed-range outputs (softmax) none: the other samples run only when some tensor's min/max is used.
        own_range = set(acts) | {int(op.outputs[0]) for code, op in self.graph.ops if code in FIXED_RANGE_OPS}
        everywhere = [i for i in self.range_tensors if i not in own_range]
        eq, st = self.rows["equalize"], self.rows["stats"] | self.rows["gptq"]
        order = np.arange(len(self.samples))
        rows = np.concatenate([order[eq], order[st & ~eq]] + ([order[~(st | eq)]] if everywhere else []))
        tick.section(tick.what, len(rows))
        lo, hi = self.stats.lo, self.stats.hi
        for i in self.range_tensors:
            lo[i], hi[i] = np.inf, -np.inf
        heads_left = int(eq.sum()) if heads and rescale is not None else 0

        def visit(values, batch_rows):
            nonlocal heads_left
            sel = self.rows["stats"][batch_rows]
            extremes = {}
            for i in self.range_tensors if sel.any() or not acts else everywhere:
                v = values[i]
                extremes[i] = float(v.min()), float(v.max())
                lo[i], hi[i] = min(lo[i], extremes[i][0]), max(hi[i], extremes[i][1])
            self._visit_stats(values, sel, acts, pools, means, extremes)
            self._visit_heads(values, eq[batch_rows], heads)
            self._visit_gptq(values, self.rows["gptq"][batch_rows], gptq, batch_rows)
            if heads_left:
                heads_left -= int(eq[batch_rows].sum())
                if not heads_left and rescale(self.stats.channel_max):
                    return True  # the model changed under the pass: stop, and measure it again
            return False

        tensors = sorted(set(self.range_tensors) | set(acts) | set(pools) | set(means) | set(heads)
                         | {layer.x for layer in gptq})
        if run_probe(self.graph, tensors, self.samples, visit, tick, rows):
            self.heads = []
            tick.what = "calibration images, equalized"
            return self.run(tick)
        self._finish(means, gptq)
        return self.stats

    def _reset(self, acts, pools, means, gptq) -> None:
        st = self.stats
        for i in acts:
            st.hist[i] = Histogram(self.cfg.bins)
        for i in pools:
            st.pooled[i] = (self.pools[i], [])
        self._pool_rows = 0 if pools else self._pool_rows
        for i in means:
            self._mean_sums[i] = None
        self._mean_count = 0
        for layer in gptq:
            st.hessians[layer.w] = None
        self._gptq_rows = {layer.w: 0 for layer in gptq}

    def _visit_stats(self, values, sel, acts, pools, means, extremes) -> None:
        n = int(sel.sum())
        if not n:
            return
        whole = n == len(sel)  # the batch's min/max are these samples' own
        picked = {i: values[i] if whole else values[i][sel] for i in set(acts) | set(pools) | set(means)}
        for i in acts:
            self.stats.hist[i].add(picked[i], n, *(extremes.get(i, (None, None)) if whole else (None, None)))
        room = POOL_KEEP - self._pool_rows
        if room > 0 and pools:
            for i in pools:
                self.stats.pooled[i][1].append(picked[i][:room].astype(np.float32, copy=True))
            self._pool_rows += min(room, n)
        for i in means:
            s = picked[i].sum(0, keepdims=True, dtype=np.float64)
            self._mean_sums[i] = s if self._mean_sums[i] is None else self._mean_sums[i] + s
        self._mean_count += n

    def _visit_heads(self, values, sel, heads) -> None:
        if not sel.any():
            return
        for i in heads:
            v = values[i][sel]
            m = np.abs(v.reshape(-1, v.shape[-1])).max(0)
            cur = self.stats.channel_max.get(i)
            self.stats.channel_max[i] = m if cur is None else np.maximum(cur, m)

    def _visit_gptq(self, values, sel, layers, batch_rows) -> None:
        shapes = {layer.w: self.graph.const(layer.w).shape for layer in layers}
        for j in np.flatnonzero(sel):  # each sample's patches drawn from its own seeded stream (any order)
            rng = np.random.default_rng((self.cfg.seed, int(batch_rows[j])))
            for layer in layers:
                P = sample_patches(layer, values[layer.x][j : j + 1], shapes[layer.w], self.cfg.gptq_rows, rng).astype(np.float32)
                h = (P.T @ P).astype(np.float64)
                cur = self.stats.hessians[layer.w]
                self.stats.hessians[layer.w] = h if cur is None else cur + h
                self._gptq_rows[layer.w] += len(P)

    def _finish(self, means, gptq) -> None:
        st = self.stats
        for i in means:
            if self._mean_sums[i] is not None:
                st.mean_inputs[i] = (self._mean_sums[i] / self._mean_count).astype(np.float32)
        for layer in gptq:
            if st.hessians[layer.w] is None:
                del st.hessians[layer.w]
            else:
                st.hessians[layer.w] = st.hessians[layer.w] / max(self._gptq_rows[layer.w], 1)
        for i, (ops, kept) in list(st.pooled.items()):
            if not kept:
                del st.pooled[i]

    def write_ranges(self) -> None:
        """The measured min/max into the model: every calibrated tensor's, the graph inputs' from the data."""
        for i in self.range_tensors:
            if i in self.stats.lo and np.isfinite(self.stats.lo[i]):  # not measured (fixed-range): left as it is
                _write_range(self.graph, i, self.stats.lo[i], self.stats.hi[i])
        for i in self.graph.inputs:
            if self.graph.has_range(i):
                _write_range(self.graph, i, float(self.samples.min()), float(self.samples.max()))


def sample_patches(layer: Layer, x: np.ndarray, w_shape: tuple, n: int, rng) -> np.ndarray:
    """Up to ``n`` input patches (rows laid out like the weights: kh, kw, cin) of one sample."""
    if layer.kind == FULLY_CONNECTED:
        rows = x.reshape(-1, w_shape[1])
        return rows if len(rows) <= n else rows[rng.choice(len(rows), n, replace=False)]
    _, kh, kw, cin = w_shape
    o = layer.options
    sh, sw, dh, dw = o.strideH, o.strideW, o.dilationHFactor, o.dilationWFactor
    h, wd = x.shape[1], x.shape[2]
    ekh, ekw = (kh - 1) * dh + 1, (kw - 1) * dw + 1
    if o.padding == 0:  # SAME
        oh, ow = -(-h // sh), -(-wd // sw)
        ph = max((oh - 1) * sh + ekh - h, 0)
        pw = max((ow - 1) * sw + ekw - wd, 0)
        xp = np.pad(x[0], ((ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2), (0, 0)))
    else:
        oh, ow = (h - ekh) // sh + 1, (wd - ekw) // sw + 1
        xp = x[0]
    count = oh * ow
    pick = np.arange(count) if count <= n else rng.choice(count, n, replace=False)
    r, c = (pick // ow) * sh, (pick % ow) * sw
    ki, kj = np.meshgrid(np.arange(kh) * dh, np.arange(kw) * dw, indexing="ij")
    patches = xp[r[:, None, None] + ki[None], c[:, None, None] + kj[None]]  # (n, kh, kw, cin)
    return patches.reshape(len(pick), -1)

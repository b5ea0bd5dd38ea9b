"""``mse``: error-minimising activation ranges, after equalizing outlier channels.

1. Equalization: a channel whose range dwarfs the rest of its tensor is scaled
   down, and the next layer's matching input weights up, which keeps the float
   function (cross-layer equalization). Applied only to real outliers; see
   ``equalize.py``.
2. The engine's one float pass over the calibration samples (in the TFLite
   interpreter, every activation made a graph output) records, besides every
   tensor's min/max, a histogram per tensor on an evenly spread subset (and,
   for the methods built on this one, the mean input of every convolution and
   fully-connected layer). Tensors equalization rescaled are measured again.
3. Ranges (:func:`set_ranges`): each activation range becomes the one that
   minimises the expected squared error of int8 rounding plus clipping on its
   histogram (:func:`mse_range`). A tensor read by ``AVERAGE_POOL_2D`` (whose
   int8 output must share its input's scale) is scored on the pooled output
   instead; ops whose output shares its input's scale get the input's range.
   Graph inputs and outputs keep theirs.
"""

from __future__ import annotations

import numpy as np

from edgeresnet._util import tf as _tf
from edgeresnet.host.quantize.equalize import equalize
from edgeresnet.host.quantize.graph import (
    AVERAGE_POOL_2D, EXPAND_DIMS, FIXED_RANGE_OPS, MAX_POOL_2D, PAD, PADV2, RESHAPE, SLICE, SOFTMAX, SQUEEZE, STRIDED_SLICE,
    TRANSPOSE, Graph,
)
from edgeresnet.host.quantize.registry import Method, register_method
from edgeresnet.host.quantize.stats import Histogram, Stats

_NONE = np.zeros(0, np.int64)


# The int8 kernels of these ops require the output to share the input's scale
# and zero point; the quantizer propagates one to the other. We give the
# output the input's chosen range so both agree.
_SAME_SCALE_OPS = {
    AVERAGE_POOL_2D, MAX_POOL_2D, RESHAPE, SQUEEZE, EXPAND_DIMS,
    PAD, PADV2, TRANSPOSE, SLICE, STRIDED_SLICE,
}


@register_method
class Mse(Method):
    name = "mse"
    description = "error-minimising activation ranges and outlier-channel equalization"
    def subsets(self, n, cfg):
        from edgeresnet.host.quantize.engine import spread

        return {
            "stats": spread(n, cfg.stats_samples),
            "equalize": spread(n, cfg.equalize_samples) if cfg.equalize else _NONE,
        }

    def rescale(self, graph, channel_max):
        return equalize(graph, channel_max)

    def edit(self, graph, layers, measured, cfg, tick):
        self.set_weights(graph, layers, measured.stats)
        set_ranges(graph, measured.stats)

    def set_weights(self, graph, layers, stats) -> None:
        """Weights stay as calibrated (the quantizer rounds them to nearest)."""


def _int8_grid(lo, hi):
    """Scale and representable interval of TFLite's asymmetric int8 for [lo, hi] (vectorised)."""
    lo = np.minimum(lo, 0.0)
    hi = np.maximum(hi, 0.0)
    scale = np.maximum((hi - lo) / 255.0, 1e-12)
    zp = np.clip(np.round(-128.0 - lo / scale), -128, 127)
    return scale, (-128.0 - zp) * scale, (127.0 - zp) * scale


def mse_range(h: Histogram, grid: int = 48, min_frac: float = 0.1) -> tuple[float, float]:
    """[lo, hi] minimising rounding noise (scale^2/12 inside) plus clipping error (outside)."""
    c, n, _ = h.values_and_counts()
    if len(c) == 0 or (h.vmin >= 0 and h.vmax <= 0):
        return h.vmin, h.vmax
    fr = np.linspace(min_frac, 1.0, grid)
    his = h.vmax * fr if h.vmax > 0 else np.zeros(1)
    los = h.vmin * fr if h.vmin < 0 else np.zeros(1)
    lo, hi = (a.ravel() for a in np.meshgrid(los, his, indexing="ij"))
    scale, a, b = _int8_grid(lo, hi)
    # Prefix sums turn each candidate's error into O(log bins).
    cn, cnc, cnc2 = (np.concatenate([[0.0], np.cumsum(v)]) for v in (n, n * c, n * c * c))
    ia = np.searchsorted(c, a, side="left")  # bins below a: [0, ia)
    ib = np.searchsorted(c, b, side="right")  # bins above b: [ib, end)
    below = cnc2[ia] - 2 * a * cnc[ia] + a * a * cn[ia]
    above = (cnc2[-1] - cnc2[ib]) - 2 * b * (cnc[-1] - cnc[ib]) + b * b * (cn[-1] - cn[ib])
    inside = (cn[ib] - cn[ia]) * scale * scale / 12.0
    k = int(np.argmin(below + above + inside))
    return float(lo[k]), float(hi[k])


def _pool_range(x: np.ndarray, pool_ops: list, h: Histogram, grid: int = 40) -> tuple[float, float]:
    """Range for an avg-pool input scored on the pooled output (same int8 scale on both)."""
    tf = _tf.tf()
    ref = [_avg_pool(tf, x, op) for op in pool_ops]
    best, best_err = (h.vmin, h.vmax), None
    for f in np.linspace(0.1, 1.0, grid):
        lo, hi = h.vmin * f, h.vmax * f
        xq = fake_quant(x, lo, hi)
        err = 0.0
        for op, r in zip(pool_ops, ref):
            err += float(np.mean((fake_quant(_avg_pool(tf, xq, op), lo, hi) - r) ** 2))
        if best_err is None or err < best_err:
            best, best_err = (lo, hi), err
    return best


def _softmax_range(x: np.ndarray, ops: list, h: Histogram, grid: int = 40) -> tuple[float, float]:
    """Range for a softmax input (the logits) scored on the softmax output, the model's answer.

    MSE on the logits weighs every class alike; the answer depends on the top few, so the range
    may clip the low logits (and the top beyond where the softmax saturates) for a finer step.
    """
    beta = float(ops[0].builtinOptions.beta) if ops[0].builtinOptions is not None else 1.0
    x = x.reshape(-1, x.shape[-1]).astype(np.float64)
    ref = _softmax(beta * x)
    los = h.vmin * np.linspace(0.05, 1.0, grid) if h.vmin < 0 else np.zeros(1)
    his = h.vmax * np.linspace(0.05, 1.0, grid) if h.vmax > 0 else np.zeros(1)
    best, best_err = (h.vmin, h.vmax), None
    for lo in los:
        for hi in his:
            err = float(np.mean((_softmax(beta * fake_quant(x, lo, hi).astype(np.float64)) - ref) ** 2))
            if best_err is None or err < best_err:
                best, best_err = (float(lo), float(hi)), err
    return best


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _avg_pool(tf, x, op):
    o = op.builtinOptions
    pad = "SAME" if o.padding == 0 else "VALID"
    return tf.nn.avg_pool2d(x, [o.filterHeight, o.filterWidth], [o.strideH, o.strideW], pad).numpy()


def fake_quant(x, lo, hi):
    """``x`` rounded to TFLite's asymmetric int8 grid for [lo, hi] and back to float32, clipped to it."""
    scale, a, b = _int8_grid(np.float64(lo), np.float64(hi))
    return (np.clip(np.round(x / scale), round(a / scale), round(b / scale)) * scale).astype(np.float32)


def set_ranges(graph: Graph, stats: Stats) -> None:
    """Every measured activation's range to its MSE-optimal one, then same-scale outputs to their input's (step 3)."""
    chosen = {}
    for i, h in stats.hist.items():
        code, _ = graph.producer(i)
        if code in FIXED_RANGE_OPS:
            continue
        if i in stats.pooled:
            ops, xs = stats.pooled[i]
            scored = _softmax_range if graph.consumers[i][0][0] == SOFTMAX else _pool_range
            chosen[i] = scored(np.concatenate(xs), ops, h)
        else:
            chosen[i] = mse_range(h)
    for i, (lo, hi) in chosen.items():
        graph.set_range(i, lo, hi)
    # Same-scale ops: the output takes the input's (final) range, in graph order.
    for code, op in graph.ops:
        if code in _SAME_SCALE_OPS and op.inputs[0] >= 0:
            src, dst = int(op.inputs[0]), int(op.outputs[0])
            if graph.has_range(src) and graph.has_range(dst) and dst not in graph.outputs:
                graph.set_range(dst, *graph.range(src))

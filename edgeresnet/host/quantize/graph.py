"""The calibrated float flatbuffer and the statistics the int8 methods work from.

What the methods (``minmax.py``, ``mse.py``, ``mse_bias.py``, ``mse_gptq.py``)
share: a mutable view of the converter's calibrate-only model (:class:`_Graph`:
constants, activation ranges, weight layers), the float probe that runs it in
the interpreter with chosen tensors made outputs, histograms and the
MSE-optimal range search, cross-layer equalization of outlier channels, weight
rounding with bias correction, and GPTQ. The engine (``engine.py``) runs the
converter around it.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np

from edgeresnet._util import tf as _tf
from edgeresnet.host.quantize.config import QuantOptConfig

# Builtin op codes (tflite schema BuiltinOperator), named here so this module
# does not need the schema at import time.
_AVERAGE_POOL_2D = 1
_CONV_2D = 3
_FULLY_CONNECTED = 9
_LOGISTIC = 14
_MAX_POOL_2D = 17
_RESHAPE = 22
_SOFTMAX = 25
_TANH = 28
_PAD = 34
_TRANSPOSE = 39
_SQUEEZE = 43
_STRIDED_SLICE = 45
_EXPAND_DIMS = 70
_SLICE = 65
_PADV2 = 60
_LOG_SOFTMAX = 50
_MEAN = 40
_ACT_NONE, _ACT_RELU = 0, 1

# The int8 kernels of these ops require the output to share the input's scale
# and zero point; the quantizer propagates one to the other. We give the
# output the input's chosen range so both agree.
_SAME_SCALE_OPS = {
    _AVERAGE_POOL_2D, _MAX_POOL_2D, _RESHAPE, _SQUEEZE, _EXPAND_DIMS,
    _PAD, _PADV2, _TRANSPOSE, _SLICE, _STRIDED_SLICE,
}
# Fixed output ranges: the quantizer ignores the calibrated min/max.
_FIXED_RANGE_OPS = {_SOFTMAX, _LOGISTIC, _TANH, _LOG_SOFTMAX}
_WEIGHT_OPS = {_CONV_2D, _FULLY_CONNECTED}

_TFLITE_FLOAT32 = 0
_TFLITE_INT32 = 2
_TFLITE_INT8 = 9


def _flatbuffer_utils():
    _tf.tf()
    from tensorflow.lite.tools import flatbuffer_utils

    return flatbuffer_utils


def _op_code(model, op) -> int:
    c = model.operatorCodes[op.opcodeIndex]
    return max(int(c.builtinCode), int(c.deprecatedBuiltinCode))


# ---------------------------------------------------------------------- the flatbuffer


@dataclass
class _Layer:
    kind: int
    x: int  # input activation tensor
    w: int  # weight tensor
    b: Optional[int]  # bias tensor
    y: int  # output tensor
    options: object
    per_channel: bool


class _Graph:
    """The calibrated float model as a mutable flatbuffer object."""

    def __init__(self, data: bytes):
        self.fu = _flatbuffer_utils()
        self.model = self.fu.convert_bytearray_to_object(bytearray(data))
        if len(self.model.subgraphs) != 1:
            raise ValueError(f"the model has {len(self.model.subgraphs)} subgraphs; only single-graph models work")
        self.sg = self.model.subgraphs[0]
        self.ops = [(_op_code(self.model, op), op) for op in self.sg.operators]
        self.consumers: dict[int, list] = {}
        for code, op in self.ops:
            for i in op.inputs:
                if i >= 0:
                    self.consumers.setdefault(int(i), []).append((code, op))
        self.inputs = set(int(i) for i in self.sg.inputs)
        self.outputs = set(int(i) for i in self.sg.outputs)

    def to_bytes(self) -> bytes:
        return bytes(self.fu.convert_object_to_bytearray(self.model))

    def name_like_saved_model(self) -> None:
        """Give a single-input, single-output model converted from a traced function the SavedModel path's names.

        The converter's SavedModel path (its default for a traced function)
        names the input ``serving_default_<arg>:0``, the output
        ``StatefulPartitionedCall:0``, and adds the ``serving_default``
        signature (input keyed by the argument's name, output ``output_0``);
        the direct path names them ``<arg>`` and ``Identity`` and has no
        signature. A model of another shape is left as it is.
        """
        from tensorflow.lite.python import schema_py_generated as schema

        if len(self.sg.inputs) != 1 or len(self.sg.outputs) != 1 or self.model.signatureDefs:
            return
        i, o = int(self.sg.inputs[0]), int(self.sg.outputs[0])
        arg = self.sg.tensors[i].name.decode()
        self.sg.tensors[i].name = f"serving_default_{arg}:0".encode()
        self.sg.tensors[o].name = b"StatefulPartitionedCall:0"

        def tensor_map(key: str, index: int):
            m = schema.TensorMapT()
            m.name, m.tensorIndex = key.encode(), index
            return m

        sig = schema.SignatureDefT()
        sig.signatureKey, sig.subgraphIndex = b"serving_default", 0
        sig.inputs, sig.outputs = [tensor_map(arg, i)], [tensor_map("output_0", o)]
        self.model.signatureDefs = [sig]

    # constants ----------------------------------------------------------
    def const(self, i: int) -> Optional[np.ndarray]:
        t = self.sg.tensors[i]
        data = self.model.buffers[t.buffer].data if t.buffer < len(self.model.buffers) else None
        if data is None or len(data) == 0 or t.type != _TFLITE_FLOAT32:
            return None
        return np.frombuffer(np.asarray(data, np.uint8).tobytes(), np.float32).reshape(tuple(t.shape))

    def set_const(self, i: int, value: np.ndarray) -> None:
        """Write a float constant; a buffer shared with other tensors is split off first."""
        from tensorflow.lite.python import schema_py_generated as schema

        t = self.sg.tensors[i]
        shared = sum(1 for u in self.sg.tensors if u.buffer == t.buffer) > 1
        raw = np.frombuffer(np.ascontiguousarray(value, np.float32).tobytes(), np.uint8).copy()
        if shared:
            buf = schema.BufferT()
            buf.data = raw
            self.model.buffers.append(buf)
            t.buffer = len(self.model.buffers) - 1
        else:
            self.model.buffers[t.buffer].data = raw

    # activations --------------------------------------------------------
    def has_range(self, i: int) -> bool:
        q = self.sg.tensors[i].quantization
        return q is not None and q.min is not None and len(q.min) == 1 and self.const(i) is None

    def range(self, i: int) -> tuple[float, float]:
        q = self.sg.tensors[i].quantization
        return float(q.min[0]), float(q.max[0])

    def set_range(self, i: int, lo: float, hi: float) -> None:
        q = self.sg.tensors[i].quantization
        q.min = np.array([min(lo, 0.0)], np.float32)
        q.max = np.array([max(hi, 0.0)], np.float32)

    def activation_tensors(self) -> list[int]:
        """Float activations the quantizer will give a range (not graph inputs/outputs)."""
        out = []
        for code, op in self.ops:
            for i in op.outputs:
                i = int(i)
                if i in self.inputs or i in self.outputs or not self.has_range(i):
                    continue
                if self.sg.tensors[i].type != _TFLITE_FLOAT32:
                    continue
                out.append(i)
        return out

    def producer(self, i: int):
        for code, op in self.ops:
            if i in [int(o) for o in op.outputs]:
                return code, op
        return None, None

    def weight_layers(self, per_channel: bool, dense_per_channel: bool) -> list[_Layer]:
        layers = []
        for code, op in self.ops:
            if code not in _WEIGHT_OPS or len(op.inputs) < 2:
                continue
            x, w = int(op.inputs[0]), int(op.inputs[1])
            b = int(op.inputs[2]) if len(op.inputs) > 2 and op.inputs[2] >= 0 else None
            wv = self.const(w)
            if wv is None or self.sg.tensors[x].type != _TFLITE_FLOAT32:
                continue  # weights computed at run time, or already quantized
            if b is not None and self.const(b) is None:
                b = None
            x_shape = tuple(self.sg.tensors[x].shape)
            if code == _CONV_2D and (wv.ndim != 4 or x_shape[-1] != wv.shape[3]):
                continue  # grouped convolution: leave to the quantizer
            if code == _FULLY_CONNECTED and (wv.ndim != 2 or int(np.prod(x_shape)) % wv.shape[1]):
                continue
            pc = per_channel and (dense_per_channel or code != _FULLY_CONNECTED)
            layers.append(_Layer(code, x, w, b, int(op.outputs[0]), op.builtinOptions, pc))
        return layers


# ---------------------------------------------------------------------- running probes


PROBE_BYTES = 256 << 20  # activations a statistics batch may hold (all of them are kept as outputs)
PROBE_MAX_BATCH = 32


def _probe(graph: _Graph, tensors: list[int], samples: np.ndarray):
    """An interpreter on the float model with ``tensors`` as its outputs, the batch it runs, and a name map.

    The batch is as large as ``PROBE_BYTES`` of kept activations allows (at
    most ``PROBE_MAX_BATCH``); a model whose batch dimension cannot be resized
    runs one sample at a time.
    """
    from edgeresnet.device.runtime import get_backend, resize_batch

    saved = graph.sg.outputs
    graph.sg.outputs = np.array(tensors, np.int32)
    try:
        data = graph.to_bytes()
    finally:
        graph.sg.outputs = saved
    per_sample = sum(4 * int(np.prod(graph.sg.tensors[i].shape[1:])) for i in tensors)
    batch = int(max(1, min(PROBE_MAX_BATCH, len(samples), PROBE_BYTES // max(per_sample, 1))))
    backend = get_backend()
    # The statistics passes are plain float inference: use the cores (the
    # converter's own calibrator runs single-threaded, one sample at a time).
    interp = backend.interpreter_cls(model_content=data, num_threads=min(os.cpu_count() or 1, 4))
    inp = interp.get_input_details()[0]
    names = {graph.sg.tensors[i].name.decode(): i for i in tensors}
    if batch > 1 and not resize_batch(interp, inp["index"], batch, samples.shape[1:],
                                      lambda d: graph.sg.tensors[names[d["name"]]].shape):
        batch = 1
        interp = backend.interpreter_cls(model_content=data, num_threads=min(os.cpu_count() or 1, 4))
    interp.allocate_tensors()
    outs = [(d["index"], names[d["name"]]) for d in interp.get_output_details()]
    return interp, inp["index"], outs, batch


def _run_probe(graph: _Graph, tensors: list[int], samples: np.ndarray, visit: Callable[[dict, np.ndarray], None], tick,
               rows: Optional[np.ndarray] = None):
    """Run ``samples`` (the ``rows`` of it, in that order; default all) through the float model in batches;
    ``visit(values, batch_rows)`` gets {tensor: (B, ...) values} and the rows of ``samples`` they came from.

    The values are views of the interpreter's buffers, valid only during the call (copy what is kept).
    """
    rows = np.arange(len(samples)) if rows is None else np.asarray(rows)
    if not tensors:
        tick(len(rows))
        return
    interp, inp, outs, batch = _probe(graph, tensors, samples[rows[:PROBE_MAX_BATCH]])
    for k in range(0, len(rows), batch):
        here = rows[k : k + batch]
        n = len(here)
        chunk = samples[here]
        if n < batch:  # the last, short batch: padded with its own first sample, which is not visited
            chunk = np.concatenate([chunk, np.repeat(chunk[:1], batch - n, axis=0)])
        interp.set_tensor(inp, np.ascontiguousarray(chunk))
        interp.invoke()
        visit({i: interp.tensor(idx)()[:n] for idx, i in outs}, here)  # no view outlives the call
        tick(n)


def _range_tensors(graph: _Graph) -> list[int]:
    """The float tensors the calibrator gives a min/max (graph inputs apart: their range is the data's)."""
    return [
        i for i in range(len(graph.sg.tensors))
        if i not in graph.inputs and graph.has_range(i) and graph.sg.tensors[i].type == _TFLITE_FLOAT32
    ]


def _measure_ranges(graph: _Graph, samples: np.ndarray, tick) -> None:
    """Every calibrated tensor's min/max over all samples, as the converter's calibrator records them.

    The calibrator logs the plain minimum and maximum of each float tensor
    over every sample it is fed, one sample at a time; this measures the same
    in batched, multi-threaded float inference and writes them into the model
    (the statistics pass, :func:`_measure`, with nothing else to collect).
    """
    stats = _StatsPass(graph, [], samples, {}, QuantOptConfig(), False)
    stats.run(tick)
    stats.write_ranges()


def _write_range(graph: _Graph, i: int, lo: float, hi: float) -> None:
    q = graph.sg.tensors[i].quantization
    q.min = np.array([lo], np.float32)
    q.max = np.array([hi], np.float32)


# ---------------------------------------------------------------------- statistics


class _Histogram:
    """Counts of a tensor's values, both signs, exact zeros apart.

    Each side covers [0, R) in ``bins/2`` equal bins; R is set by the first
    values added and doubles (merging bin pairs) whenever a larger value
    arrives, so bin edges stay aligned with 0. Large tensors are subsampled
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
            self.r = [max(vmax, 1e-8), max(-vmin, 1e-8)]
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


def _int8_grid(lo, hi):
    """Scale and representable interval of TFLite's asymmetric int8 for [lo, hi] (vectorised)."""
    lo = np.minimum(lo, 0.0)
    hi = np.maximum(hi, 0.0)
    scale = np.maximum((hi - lo) / 255.0, 1e-12)
    zp = np.clip(np.round(-128.0 - lo / scale), -128, 127)
    return scale, (-128.0 - zp) * scale, (127.0 - zp) * scale


def _mse_range(h: _Histogram, grid: int = 48, min_frac: float = 0.1) -> tuple[float, float]:
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


@dataclass
class _Stats:
    """What the statistics pass measured (see :class:`_StatsPass`)."""

    lo: dict  # calibrated tensor -> minimum over the samples
    hi: dict  # ... and maximum
    hist: dict  # activation tensor -> _Histogram ("stats" samples)
    mean_inputs: dict  # layer input tensor -> mean input (1, H, W, C) or (1, C) ("stats" samples)
    pooled: dict  # tensor read only by AVERAGE_POOL_2D -> (pool ops, kept samples)
    channel_max: dict  # equalization chain head -> per-channel max |value| ("equalize" samples)
    hessians: dict  # weight tensor -> E[p p^T] over its layer's input patches ("gptq" samples)


def _pool_inputs(graph: _Graph) -> dict[int, list]:
    """Activation tensors read only by AVERAGE_POOL_2D ops (whose output shares their scale)."""
    out = {}
    for i in graph.activation_tensors():
        cons = graph.consumers.get(i, [])
        if cons and all(code == _AVERAGE_POOL_2D for code, _ in cons):
            out[i] = [op for _, op in cons]
    return out


POOL_KEEP = 64  # "stats" samples of each average-pool input kept to score its range on the pooled output


class _StatsPass:
    """Every statistic the int8 methods use, from ONE batched float pass over the calibration samples.

    Each batch of the float model (every tensor that is measured made a graph
    output) feeds all collectors at once: the min/max of every calibrated
    tensor over all samples (what the converter's calibrator records), and on
    the evenly spread subsets ``subsets`` names (sample indices): ``"stats"``
    the activation histograms, the kept average-pool inputs and, with
    ``want_means``, every weight layer's mean input; ``"equalize"`` the
    per-channel maxima of the equalization chains' heads; ``"gptq"`` the
    GPTQ input correlations. After equalization rescales some tensors,
    :meth:`run` with ``tensors`` measures just those again.
    """

    def __init__(self, graph: _Graph, layers: list, samples: np.ndarray, subsets: dict, cfg: QuantOptConfig,
                 want_means: bool):
        self.graph, self.samples, self.cfg = graph, samples, cfg
        n = len(samples)
        self.rows = {key: np.isin(np.arange(n), subsets.get(key, ())) for key in ("stats", "equalize", "gptq")}
        want = {key: bool(mask.any()) for key, mask in self.rows.items()}
        self.range_tensors = _range_tensors(graph)
        self.acts = graph.activation_tensors() if want["stats"] else []
        self.pools = _pool_inputs(graph) if want["stats"] else {}
        self.mean_layers = sorted({layer.x for layer in layers}) if want["stats"] and want_means else []
        self.heads = sorted({c.producer.y for c in _chains(graph, _equalize_layers(graph))}) if want["equalize"] else []
        self.gptq_layers = list(layers) if want["gptq"] else []
        self.stats = _Stats({}, {}, {}, {}, {}, {}, {})
        self._mean_sums: dict = {}
        self._mean_count = self._pool_rows = 0
        self._gptq_rows: dict = {}

    # the pass -----------------------------------------------------------
    def run(self, tick, tensors: Optional[set] = None) -> _Stats:
        """Measure everything (``tensors`` None: all samples), or again only the statistics of ``tensors``
        (on the samples that feed them; their min/max then cover those samples)."""
        only = None if tensors is None else set(tensors)
        keep = lambda ts: [i for i in ts if only is None or i in only]  # noqa: E731
        acts, pools, means = keep(self.acts), {i: p for i, p in self.pools.items() if only is None or i in only}, keep(self.mean_layers)
        heads = keep(self.heads) if only is None else []
        gptq = [layer for layer in self.gptq_layers if only is None or layer.x in only]
        self._reset(acts, pools, means, gptq)
        if only is None:
            rows = np.arange(len(self.samples))
            ranged = self.range_tensors
        else:
            rows = np.flatnonzero(self.rows["stats"] | self.rows["gptq"])
            ranged = keep(self.range_tensors)
            tick.section("samples after equalization", len(rows))
        # The subsets' samples first (each in its order), so most batches are wholly in or out of them.
        wanted = (self.rows["stats"] | self.rows["equalize"] | self.rows["gptq"])[rows]
        rows = np.concatenate([rows[wanted], rows[~wanted]])
        lo, hi = self.stats.lo, self.stats.hi
        for i in ranged:
            lo[i], hi[i] = np.inf, -np.inf
        rng = np.random.default_rng(self.cfg.seed)

        def visit(values, batch_rows):
            extremes = {}
            for i in ranged:
                v = values[i]
                extremes[i] = float(v.min()), float(v.max())
                lo[i], hi[i] = min(lo[i], extremes[i][0]), max(hi[i], extremes[i][1])
            self._visit_stats(values, self.rows["stats"][batch_rows], acts, pools, means, extremes)
            self._visit_heads(values, self.rows["equalize"][batch_rows], heads)
            self._visit_gptq(values, self.rows["gptq"][batch_rows], gptq, rng)

        tensors_run = sorted(set(ranged) | set(acts) | set(pools) | set(means) | set(heads) | {layer.x for layer in gptq})
        _run_probe(self.graph, tensors_run, self.samples, visit, tick, rows)
        self._finish(means, gptq)
        return self.stats

    def _reset(self, acts, pools, means, gptq) -> None:
        st = self.stats
        for i in acts:
            st.hist[i] = _Histogram(self.cfg.bins)
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

    def _visit_gptq(self, values, sel, layers, rng) -> None:
        shapes = {layer.w: self.graph.const(layer.w).shape for layer in layers}
        for j in np.flatnonzero(sel):  # sample by sample, as the seeded draws go
            for layer in layers:
                P = _sample_patches(layer, values[layer.x][j : j + 1], shapes[layer.w], self.cfg.gptq_rows, rng).astype(np.float32)
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
            if i in self.stats.lo:
                _write_range(self.graph, i, self.stats.lo[i], self.stats.hi[i])
        for i in self.graph.inputs:
            if self.graph.has_range(i):
                _write_range(self.graph, i, float(self.samples.min()), float(self.samples.max()))


def _pool_range(x: np.ndarray, pool_ops: list, h: _Histogram, grid: int = 40) -> tuple[float, float]:
    """Range for an avg-pool input scored on the pooled output (same int8 scale on both)."""
    tf = _tf.tf()
    ref = [_avg_pool(tf, x, op) for op in pool_ops]
    best, best_err = (h.vmin, h.vmax), None
    for f in np.linspace(0.1, 1.0, grid):
        lo, hi = h.vmin * f, h.vmax * f
        xq = _fake_quant(x, lo, hi)
        err = 0.0
        for op, r in zip(pool_ops, ref):
            err += float(np.mean((_fake_quant(_avg_pool(tf, xq, op), lo, hi) - r) ** 2))
        if best_err is None or err < best_err:
            best, best_err = (lo, hi), err
    return best


def _avg_pool(tf, x, op):
    o = op.builtinOptions
    pad = "SAME" if o.padding == 0 else "VALID"
    return tf.nn.avg_pool2d(x, [o.filterHeight, o.filterWidth], [o.strideH, o.strideW], pad).numpy()


def _fake_quant(x, lo, hi):
    scale, a, b = _int8_grid(np.float64(lo), np.float64(hi))
    return (np.clip(np.round(x / scale), round(a / scale), round(b / scale)) * scale).astype(np.float32)


def _set_ranges(graph: _Graph, stats: _Stats) -> None:
    chosen = {}
    for i, h in stats.hist.items():
        code, _ = graph.producer(i)
        if code in _FIXED_RANGE_OPS:
            continue
        if i in stats.pooled:
            pool_ops, xs = stats.pooled[i]
            chosen[i] = _pool_range(np.concatenate(xs), pool_ops, h)
        else:
            chosen[i] = _mse_range(h)
    for i, (lo, hi) in chosen.items():
        graph.set_range(i, lo, hi)
    # Same-scale ops: the output takes the input's (final) range, in graph order.
    for code, op in graph.ops:
        if code in _SAME_SCALE_OPS and op.inputs[0] >= 0:
            src, dst = int(op.inputs[0]), int(op.outputs[0])
            if graph.has_range(src) and graph.has_range(dst) and dst not in graph.outputs:
                graph.set_range(dst, *graph.range(src))


# ---------------------------------------------------------------------- equalization


_EQUALIZE_GAIN = 0.1  # apply when the predicted noise falls below this fraction
_CHANNEL_PASSTHROUGH = {_AVERAGE_POOL_2D, _MAX_POOL_2D, _PAD, _MEAN, _RESHAPE}


@dataclass
class _Chain:
    producer: _Layer  # conv/FC whose output channels are rescaled
    consumer: _Layer  # conv/FC whose input channels absorb the inverse
    tensors: list  # activations between them (all rescaled per channel)


def _chains(graph: _Graph, layers: list[_Layer]) -> list[_Chain]:
    """producer -> [ReLU-fused] -> pooling/pad/mean/reshape ... -> consumer, with one reader per step.

    Scaling channel c of the producer by t > 0 and the consumer's input channel
    c by 1/t leaves the float function unchanged along such a chain (ReLU,
    pooling, zero padding and means are positively homogeneous per channel).
    """
    by_input = {}
    for layer in layers:
        by_input.setdefault(layer.x, []).append(layer)
    out = []
    for prod in layers:
        act = getattr(prod.options, "fusedActivationFunction", _ACT_NONE)
        if act not in (_ACT_NONE, _ACT_RELU) or prod.b is None:
            continue
        channels = graph.const(prod.w).shape[0]
        t, path = prod.y, [prod.y]
        while True:
            readers = graph.consumers.get(t, [])
            if t in graph.outputs or len(readers) != 1:
                break
            code, op = readers[0]
            if code in _WEIGHT_OPS:
                cons = [layer for layer in by_input.get(t, []) if layer.y == int(op.outputs[0])]
                if cons and int(op.inputs[0]) == t:
                    out.append(_Chain(prod, cons[0], path))
                break
            if code not in _CHANNEL_PASSTHROUGH or int(op.inputs[0]) != t:
                break
            nxt = int(op.outputs[0])
            shape = tuple(graph.sg.tensors[nxt].shape)
            if not shape or shape[-1] != channels:
                break
            if code == _MEAN:
                axes_val = _int_const(graph, int(op.inputs[1]))
                rank = len(graph.sg.tensors[t].shape)
                if axes_val is None or any(a % rank == rank - 1 for a in axes_val):
                    break
            if code == _RESHAPE and int(np.prod(shape[:-1])) != int(np.prod(graph.sg.tensors[t].shape[:-1])):
                break  # a reshape that moves channels around
            t = nxt
            path.append(t)
    return out


def _int_const(graph: _Graph, i: int):
    t = graph.sg.tensors[i]
    data = graph.model.buffers[t.buffer].data
    if data is None or len(data) == 0 or t.type != _TFLITE_INT32:
        return None
    return np.frombuffer(np.asarray(data, np.uint8).tobytes(), np.int32).tolist()


def _equalize_layers(graph: _Graph) -> list[_Layer]:
    return graph.weight_layers(per_channel=True, dense_per_channel=True)


def _equalize(graph: _Graph, channel_max: dict) -> set:
    """Shrink channels whose range dwarfs the rest of their (per-tensor quantized) activation.

    For a chain producer -> consumer with channel ranges r_c (``channel_max``:
    chain head -> per-channel max |value|, from the statistics pass), scaling channel c
    by t_c = min(1, R / r_c) makes the int8 step R / 255 for the whole tensor,
    while the consumer's input channel c grows by 1 / t_c. The rounding noise
    reaching the consumer's output is proportional to
    R^2 * sum_c |W2[:, c]|^2 / t_c^2; R is chosen among the r_c to minimise it.
    It is applied only when that noise drops at least tenfold (a real outlier
    channel): milder imbalance is left to MSE range clipping, which measured
    better on ResNet-8 (equalizing its three in-block pairs, predicted gain
    2.5-5x, raised the output error by about 10 %).
    Returns the activation tensors whose values changed (the rescaled chains'),
    for the statistics pass to measure again.
    """
    changed: set = set()
    for ch in _chains(graph, _equalize_layers(graph)):
        if ch.producer.y not in channel_max:
            continue
        r = channel_max[ch.producer.y].astype(np.float64)
        w2 = graph.const(ch.consumer.w).astype(np.float64)
        cin = w2.shape[-1] if ch.consumer.kind == _CONV_2D else w2.shape[1]
        if cin != len(r):
            continue
        energy = (w2.reshape(w2.shape[0], -1, cin) ** 2).sum((0, 1))  # |W2[:, c]|^2, both layouts
        live = r > 0
        if live.sum() < 2:
            continue

        def noise(R):
            t = np.minimum(1.0, R / np.where(live, r, R))
            return R * R * float(np.sum(energy / (t * t)))

        candidates = np.unique(r[live])
        costs = [noise(R) for R in candidates]
        best = int(np.argmin(costs))
        if costs[best] > _EQUALIZE_GAIN * noise(float(r.max())):
            continue
        R = float(candidates[best])
        t = np.where(live, np.minimum(1.0, R / np.where(live, r, 1.0)), 1.0)
        w1 = graph.const(ch.producer.w).astype(np.float64)
        graph.set_const(ch.producer.w, w1 * t.reshape((-1,) + (1,) * (w1.ndim - 1)))
        graph.set_const(ch.producer.b, graph.const(ch.producer.b).astype(np.float64) * t)
        graph.set_const(ch.consumer.w, w2 / t)  # broadcasts over the last (input-channel) axis of both layouts
        changed.update(ch.tensors)
    return changed


# ---------------------------------------------------------------------- weights


def _weight_scale(w: np.ndarray, per_channel: bool) -> np.ndarray:
    """The quantizer's symmetric int8 scale: max|w| / 127 per output channel (axis 0) or per tensor."""
    if per_channel:
        s = np.abs(w).reshape(w.shape[0], -1).max(1) / 127.0
    else:
        s = np.full(w.shape[0], np.abs(w).max() / 127.0)
    return np.where(s > 0, s, 1.0).astype(np.float64)


def _layer_output_mean(tf, layer: _Layer, x_mean: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Mean over positions of the layer's output (no bias) for the mean input image (linearity)."""
    if layer.kind == _FULLY_CONNECTED:
        return (x_mean.reshape(-1, w.shape[1]) @ w.T.astype(np.float64)).mean(0)
    o = layer.options
    pad = "SAME" if o.padding == 0 else "VALID"
    y = tf.nn.conv2d(
        x_mean.astype(np.float32), np.transpose(w, (1, 2, 3, 0)).astype(np.float32),
        [1, o.strideH, o.strideW, 1], pad, dilations=[1, o.dilationHFactor, o.dilationWFactor, 1],
    ).numpy()
    return y.reshape(-1, y.shape[-1]).astype(np.float64).mean(0)


def _quantize_layer_weights(graph: _Graph, layer: _Layer, x_mean, hessian) -> None:
    tf = _tf.tf()
    w = graph.const(layer.w).astype(np.float64)
    s = _weight_scale(w, layer.per_channel)
    shape = (-1,) + (1,) * (w.ndim - 1)
    if hessian is not None:
        q = _gptq(w.reshape(len(w), -1), hessian, s).reshape(w.shape)
    else:
        q = np.clip(np.round(w / s.reshape(shape)), -127, 127)
    wq = (q * s.reshape(shape)).astype(np.float32)
    if layer.b is not None and x_mean is not None:
        shift = _layer_output_mean(tf, layer, x_mean, wq.astype(np.float64) - w)
        graph.set_const(layer.b, (graph.const(layer.b).astype(np.float64) - shift).astype(np.float32))
    graph.set_const(layer.w, wq)


def _gptq(w: np.ndarray, hessian: np.ndarray, scale: np.ndarray, damp: float = 0.01, block: int = 128):
    """Integer weights (O, d) on the grid ``scale`` chosen by GPTQ (Frantar et al., 2022).

    Columns are rounded in order of decreasing input energy; each rounding
    error is spread over the columns not rounded yet via the inverse Hessian.
    Each row's largest-magnitude weight is held fixed (it is exactly +-127
    steps), so the quantizer recomputes the same scale.
    """
    W = w.astype(np.float64).copy()
    rows, d = W.shape
    H = hessian.astype(np.float64).copy()
    dead = np.diag(H) <= 0
    H[dead, dead] = 1.0
    H += damp * float(np.mean(np.diag(H))) * np.eye(d)
    order = np.argsort(-np.diag(H), kind="stable")
    W, H = W[:, order], H[order][:, order]
    fixed = np.zeros_like(W, dtype=bool)
    fixed[np.arange(rows), np.abs(W).argmax(1)] = True
    U = np.linalg.cholesky(np.linalg.inv(H)).T  # upper Cholesky factor of H^-1
    Q = np.zeros_like(W)
    sc = scale.astype(np.float64)
    for i1 in range(0, d, block):
        i2 = min(i1 + block, d)
        Wb = W[:, i1:i2].copy()
        Err = np.zeros_like(Wb)
        Ub = U[i1:i2, i1:i2]
        for j in range(i2 - i1):
            col = Wb[:, j]
            q = np.clip(np.round(col / sc), -127, 127)
            Q[:, i1 + j] = q
            e = (col - q * sc) / Ub[j, j]
            upd = np.outer(e, Ub[j, j + 1 :])
            upd[fixed[:, i1 + j + 1 : i2]] = 0.0
            Wb[:, j + 1 :] -= upd
            Err[:, j] = e
        if i2 < d:
            upd = Err @ U[i1:i2, i2:]
            upd[fixed[:, i2:]] = 0.0
            W[:, i2:] -= upd
    out = np.empty_like(Q)
    out[:, order] = Q
    return out


def _sample_patches(layer: _Layer, x: np.ndarray, w_shape: tuple, n: int, rng) -> np.ndarray:
    """Up to ``n`` input patches (rows laid out like the weights: kh, kw, cin) of one sample."""
    if layer.kind == _FULLY_CONNECTED:
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

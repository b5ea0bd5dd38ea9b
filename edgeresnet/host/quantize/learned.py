"""``mse+learned``: ``mse`` ranges, and each weight's rounding direction learned block by block.

Rounding every weight to its nearest int8 step minimises each weight's own
error, not the error of the layer's output. This method learns, for every
weight, whether to round down or up, so that each residual block's int8
output matches the float model's on the calibration images:

- the parametrisation is AdaRound's (Nagel et al., 2020): a weight is
  ``s * (floor(w / s) + h(v))`` with ``h`` a rectified sigmoid, pushed to 0
  or 1 by a regulariser whose sharpness grows during the optimisation;
- the objective is BRECQ's (Li et al., 2021): the squared error of a whole
  block's output (the ops up to and including a residual ``ADD``), so the
  layers of a block learn together, with every activation fake-quantized to
  its int8 range as the int8 kernels compute it;
- the block's input is QDrop's (Wei et al., 2022): each input value is
  taken at random from the int8 model's (the blocks before, already rounded)
  or the float model's, which keeps the learned rounding from fitting the
  calibration images' quantization noise.

Ranges are ``mse``'s (set before learning, so the learning sees the int8
activations), the scale of every output channel is the quantizer's (each
channel's largest weight stays fixed), a weight that is exactly zero (a pruned
one) stays zero, and each layer's bias is learned with its rounding. The
emitted model is the plain quantizer's, with these weights.
From the first block holding an op :mod:`~edgeresnet.host.quantize.tfgraph`
cannot run, layers get ``mse+bias``'s rounding to nearest and bias correction.

Cost: ``learn_iters`` optimisation steps of ``learn_batch`` samples per
block, on ``learn_samples`` calibration samples (``QuantOptConfig``); the
report gives the seconds.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from edgeresnet._util import tf as _tf
from edgeresnet.host.quantize.graph import WEIGHT_OPS, Graph
from edgeresnet.host.quantize.mse import set_ranges
from edgeresnet.host.quantize.mse_bias import MseBias, _weight_scale, quantize_layer_weights
from edgeresnet.host.quantize.registry import register_method
from edgeresnet.host.quantize.tfgraph import ADD, Ops, adam, supported

ZETA, GAMMA = 1.1, -0.1  # the rectified sigmoid's stretch (AdaRound)
WARMUP = 0.2  # share of the steps without the rounding regulariser
BETA = (20.0, 2.0)  # the regulariser's sharpness, annealed from the first to the second
REG = 0.01  # the regulariser's weight against the (normalised) reconstruction error
LR = 1e-2
LR_BIAS = 1e-3
QDROP = 0.5  # share of a block's input values taken from the float model
PROPAGATE_BATCH = 64


@register_method
class MseLearned(MseBias):
    name = "mse+learned"
    description = "mse ranges and block-wise learned rounding of the weights (slower: seconds to minutes)"
    max_choice_macs = 50e6

    def edit(self, graph, layers, measured, cfg, tick):
        from edgeresnet.host.quantize.engine import spread

        set_ranges(graph, measured.stats)  # first: the learning sees the int8 activations
        samples = measured.samples[spread(len(measured.samples), cfg.learn_samples)]
        rounding, errors = learn_rounding(graph, layers, samples, cfg, tick)
        for layer in layers:
            if layer.w not in rounding:  # a block that could not run: mse+bias's weights
                quantize_layer_weights(graph, layer, measured.stats.mean_inputs.get(layer.x))
                continue
            steps, bias = rounding[layer.w]
            quantize_layer_weights(graph, layer, None, lambda w, s, q=steps: q)
            if bias is not None:  # learned with the rounding: no separate bias correction
                graph.set_const(layer.b, bias)
        before, after = (float(sum(e[k] for e in errors)) for k in (0, 1))
        return {
            "learned_layers": len(rounding), "layers": len(layers), "blocks": len(errors),
            # the blocks' int8 output error (squared, relative to the float output's energy), summed over blocks
            "block_error_nearest": round(before, 6), "block_error_learned": round(after, 6),
        }


def blocks(graph: Graph) -> list[list]:
    """The graph's ops cut after every ``ADD`` (a residual block's end); the rest is the last block."""
    out, here = [], []
    for code, op in graph.ops:
        here.append((code, op))
        if code == ADD:
            out.append(here)
            here = []
    if here:
        out.append(here)
    return out


def learn_rounding(graph: Graph, layers: list, samples: np.ndarray, cfg, tick) -> tuple[dict, list]:
    """{weight tensor: (int8 steps, bias or None)} learned block by block (layers of blocks that cannot run are left out),
    and each learned block's relative output error (rounded to nearest, learned) on ``samples``."""
    tf = _tf.tf()
    by_w = {layer.w: layer for layer in layers}
    ops = Ops(graph)
    parts = blocks(graph)
    last_use = _last_use(graph, parts)
    inp = int(graph.sg.inputs[0])
    x = tf.constant(samples)
    fl, qv = {inp: x}, {inp: ops.fake_quant(inp, x) if graph.has_range(inp) else x}
    rng = np.random.default_rng(cfg.seed)
    tick.section("blocks of learned rounding", len(parts))
    rounding, errors = {}, []
    for k, block in enumerate(parts):
        ins = _block_inputs(graph, block)
        if not supported(graph, block) or any(i not in fl for i in ins):
            break  # an op this cannot run: the layers from here on round to nearest
        mine = [by_w[int(op.inputs[1])] for code, op in block
                if code in WEIGHT_OPS and len(op.inputs) > 1 and int(op.inputs[1]) in by_w]
        weights = {}  # the int8 path's rounded weights and learned biases, for the blocks after
        if mine:
            learned, weights, error = _learn_block(ops, block, ins, mine, fl, qv, cfg, rng)
            rounding.update(learned)
            errors.append(error)
        _propagate(ops, block, ins, fl, qv, weights)
        for t in [t for t, last in last_use.items() if last == k]:
            fl.pop(t, None)
            qv.pop(t, None)
        tick()
    return rounding, errors


def _scale(w: np.ndarray, per_channel: bool) -> np.ndarray:
    """The quantizer's scale of weights ``w``, shaped to multiply them (one per output channel on axis 0)."""
    return _weight_scale(w, per_channel).reshape((-1,) + (1,) * (w.ndim - 1))


def _last_use(graph: Graph, parts: list) -> dict:
    """{tensor: index of the last block that reads it} (graph outputs: never dropped)."""
    last = {}
    for k, block in enumerate(parts):
        for _, op in block:
            for i in op.inputs:
                if i >= 0:
                    last[int(i)] = k
    for i in graph.outputs:
        last[int(i)] = len(parts)
    return last


def _block_inputs(graph: Graph, block: list) -> list[int]:
    made = {int(o) for _, op in block for o in op.outputs}
    ins = []
    for _, op in block:
        for i in op.inputs:
            i = int(i)
            if i >= 0 and i not in made and i not in ins and not _is_constant(graph, i):
                ins.append(i)
    return ins


def _is_constant(graph: Graph, i: int) -> bool:
    """Tensor ``i`` has a buffer with data (weights, biases, axes, shapes), read without copying it."""
    t = graph.sg.tensors[i]
    data = graph.model.buffers[t.buffer].data if t.buffer < len(graph.model.buffers) else None
    return data is not None and len(data) > 0


def _block_outputs(graph: Graph, block: list) -> list[int]:
    """What the block's reconstruction is scored on: the tensors it hands on (a softmax's output, the model's
    answer, on which the logits' int8 range was chosen too)."""
    made = [int(op.outputs[0]) for _, op in block]
    inside = {int(i) for _, op in block for i in op.inputs}
    return [t for t in made if t not in inside or t in graph.outputs]


def _propagate(ops: Ops, block: list, ins: list, fl: dict, qv: dict, weights: dict) -> None:
    """The block's outputs for every sample: float (float weights) and int8 (``weights``, fake-quantized activations)
    from its inputs ``ins``."""
    tf = ops.tf
    made = [int(op.outputs[0]) for _, op in block]
    n = int(fl[ins[0]].shape[0])
    for values, w, quantized in ((fl, {}, False), (qv, weights, True)):
        for t, parts in _chunked(ops, block, values, ins, made, n, w, quantized).items():
            values[t] = tf.concat(parts, 0)


class _Rounding:
    """One layer's learnable rounding: the floor of its steps, the variable ``v``, and the fixed channel maxima."""

    def __init__(self, tf, graph: Graph, layer):
        self.w = layer.w
        w = graph.const(layer.w).astype(np.float64)
        self.scale = _scale(w, layer.per_channel)
        steps = w / self.scale
        self.floor = np.floor(steps)
        frac = np.clip(steps - self.floor, 0.01, 0.99)
        flat = np.abs(w).reshape(len(w), -1)
        fixed = np.zeros_like(flat, dtype=bool)
        fixed[np.arange(len(w)), flat.argmax(1)] = True  # each channel's largest weight: exactly +-127 steps
        self.fixed = fixed.reshape(w.shape) | (w == 0)  # a pruned weight stays zero: the model keeps its sparsity
        self.exact = np.clip(np.round(steps), -127, 127)
        self.v = tf.Variable(-np.log((ZETA - GAMMA) / (frac - GAMMA) - 1.0).astype(np.float32))
        self.b = layer.b
        self.bias = None if layer.b is None else graph.const(layer.b).astype(np.float32)
        self.db = tf.Variable(np.zeros(len(w), np.float32))  # learned change of the bias
        # Adam's moments of v and db
        self.moments = [(tf.Variable(tf.zeros_like(x)), tf.Variable(tf.zeros_like(x))) for x in (self.v, self.db)]

    def variables(self) -> list:
        return [(self.v, LR, *self.moments[0])] + ([(self.db, LR_BIAS, *self.moments[1])] if self.b is not None else [])

    def soft(self, tf) -> dict:
        """{weight tensor: soft-rounded weights, bias tensor: learned bias} for the ops."""
        out = {self.w: self.soft_weights(tf)}
        if self.b is not None:
            out[self.b] = self.bias + self.db
        return out

    def hard(self, tf) -> dict:
        """As :meth:`soft`, with every weight rounded (the model that is written)."""
        out = {self.w: tf.constant(self.steps() * self.scale, tf.float32)}
        if self.b is not None:
            out[self.b] = tf.constant(self.learned_bias())
        return out

    def learned_bias(self) -> Optional[np.ndarray]:
        return None if self.b is None else self.bias + self.db.numpy()

    def h(self, tf):
        return tf.clip_by_value(tf.sigmoid(self.v) * (ZETA - GAMMA) + GAMMA, 0.0, 1.0)

    def soft_weights(self, tf):
        q = tf.clip_by_value(self.floor.astype(np.float32) + self.h(tf), -127.0, 127.0)
        q = tf.where(self.fixed, self.exact.astype(np.float32), q)
        return q * self.scale.astype(np.float32)

    def steps(self) -> np.ndarray:
        up = self.h(_tf.tf()).numpy() >= 0.5
        return np.where(self.fixed, self.exact, np.clip(self.floor + up, -127, 127))


def _learn_block(ops: Ops, block: list, ins: list, layers: list, fl: dict, qv: dict, cfg, rng) -> tuple:
    """For ``layers``, learned to minimise the block's int8 output error from its inputs ``ins``: {weight tensor:
    (int8 steps, bias)}; {weight or bias tensor: its value in the int8 model}; and that error (relative to the
    output's energy, on every sample, int8 inputs) rounded to nearest and learned."""
    tf = ops.tf
    outs = _block_outputs(ops.graph, block)
    n = int(fl[ins[0]].shape[0])
    targets = {t: tf.concat(v, 0) for t, v in _chunked(ops, block, fl, ins, outs, n, {}, False).items()}
    energy = sum(float(tf.reduce_mean(tf.reduce_sum(tf.square(v), -1))) for v in targets.values()) or 1.0
    params = [_Rounding(tf, ops.graph, layer) for layer in layers]
    variables = [v for p in params for v in p.variables()]
    batch = min(cfg.learn_batch, n)

    @tf.function(reduce_retracing=True)
    def step(idx, seed, beta, reg_on, t):
        with tf.GradientTape() as tape:
            values = {}
            for i in ins:
                f, q = tf.gather(fl[i], idx), tf.gather(qv[i], idx)
                keep = tf.random.stateless_uniform(tf.shape(q), seed) < QDROP  # QDrop: some float, the rest int8
                values[i] = tf.where(keep, f, q)
            got = ops.run(block, values, {k: v for p in params for k, v in p.soft(tf).items()}, quantized=True)
            rec = tf.add_n([tf.reduce_mean(tf.reduce_sum(tf.square(got[t] - tf.gather(targets[t], idx)), -1))
                            for t in outs]) / energy
            reg = tf.add_n([tf.reduce_mean(1.0 - tf.pow(tf.abs(2.0 * p.h(tf) - 1.0), beta)) for p in params])
            loss = rec + reg_on * REG * reg
        grads = tape.gradient(loss, [v for v, *_ in variables])
        adam(tf, variables, grads, t)
        return rec

    iters = cfg.learn_iters
    warm = int(WARMUP * iters)
    for k in range(iters):
        idx = rng.choice(n, batch, replace=False)
        frac = max(0.0, (k - warm) / max(iters - warm, 1))
        beta = BETA[0] + (BETA[1] - BETA[0]) * frac
        step(tf.constant(idx, tf.int32), tf.constant([cfg.seed, k], tf.int32), tf.constant(beta, tf.float32),
             tf.constant(float(k >= warm)), tf.constant(float(k + 1)))

    def error(weights: dict) -> float:
        total = 0.0
        for t, got in _chunked(ops, block, qv, ins, outs, n, weights, True).items():
            for a, part in zip(range(0, n, PROPAGATE_BATCH), got):
                sq = tf.square(part - targets[t][a : a + PROPAGATE_BATCH])
                positions = list(range(1, len(sq.shape) - 1))
                total += float(tf.reduce_sum(tf.reduce_mean(sq, positions) if positions else sq))
        return total / n / energy  # as the training's loss: per position, summed over channels

    nearest = {p.w: tf.constant(p.exact * p.scale, tf.float32) for p in params}
    learned = {k: v for p in params for k, v in p.hard(tf).items()}
    return {p.w: (p.steps(), p.learned_bias()) for p in params}, learned, (error(nearest), error(learned))


def _chunked(ops: Ops, run: list, values: dict, ins: list, outs: list, n: int, weights: dict, quantized: bool) -> dict:
    """{output tensor: [its values for each chunk of PROPAGATE_BATCH samples]} of the ops ``run``."""
    got: dict = {t: [] for t in outs}
    for a in range(0, n, PROPAGATE_BATCH):
        here = ops.run(run, {i: values[i][a : a + PROPAGATE_BATCH] for i in ins}, weights, quantized)
        for t in outs:
            got[t].append(here[t])
    return got

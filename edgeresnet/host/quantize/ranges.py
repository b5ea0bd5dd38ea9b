"""``mse+gptq+ranges``: ``mse+gptq``'s weights, then every activation's int8 range learned end to end.

Each activation range of the other methods is chosen for its own tensor
(``mse``: the least rounding plus clipping error of that tensor alone). What
matters is the model's answer: a range that clips a little more in one block
may cost nothing at the output, and a finer grid elsewhere may buy a lot.
This method starts from ``mse+gptq``'s model (its ranges, rounded weights and
corrected biases) and learns the ranges of all activations together, on the
calibration images:

- every activation is fake-quantized to its range as the int8 kernels
  compute it, with the range's ends as variables: the step size gets the
  straight-through gradient of LSQ (Esser et al., 2020) and each end moves
  on a log scale (``hi * exp(a)``, ``lo * exp(b)``), so the learning rate
  suits tensors of every magnitude; an end at 0 (a ReLU's lower end) stays;
- the objective is the Kullback-Leibler divergence of the int8 model's class
  probabilities from the float model's (the model before its weights were
  rounded), the errors that change answers rather than every logit's;
- the weights and biases stay ``mse+gptq``'s (learning the biases as well
  overfits the few hundred calibration images: measured on the ResNet-8,
  it lowered the agreement on held-out training images).

Every fifth calibration image is held out of the learning: the ranges kept
are those of the step (one look every ``CHECK`` steps) with the lowest
divergence on them, and the method's own ranges when no step lowered it (a
few hundred images are few to learn from); ``PATIENCE`` looks in a row
without a lower one end the learning early. The emitted model is the plain quantizer's, with these
ranges. When the graph holds an op :mod:`~edgeresnet.host.quantize.tfgraph`
cannot run, the ranges stay ``mse``'s.

Cost: ``range_iters`` steps of ``range_batch`` samples through the whole model
(``QuantOptConfig``); the report gives the seconds.
"""

from __future__ import annotations

import time

import numpy as np

from edgeresnet.host.quantize.graph import SOFTMAX, Graph
from edgeresnet.host.quantize.mse_gptq import MseGptq
from edgeresnet.host.quantize.registry import register_method
from edgeresnet.host.quantize.tfgraph import Ops, adam, supported

LR = 1e-2
CHUNK = 100  # samples per batch of the passes over many samples
CHECK = 25  # steps between two looks at the held-out divergence
PATIENCE = 3  # looks without a lower held-out divergence that end the learning
HELD_EVERY, MIN_HELD = 5, 16  # every fifth sample is held out to pick the step whose ranges are kept


@register_method
class MseGptqRanges(MseGptq):
    name = "mse+gptq+ranges"
    description = "mse+gptq, then the activation ranges learned together on the calibration images (slower)"
    max_choice_macs = 50e6

    def edit(self, graph, layers, measured, cfg, tick):
        from edgeresnet.host.quantize.engine import spread

        samples = measured.samples[spread(len(measured.samples), cfg.range_samples)]
        learner = RangeLearner(graph, samples)  # the float model's answers: before the weights are rounded
        details = super().edit(graph, layers, measured, cfg, tick) or {}
        return details | learner.learn(cfg, tick)


def _fake_quant(tf, x, lo, hi):
    """``x`` on TFLite's asymmetric int8 grid of [lo, hi], with LSQ's straight-through gradients for x, lo, hi."""
    scale = tf.maximum((hi - lo) / 255.0, 1e-12)
    zp = tf.stop_gradient(tf.clip_by_value(tf.round(-128.0 - lo / scale), -128.0, 127.0))
    v = x / scale
    v = v + tf.stop_gradient(tf.round(v) - v)  # round, gradient passed straight through
    return (tf.clip_by_value(v + zp, -128.0, 127.0) - zp) * scale


class _LearnedOps(Ops):
    """:class:`Ops` whose fake quantization of the learned tensors reads ``bounds`` (lo, hi vectors)."""

    def __init__(self, graph: Graph, tensors: list[int]):
        super().__init__(graph)
        self.index = {t: k for k, t in enumerate(tensors)}
        self.bounds = None

    def fake_quant(self, i: int, x):
        k = self.index.get(i)
        if k is None or self.bounds is None:
            return super().fake_quant(i, x)
        return _fake_quant(self.tf, x, self.bounds[0][k], self.bounds[1][k])


class RangeLearner:
    """Learns ``graph``'s activation ranges on ``samples`` against the float answers measured when it is made."""

    def __init__(self, graph: Graph, samples: np.ndarray):
        self.graph, self.samples = graph, samples
        self.note = "" if supported(graph, graph.ops) else "an op of the model cannot run in the learner"
        self.tensors = graph.activation_tensors()
        last_code, last_op = graph.ops[-1]
        self.logits = int(last_op.inputs[0]) if last_code == SOFTMAX else int(graph.sg.outputs[0])
        self.ops = _LearnedOps(graph, self.tensors)
        self.reference = None if self.note else self._float_logits()

    def learn(self, cfg, tick) -> dict:
        """Set the learned ranges on the graph (when they lower the held-out divergence); the report's figures."""
        if self.note or not self.tensors:
            return {"ranges_learned": 0, "ranges_note": self.note or "no activation to learn a range for"}
        tf = self.ops.tf
        start = time.perf_counter()
        self.ops = _LearnedOps(self.graph, self.tensors)  # afresh: the weights changed since the float answers
        lo0, hi0 = (np.array(v, np.float32) for v in zip(*(self.graph.range(t) for t in self.tensors)))
        lo0, hi0 = np.minimum(lo0, 0.0), np.maximum(hi0, 0.0)
        u = tf.Variable(np.zeros(2 * len(self.tensors), np.float32))  # log-factors of hi, then of lo

        def bounds():
            n = len(self.tensors)
            return lo0 * tf.exp(u[n:]), hi0 * tf.exp(u[:n])  # an end at 0 stays at 0

        fit, held = _split(len(self.samples))
        step = self._stepper(u, bounds, fit)
        rng = np.random.default_rng(cfg.seed)
        best = before = self._total(bounds(), held)
        best_u, best_step = u.numpy(), 0
        tick.section("range learning steps", cfg.range_iters)
        for k in range(cfg.range_iters):
            step(tf.constant(rng.choice(len(fit), min(cfg.range_batch, len(fit)), replace=False), tf.int32),
                 tf.constant(float(k + 1)))
            tick()
            if (k + 1) % CHECK == 0 or k + 1 == cfg.range_iters:
                now = self._total(bounds(), held)
                if now < best:
                    best, best_u, best_step = now, u.numpy(), k + 1
                elif k + 1 - best_step >= PATIENCE * CHECK:
                    break  # no better held-out divergence for PATIENCE looks: more steps only fit the others
        u.assign(best_u)
        if best_step:
            for t, lo, hi in zip(self.tensors, *(b.numpy() for b in bounds())):
                self.graph.set_range(t, float(lo), float(hi))
        return {
            "ranges_learned": len(self.tensors) if best_step else 0, "range_steps": best_step,
            # mean KL divergence of the int8 class probabilities from the float ones on the held-out samples (as simulated)
            "range_kl_before": float(f"{before:.4g}"), "range_kl_after": float(f"{best:.4g}"),
            "range_held_out": 0 if len(held) == len(self.samples) else len(held),  # 0: too few, all samples judged
            "range_seconds": round(time.perf_counter() - start, 2),
        }

    def _stepper(self, u, bounds, fit: np.ndarray):
        """One Adam step of ``u`` on the samples ``fit[idx]``."""
        tf = self.ops.tf
        slots = [(u, LR, tf.Variable(tf.zeros_like(u)), tf.Variable(tf.zeros_like(u)))]
        x_fit, ref_fit = tf.constant(self.samples[fit]), tf.constant(self.reference[fit])

        @tf.function(reduce_retracing=True)
        def step(idx, t):
            with tf.GradientTape() as tape:
                loss = self._divergence(tf.gather(x_fit, idx), tf.gather(ref_fit, idx), bounds())
            adam(tf, slots, tape.gradient(loss, [u]), t)
            return loss

        return step

    def _run(self, x, bounds, quantized: bool):
        """The logits of ``x`` (int8 activations on ``bounds`` when ``quantized``)."""
        self.ops.bounds = bounds
        inp = int(self.graph.sg.inputs[0])
        if quantized and self.graph.has_range(inp):
            x = self.ops.fake_quant(inp, x)
        return self.ops.run(self.graph.ops, {inp: x}, {}, quantized)[self.logits]

    def _divergence(self, x, reference, bounds):
        tf = self.ops.tf
        p = tf.nn.softmax(reference)
        return tf.reduce_mean(tf.reduce_sum(
            p * (tf.nn.log_softmax(reference) - tf.nn.log_softmax(self._flat(self._run(x, bounds, True)))), -1))

    def _flat(self, y):
        return self.ops.tf.reshape(y, [self.ops.tf.shape(y)[0], -1])

    def _float_logits(self) -> np.ndarray:
        tf = self.ops.tf
        parts = [self._flat(self._run(tf.constant(self.samples[a : a + CHUNK]), None, False)).numpy()
                 for a in range(0, len(self.samples), CHUNK)]
        return np.concatenate(parts)

    def _total(self, bounds, rows: np.ndarray) -> float:
        """The mean divergence over the samples ``rows``."""
        tf = self.ops.tf
        total = 0.0
        for a in range(0, len(rows), CHUNK):
            part = rows[a : a + CHUNK]
            x, ref = tf.constant(self.samples[part]), tf.constant(self.reference[part])
            total += float(self._divergence(x, ref, bounds)) * len(part)
        return total / len(rows)


def _split(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Sample indices to learn from, and the held-out ones (every HELD_EVERY-th) that pick the step to keep;
    with fewer than HELD_EVERY * MIN_HELD samples, all of them do both."""
    from edgeresnet.host.quantize.engine import hold_out

    fit, held = hold_out(n, HELD_EVERY)
    if len(held) < MIN_HELD:
        return np.arange(n), np.arange(n)
    return fit, held

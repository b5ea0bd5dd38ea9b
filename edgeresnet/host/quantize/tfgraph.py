"""The calibrated float model's ops as differentiable TensorFlow functions, for learned rounding.

:func:`run_ops` evaluates a run of the flatbuffer's operators on TensorFlow
tensors: float, or as the int8 model will compute them (every activation
fake-quantized to its calibrated range, every convolution and
fully-connected layer with the weights the caller passes, e.g. soft-rounded
ones). Only the ops a ResNet's int8 graph holds are known
(:data:`KNOWN_OPS`); :func:`supported` says whether a run of ops is.
"""

from __future__ import annotations


import numpy as np

from edgeresnet._util import tf as _tf
from edgeresnet.host.quantize.graph import (
    AVERAGE_POOL_2D, CONV_2D, FULLY_CONNECTED, MAX_POOL_2D, MEAN, PAD, RESHAPE, SOFTMAX, SQUEEZE, Graph,
)

ADD, SUB, MUL, DEPTHWISE_CONV_2D, RELU, RELU6 = 0, 41, 18, 4, 19, 21
KNOWN_OPS = {
    ADD, SUB, MUL, CONV_2D, DEPTHWISE_CONV_2D, FULLY_CONNECTED, AVERAGE_POOL_2D, MAX_POOL_2D, MEAN, PAD, RESHAPE,
    SQUEEZE, SOFTMAX, RELU, RELU6,
}
_ACTIVATIONS = {0: None, 1: "relu", 3: "relu6"}  # fused activation codes (2: RELU_N1_TO_1 and 4+ unknown)


def supported(graph: Graph, ops: list) -> bool:
    """True when every op of ``ops`` ((code, op) pairs) can run here."""
    for code, op in ops:
        if code not in KNOWN_OPS:
            return False
        act = getattr(op.builtinOptions, "fusedActivationFunction", 0)
        if act not in _ACTIVATIONS:
            return False
    return True


def adam(tf, slots: list, grads: list, t) -> None:
    """One Adam step (beta 0.9, 0.999) of every ``(variable, learning rate, first moment, second moment)`` of
    ``slots`` with its gradient in ``grads``; ``t`` counts the steps from 1."""
    for (v, lr, m, s2), g in zip(slots, grads):
        m.assign(0.9 * m + 0.1 * g)
        s2.assign(0.999 * s2 + 0.001 * tf.square(g))
        v.assign_sub(lr * (m / (1.0 - tf.pow(0.9, t))) / (tf.sqrt(s2 / (1.0 - tf.pow(0.999, t))) + 1e-8))


class Ops:
    """Runs ops of ``graph`` on TensorFlow tensors; ``quantized``: activations fake-quantized to their ranges."""

    def __init__(self, graph: Graph):
        self.graph = graph
        self.tf = _tf.tf()
        self._consts: dict = {}

    def const(self, i: int):
        if i not in self._consts:
            v = self.graph.const(i)
            self._consts[i] = None if v is None else self.tf.constant(v)
        return self._consts[i]

    def fake_quant(self, i: int, x):
        """``x`` on tensor ``i``'s int8 grid (its calibrated range), gradients passed straight through."""
        lo, hi = self.graph.range(i)
        lo, hi = min(lo, 0.0), max(hi, 0.0)
        return self.tf.quantization.fake_quant_with_min_max_args(x, lo, max(hi, lo + 1e-6), num_bits=8)

    def run(self, ops: list, values: dict, weights: dict, quantized: bool) -> dict:
        """Evaluate ``ops`` in order; ``values`` {tensor: value} holds their inputs and receives their outputs.

        ``weights`` {weight or bias tensor: TF tensor in the flatbuffer's layout} replaces those constants.
        """
        for code, op in ops:
            out = int(op.outputs[0])
            y = self._op(code, op, values, weights)
            act = _ACTIVATIONS[getattr(op.builtinOptions, "fusedActivationFunction", 0)]
            if act == "relu":
                y = self.tf.nn.relu(y)
            elif act == "relu6":
                y = self.tf.nn.relu6(y)
            if quantized and self.graph.has_range(out) and code != SOFTMAX:
                y = self.fake_quant(out, y)
            values[out] = y
        return values

    def _input(self, i: int, values: dict, weights: dict):
        if i in weights:
            return weights[i]
        if i in values:
            return values[i]
        c = self.const(i)
        if c is None:
            raise ValueError(f"tensor {self.graph.sg.tensors[i].name.decode(errors='replace')} has no value")
        return c

    def _op(self, code, op, values, weights):
        tf = self.tf
        ins = [int(i) for i in op.inputs]
        x = self._input(ins[0], values, weights)
        o = op.builtinOptions
        if code in (CONV_2D, DEPTHWISE_CONV_2D, FULLY_CONNECTED):
            return self._weighted(code, o, x, ins, values, weights)
        if code in (ADD, SUB, MUL):
            y = self._input(ins[1], values, weights)
            return {ADD: tf.add, SUB: tf.subtract, MUL: tf.multiply}[code](x, y)
        if code in (AVERAGE_POOL_2D, MAX_POOL_2D):
            pad = "SAME" if o.padding == 0 else "VALID"
            fn = tf.nn.avg_pool2d if code == AVERAGE_POOL_2D else tf.nn.max_pool2d
            return fn(x, [o.filterHeight, o.filterWidth], [o.strideH, o.strideW], pad)
        if code == MEAN:
            axes = self.graph.int_values(ins[1])
            return tf.reduce_mean(x, axis=axes, keepdims=bool(o.keepDims))
        if code == PAD:
            return tf.pad(x, np.reshape(self.graph.int_values(ins[1]), (-1, 2)))  # (rank, 2) paddings
        if code in (RESHAPE, SQUEEZE):
            shape = list(self.graph.sg.tensors[int(op.outputs[0])].shape)
            return tf.reshape(x, [-1] + shape[1:])
        if code == SOFTMAX:
            return tf.nn.softmax(x * float(o.beta or 1.0))
        if code == RELU:
            return tf.nn.relu(x)
        return tf.nn.relu6(x)

    def _weighted(self, code, o, x, ins, values, weights):
        tf = self.tf
        w = self._input(ins[1], values, weights)
        b = self._input(ins[2], values, weights) if len(ins) > 2 and ins[2] >= 0 else None
        if code == FULLY_CONNECTED:
            y = tf.matmul(tf.reshape(x, [-1, w.shape[1]]), w, transpose_b=True)
        else:
            pad = "SAME" if o.padding == 0 else "VALID"
            strides = [1, o.strideH, o.strideW, 1]
            dil = [o.dilationHFactor, o.dilationWFactor]
            if code == CONV_2D:
                y = tf.nn.conv2d(x, tf.transpose(w, (1, 2, 3, 0)), strides, pad, dilations=dil)
            else:
                kernel = tf.reshape(w, [w.shape[1], w.shape[2], x.shape[-1], -1])
                y = tf.nn.depthwise_conv2d(x, kernel, strides, pad, dilations=dil)
        return y if b is None else y + b

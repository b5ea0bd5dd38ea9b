"""``mse+bias`` (the default): ``mse`` ranges plus weights rounded here and bias-corrected.

Float weights are replaced by their int8 values times the scale the quantizer
will compute (symmetric, ``max|w| / 127`` per output channel; each channel's
largest weight never moves, so the quantizer recomputes the same scale and its
re-rounding is exact), rounded to nearest. Then the mean output shift the
rounding causes on the calibration inputs is subtracted from the bias (bias
correction): :func:`quantize_layer_weights`.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from edgeresnet._util import tf as _tf
from edgeresnet.host.quantize.graph import FULLY_CONNECTED, Graph, Layer
from edgeresnet.host.quantize.mse import Mse
from edgeresnet.host.quantize.registry import register_method


@register_method
class MseBias(Mse):
    name = "mse+bias"
    description = "mse ranges, outlier-channel equalization and bias correction of weight rounding"
    uses_input_means = True

    def set_weights(self, graph, layers, stats) -> None:
        for layer in layers:
            quantize_layer_weights(graph, layer, stats.mean_inputs.get(layer.x))


def round_to_nearest(w: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """The int8 steps of ``w`` on the per-output-channel grid ``scale`` (axis 0), rounded to nearest."""
    return np.clip(np.round(w / scale.reshape((-1,) + (1,) * (w.ndim - 1))), -127, 127)


def quantize_layer_weights(graph: Graph, layer: Layer, x_mean, round_weights: Callable = round_to_nearest) -> None:
    """Write ``layer``'s weights as int8 steps times the quantizer's scale, and correct its bias for the rounding.

    ``round_weights(w, scale)`` gives the steps (float64, ``w``'s shape);
    ``x_mean`` is the layer's mean input (None: the bias is left as it is).
    """
    tf = _tf.tf()
    w = graph.const(layer.w).astype(np.float64)
    s = _weight_scale(w, layer.per_channel)
    shape = (-1,) + (1,) * (w.ndim - 1)
    q = round_weights(w, s)
    wq = (q * s.reshape(shape)).astype(np.float32)
    if layer.b is not None and x_mean is not None:
        shift = _layer_output_mean(tf, layer, x_mean, wq.astype(np.float64) - w)
        graph.set_const(layer.b, (graph.const(layer.b).astype(np.float64) - shift).astype(np.float32))
    graph.set_const(layer.w, wq)


def _weight_scale(w: np.ndarray, per_channel: bool) -> np.ndarray:
    """The quantizer's symmetric int8 scale: max|w| / 127 per output channel (axis 0) or per tensor."""
    if per_channel:
        s = np.abs(w).reshape(w.shape[0], -1).max(1) / 127.0
    else:
        s = np.full(w.shape[0], np.abs(w).max() / 127.0)
    return np.where(s > 0, s, 1.0).astype(np.float64)


def _layer_output_mean(tf, layer: Layer, x_mean: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Mean over positions of the layer's output (no bias) for the mean input image (linearity)."""
    if layer.kind == FULLY_CONNECTED:
        return (x_mean.reshape(-1, w.shape[1]) @ w.T.astype(np.float64)).mean(0)
    o = layer.options
    pad = "SAME" if o.padding == 0 else "VALID"
    y = tf.nn.conv2d(
        x_mean.astype(np.float32), np.transpose(w, (1, 2, 3, 0)).astype(np.float32),
        [1, o.strideH, o.strideW, 1], pad, dilations=[1, o.dilationHFactor, o.dilationWFactor, 1],
    ).numpy()
    return y.reshape(-1, y.shape[-1]).astype(np.float64).mean(0)

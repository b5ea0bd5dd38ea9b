"""``mse+bias`` (the default): ``mse`` ranges plus weights rounded here and bias-corrected.

Float weights are replaced by their int8 values times the scale the quantizer
will compute (symmetric, ``max|w| / 127`` per output channel; each channel's
largest weight never moves, so the quantizer recomputes the same scale and its
re-rounding is exact), rounded to nearest. Then the mean output shift the
rounding causes on the calibration inputs is subtracted from the bias (bias
correction).
"""

from __future__ import annotations

from edgeresnet.host.quantize import graph as g
from edgeresnet.host.quantize.mse import Mse
from edgeresnet.host.quantize.registry import register_method


@register_method
class MseBias(Mse):
    name = "mse+bias"
    description = "mse ranges, outlier-channel equalization and bias correction of weight rounding"
    uses_input_means = True

    def set_weights(self, graph, layers, stats) -> None:
        # Input correlations (``stats.hessians``) only when the method asked for "gptq" samples; else round to nearest.
        for layer in layers:
            g._quantize_layer_weights(graph, layer, stats.mean_inputs.get(layer.x), stats.hessians.get(layer.w))

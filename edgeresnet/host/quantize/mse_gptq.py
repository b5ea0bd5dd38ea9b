"""``mse+gptq``: ``mse+bias`` with GPTQ rounding of the weights.

Each rounding error is pushed onto the weights not yet rounded, weighted by
the layer's input correlations (Hessian), measured on ``gptq_samples``
calibration samples and ``gptq_rows`` patch rows per sample and layer.
"""

from __future__ import annotations

from edgeresnet.host.quantize.mse_bias import MseBias
from edgeresnet.host.quantize.registry import register_method


@register_method
class MseGptq(MseBias):
    name = "mse+gptq"
    description = "mse+bias with GPTQ rounding (errors pushed onto the weights not yet rounded)"

    def subsets(self, n, cfg):
        from edgeresnet.host.quantize.engine import spread

        return super().subsets(n, cfg) | {"gptq": spread(n, cfg.gptq_samples)}

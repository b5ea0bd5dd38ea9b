"""``mse``: error-minimising activation ranges, after equalizing outlier channels.

1. Equalization: a channel whose range dwarfs the rest of its tensor is scaled
   down, and the next layer's matching input weights up, which keeps the float
   function (cross-layer equalization). Applied only to real outliers; see
   ``graph._equalize``.
2. The engine's one float pass over the calibration samples (in the TFLite
   interpreter, every activation made a graph output) records, besides every
   tensor's min/max, a histogram per tensor on an evenly spread subset (and,
   for the methods built on this one, the mean input of every convolution and
   fully-connected layer). Tensors equalization rescaled are measured again.
3. Ranges: each activation range becomes the one that minimises the expected
   squared error of int8 rounding plus clipping on its histogram. A tensor
   read by ``AVERAGE_POOL_2D`` (whose int8 output must share its input's
   scale) is scored on the pooled output instead; ops whose output shares its
   input's scale get the input's range. Graph inputs and outputs keep theirs.
"""

from __future__ import annotations

import numpy as np

from edgeresnet.host.quantize import graph as g
from edgeresnet.host.quantize.registry import Method, register_method

_NONE = np.zeros(0, np.int64)


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

    def edit(self, graph, layers, measured, cfg, tick):
        changed = g._equalize(graph, measured.stats.channel_max)
        if changed:
            measured.run(tick, tensors=changed)
        self.set_weights(graph, layers, measured.stats)
        g._set_ranges(graph, measured.stats)

    def set_weights(self, graph, layers, stats) -> None:
        """Weights stay as calibrated (the quantizer rounds them to nearest)."""

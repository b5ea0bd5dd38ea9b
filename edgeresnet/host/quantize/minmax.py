"""``minmax``: the plain TFLite converter, bit for bit (ranges from the calibration min/max)."""

from __future__ import annotations

from edgeresnet.host.quantize.registry import Method, register_method


@register_method
class MinMax(Method):
    name = "minmax"
    description = "the plain converter: activation ranges are the calibration min/max, weights rounded to nearest"
    plain = True

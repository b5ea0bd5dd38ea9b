"""Full-integer int8: one engine, a registry of methods, accuracy recovery on top.

The plain TFLite converter sets every activation's int8 range to the minimum
and maximum seen on the calibration data and rounds every weight to the
nearest step. Both leave accuracy on the table. The methods here keep the
converter's own quantizer, so the result has exactly the plain converter's
structure (the same ops, int8 per-channel weights, the same input/output
quantization), and only change what that quantizer is fed.

- ``engine.py``: :class:`Int8Session`, the one int8 engine (calibrate, let the
  method edit the calibrated model, quantize; mixed and debug models on top).
- ``registry.py``: the method registry; ``minmax.py``, ``mse.py`` (MSE range
  search), ``mse_bias.py`` (default; bias correction), ``mse_gptq.py``
  (GPTQ): one module per method, holding its algorithm; ``equalize.py``:
  the outlier-channel equalization ``mse`` and the methods built on it apply.
- ``graph.py``: the calibrated flatbuffer; ``stats.py``: the one statistics
  pass (ranges, histograms and the rest) the methods work from.
- ``recovery.py``: accuracy recovery, which keeps the worst layers of the
  method's model in float; ``ranking.py``: its per-layer error ranking.

Numbers for each method: ``benchmarks/quant_methods.py``.
"""

from __future__ import annotations

# Loaded on first use, so `edgeresnet --help` (which reads DEFAULT_METHOD) stays instant.
_EXPORTS = {
    "QuantOptConfig": "config",
    "IO_TYPES": "engine",
    "Int8Session": "engine",
    "check_full_integer": "engine",
    "quantize_int8": "engine",
    "DEFAULT_METHOD": "registry",
    "Method": "registry",
    "get_method": "registry",
    "method_names": "registry",
    "register_method": "registry",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)

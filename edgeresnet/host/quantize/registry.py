"""The registry of int8 methods: one module per method, registered by name.

A method module holds its own algorithm and registers its :class:`Method`
subclass with :func:`register_method`; importing the module is all it takes
to add a method (the built-in ones are imported on first use).

A method decides what the engine feeds the converter's quantizer: the plain
converter's own min/max model (``plain``), or a calibrated model it edits
(:meth:`Method.edit`). The engine, ``convert``, ``report`` and accuracy
recovery ask the method object; none of them branches on a method's name.
"""

from __future__ import annotations

from typing import Optional

from edgeresnet.errors import ConfigError

DEFAULT_METHOD = "auto"  # what --int8-method, ConvertOptions and ConversionSpec default to

_METHODS: dict = {}
_BUILTIN = ("auto", "minmax", "mse", "mse+bias", "mse+gptq", "mse+gptq+ranges", "mse+learned")  # listed first, in this order, whatever was imported first
_builtin_loaded = False


class Method:
    """One way of choosing int8 ranges and weights. Subclasses live one per module."""

    name: str = ""
    description: str = ""
    plain: bool = False  # the model is the plain converter's output, bit for bit (no edit)
    uses_input_means: bool = False  # the statistics pass also averages every weight layer's input
    chooses: bool = False  # picks another method per model (``auto``): the engine asks ``choice.choose``
    # ``auto`` tries this method only on models of at most this many multiply-accumulates per input (None: any)
    max_choice_macs: Optional[float] = None

    def subsets(self, n: int, cfg) -> dict:
        """Calibration sample indices of each statistic the one statistics pass collects besides the ranges:
        ``"stats"`` (histograms, kept pool inputs, input means), ``"equalize"``, ``"gptq"``."""
        return {}

    def rescale(self, graph, channel_max: dict) -> set:
        """Rescale channels of ``graph`` from the "equalize" samples' per-channel maxima, before the rest of the
        statistics are measured; returns the tensors whose values changed (empty: the model is unchanged)."""
        return set()

    def edit(self, graph, layers, measured, cfg, tick) -> Optional[dict]:
        """Change the calibrated float model ``graph`` (ranges, weights, biases) in place; may return
        figures for the report (``Int8Session.details``).

        ``measured`` is the statistics pass (``stats.StatsPass``) that already ran over the calibration
        samples; its ``stats`` hold what :meth:`subsets` asked for.
        """


def register_method(cls):
    """Class decorator: register a :class:`Method` under its ``name``."""
    _METHODS[cls.name] = cls()
    return cls


def get_method(name: Optional[str]) -> Method:
    """The registered method ``name``; ConfigError naming the choices when there is none."""
    _load_builtin()
    if name not in _METHODS:
        raise ConfigError(f"unknown int8 method {name!r}; choose one of {', '.join(_METHODS)}")
    return _METHODS[name]


def method_names() -> tuple[str, ...]:
    """Every registered method's name: the built-in ones, then any other in the order registered."""
    _load_builtin()
    return tuple(_METHODS)


def _load_builtin() -> None:
    global _builtin_loaded
    if not _builtin_loaded:
        from edgeresnet.host.quantize import choice, learned, minmax, mse, mse_bias, mse_gptq, ranges  # noqa: F401 - each registers itself

        others = {name: m for name, m in _METHODS.items() if name not in _BUILTIN}
        ordered = {name: _METHODS[name] for name in _BUILTIN} | others
        _METHODS.clear()
        _METHODS.update(ordered)
        _builtin_loaded = True

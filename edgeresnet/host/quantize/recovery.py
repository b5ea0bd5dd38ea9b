"""Accuracy recovery for int8: keep the layers that quantize worst in float.

When a full-integer model drifts further from the float model than the budget
allows (``max_drop`` points of top-1, or of disagreement without labels), the
loop below trades a little size and speed for accuracy:

1. Start from the model the chosen int8 method produced (``--int8-method``;
   the engine's :class:`~edgeresnet.host.quantize.Int8Session`, reused from the
   conversion when the caller has it). From the same calibrated model the
   engine builds a *debug* model in which every quantized layer has a float
   twin fed from the same (quantized) inputs, and a ``NumericVerify`` op
   between the two; ``tf.lite.experimental.QuantizationDebugger`` runs it.
2. Rank the layers (``ranking.py``). The debug model is run on (up to ``rank_samples`` of) the
   evaluation images, all tensors kept, and every layer is scored by its own
   quantization error, independent of the layers before it:

   * ``channel_error`` (default): per output channel, the RMS error of the int8
     output divided by the RMS of the float output (over all samples and
     positions; a channel that is lost entirely scores 1), averaged over the
     channels. It sees what a per-tensor error hides: one channel with a huge
     range makes the shared int8 scale so coarse that the other channels are
     rounded to a few levels or to nothing.
   * ``rmse_scale``: the debugger's own statistic, RMS error divided by the
     tensor's scale (about 0.29 for pure rounding; more means clipping or
     weight error). TensorFlow's debugger guide ranks by it.

3. Return layers to float, worst first, ``group_size`` ranked layers per step.
   A layer goes back to float *with the layers that read its output*: a float
   layer whose output feeds an int8 layer is re-quantized with the same
   calibrated scale, so its output-rounding error (part of what was measured)
   would stay. The model is rebuilt from the same calibrated model, with the
   method's ranges and weights (``Int8Session.mixed``: the quantizer's
   ``denylisted_nodes``, no new calibration pass), and measured again on all
   evaluation images.
4. Stop when the drift is within budget, after ``max_steps`` steps, or when
   nothing is left to return. The loop always keeps at least one layer int8:
   a model with every layer in float is the fp32 precision's job, and is
   smaller and faster built as such.

The result is a mixed model (precision label ``int8+float``): int8 ops with
QUANTIZE/DEQUANTIZE around the float ones. It needs only TFLite builtins
(``TFLITE_BUILTINS`` + ``TFLITE_BUILTINS_INT8``); ``SELECT_TF_OPS`` is never
enabled. It is meant for the CPU (XNNPACK runs it; the tests check that) and
the mobile GPU delegate (which takes QUANTIZE/DEQUANTIZE; not run here). The
Edge TPU has no float fallback: there, :func:`edgetpu_worst_layers` only names
the layers to look at.

Input/output type: ``float32`` always works. ``int8``/``uint8`` keep the
integer interface the CPU target defaults to; to keep it, a layer that reads
the model input or writes its output is never returned to float (it is listed
in ``RecoveryResult.excluded``), and the rest of the loop is unchanged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np

from edgeresnet._util.validate import whole_number
from edgeresnet.errors import ConfigError, DataError
from edgeresnet.device.runtime import EVAL_BATCH, TFLiteModel
from edgeresnet.device.verify import Drift, drift, over_budget
from edgeresnet.host.quantize.engine import IO_TYPES, Int8Session, spread
from edgeresnet.host.quantize.ranking import RANKINGS, DebugSession, LayerError, rank_layers, rounded, short_name
from edgeresnet.host.quantize.registry import DEFAULT_METHOD

ProgressFn = Callable[[int, int], None]

MIXED_PRECISION = "int8+float"
RANKING_SHOWN = 10  # layers listed in to_dict()

STOP_MET = "within budget"
STOP_MAX_STEPS = "max_steps reached"
STOP_NOTHING_LEFT = "nothing left to return to float"


@dataclass(frozen=True)
class RecoveryConfig:
    """How the recovery loop runs.

    ``max_drop``: accuracy budget in top-1 points (disagreement with the float
    model when there are no labels). ``group_size``: ranked layers returned to
    float per step (each with the layers reading its output). ``max_steps``:
    re-validations at most; 0 only measures and ranks. ``ranking``: one of
    ``RANKINGS``. ``rank_samples``: evaluation images the ranking runs on.
    """

    max_drop: float
    group_size: int = 1
    max_steps: int = 8
    ranking: str = "channel_error"
    rank_samples: int = 64

    def __post_init__(self):
        if isinstance(self.max_drop, bool) or not isinstance(self.max_drop, (int, float, np.number)):
            raise ConfigError(f"max_drop must be a number of accuracy points, got {self.max_drop!r}")
        if not (math.isfinite(float(self.max_drop)) and float(self.max_drop) >= 0):
            raise ConfigError(f"max_drop must be zero or more accuracy points, got {self.max_drop}")
        whole_number("group_size", self.group_size, 1)
        whole_number("max_steps", self.max_steps, 0)
        whole_number("rank_samples", self.rank_samples, 1)
        if self.ranking not in RANKINGS:
            raise ConfigError(f"unknown ranking {self.ranking!r}; choose one of {', '.join(RANKINGS)}")

    def to_dict(self) -> dict:
        return {
            "max_drop": float(self.max_drop),
            "group_size": self.group_size,
            "max_steps": self.max_steps,
            "ranking": self.ranking,
            "rank_samples": self.rank_samples,
        }


@dataclass(frozen=True)
class RecoveryStep:
    """One re-validation: what was returned to float, and where that left the model."""

    step: int  # 0 = every layer int8
    returned: tuple[str, ...]  # node names returned to float in this step
    float_layers: int  # layers in float after this step (cumulative)
    drift: Drift
    size_bytes: int
    met: bool

    def to_dict(self, labels: Optional[dict] = None) -> dict:
        labels = labels or {}
        return {
            "step": self.step,
            "returned": [labels.get(n, short_name(n)) for n in self.returned],
            "float_layers": self.float_layers,
            "drop_pts": rounded(self.drift.drop_pts),
            "disagreement_pts": rounded(100.0 - self.drift.agreement),
            "agreement": rounded(self.drift.agreement),
            "size_bytes": self.size_bytes,
            "met": self.met,
        }


@dataclass(frozen=True)
class RecoveryResult:
    """What the loop built and measured. ``model`` is the final model's bytes."""

    model: bytes = field(repr=False)
    initial_model: bytes = field(repr=False)
    met: bool
    max_drop: float
    io_type: str
    float_layers: tuple[str, ...]  # node names kept in float, in the order they were returned
    ranking: tuple[LayerError, ...]  # every ranked layer, worst first
    steps: tuple[RecoveryStep, ...]
    initial: Drift
    final: Drift
    stopped: str
    ranking_metric: str = "channel_error"
    excluded: tuple[str, ...] = ()  # layers never returned to float (integer io boundary)
    method: str = DEFAULT_METHOD  # the int8 method of the starting model and of every layer left int8

    @property
    def precision(self) -> str:
        """``int8+float`` when any layer stayed float, else ``int8``."""
        return MIXED_PRECISION if self.float_layers else "int8"

    @property
    def tried(self) -> tuple[str, ...]:
        """Layers returned to float while trying (all of them: the loop never takes one back)."""
        return self.float_layers

    def label(self, node: str) -> str:
        """The short label of a node name (see :func:`short_name`)."""
        for layer in self.ranking:
            if layer.name == node:
                return layer.layer
        return short_name(node)

    def to_dict(self) -> dict:
        labels = {layer.name: layer.layer for layer in self.ranking}
        return {
            "precision": self.precision,
            "method": self.method,
            "io_type": self.io_type,
            "max_drop": self.max_drop,
            "met": self.met,
            "stopped": self.stopped,
            "float_layers": [labels.get(n, short_name(n)) for n in self.float_layers],
            "float_nodes": list(self.float_layers),
            "excluded": [labels.get(n, short_name(n)) for n in self.excluded],
            "size_bytes": {"initial": len(self.initial_model), "final": len(self.model)},
            "initial": self.initial.to_dict(),
            "final": self.final.to_dict(),
            "ranking_metric": self.ranking_metric,
            "ranking": [layer.to_dict() for layer in self.ranking[:RANKING_SHOWN]],
            "steps": [s.to_dict(labels) for s in self.steps],
        }


# ---------------------------------------------------------------------- inputs


def _check_eval(eval_x: np.ndarray, float_outputs: np.ndarray, labels) -> None:
    if eval_x.ndim != 4:
        raise DataError(f"evaluation images must be a batch (N, H, W, C), got shape {eval_x.shape}")
    if len(eval_x) == 0:
        raise DataError("accuracy recovery needs evaluation images; pass --eval with a few labelled images")
    if len(float_outputs) != len(eval_x):
        raise DataError(
            f"{len(float_outputs)} float outputs for {len(eval_x)} evaluation images; compute them on the same images"
        )
    if labels is not None and len(labels) != len(eval_x):
        raise DataError(f"{len(labels)} labels for {len(eval_x)} evaluation images")


def _spread(x: np.ndarray, k: int) -> np.ndarray:
    """Up to ``k`` rows spread evenly over ``x`` (evaluation sets are often sorted by class)."""
    x = np.asarray(x, np.float32)
    return x[spread(len(x), k)]


# ---------------------------------------------------------------------- the loop


def _measure(model: bytes, eval_x, float_outputs, labels) -> Drift:
    return drift(np.asarray(float_outputs), TFLiteModel(model).predict(eval_x, batch=EVAL_BATCH), labels)


def recover_int8(
    make_converter: Callable[[], object],
    calibration: np.ndarray,
    eval_x: np.ndarray,
    float_outputs: np.ndarray,
    labels: Optional[np.ndarray],
    config: RecoveryConfig,
    io_type: str = "float32",
    progress: Optional[ProgressFn] = None,
    method: str = DEFAULT_METHOD,
    session: Optional[Int8Session] = None,
) -> RecoveryResult:
    """Quantize to int8 with ``method``, then return the worst layers to float until the drift fits ``config.max_drop``.

    ``make_converter`` returns a fresh ``tf.lite.TFLiteConverter`` for the float
    model; ``calibration`` and ``eval_x`` are preprocessed float32 images (N, H,
    W, C); ``float_outputs`` are the float model's outputs on ``eval_x``;
    ``labels`` may be None (the budget then applies to disagreement with the
    float model). ``io_type`` is ``float32``, ``int8`` or ``uint8`` (see the
    module docstring). ``method`` names the int8 method (the method registry);
    ``session``, an :class:`Int8Session` already made for this model and
    calibration (e.g. by the conversion that went over budget), is reused
    instead of quantizing again. ``progress(done, total)`` counts calibration,
    ranking and steps.

    Returns a :class:`RecoveryResult` whether or not the budget was met
    (``met``); deciding to fail is the caller's. Raises ConfigError for bad
    settings, DataError for mismatched arrays, ConversionError when the
    converter fails.
    """
    eval_x, float_outputs, labels = _check_inputs(config, io_type, eval_x, float_outputs, labels)
    tick = _Ticks(progress, 2 + config.max_steps)
    rank_x = _spread(eval_x, config.rank_samples)
    if session is None:
        session = Int8Session(make_converter, calibration, io_type, method)
    debug = DebugSession(session, rank_x)
    tick(1)
    ranking = rank_layers(debug, rank_x, config.ranking)
    integer_io = io_type != "float32"
    excluded = tuple(layer.name for layer in ranking if integer_io and (layer.reads_input or layer.writes_output))

    def measure(float_nodes: tuple[str, ...]) -> tuple[bytes, Drift]:
        model = session.mixed(tuple(float_nodes), io_type)  # the other layers as the method quantized them
        return model, _measure(model, eval_x, float_outputs, labels)

    initial_model, initial = measure(())
    steps = [RecoveryStep(0, (), 0, initial, len(initial_model), not over_budget(initial, config.max_drop))]
    tick(2)
    model, float_nodes, stopped = _return_to_float(ranking, excluded, config, measure, steps, tick)
    tick(tick.total)
    return RecoveryResult(
        model=model if model is not None else initial_model, initial_model=initial_model, met=steps[-1].met,
        max_drop=float(config.max_drop), io_type=io_type, float_layers=tuple(float_nodes), ranking=tuple(ranking),
        steps=tuple(steps), initial=initial, final=steps[-1].drift, stopped=stopped, ranking_metric=config.ranking,
        excluded=excluded, method=session.method.name,
    )


def _check_inputs(config, io_type: str, eval_x, float_outputs, labels):
    """Settings and arrays of :func:`recover_int8`, checked before any work; the arrays as numpy."""
    if not isinstance(config, RecoveryConfig):
        raise ConfigError(f"config must be a RecoveryConfig, got {type(config).__name__}")
    if io_type not in IO_TYPES:
        raise ConfigError(f"io type {io_type!r} is not possible with float layers; choose one of {', '.join(IO_TYPES)}")
    eval_x = np.asarray(eval_x, np.float32)
    float_outputs = np.asarray(float_outputs, np.float32)
    labels = None if labels is None else np.asarray(labels)
    _check_eval(eval_x, float_outputs, labels)
    return eval_x, float_outputs, labels


class _Ticks:
    """``progress(done, total)`` only when ``done`` grew."""

    def __init__(self, progress: Optional[ProgressFn], total: int):
        self.progress, self.total, self.done = progress, total, 0

    def __call__(self, done: int) -> None:
        if self.progress is not None and done > self.done:
            self.done = done
            self.progress(done, self.total)


def _return_to_float(ranking, excluded, config: RecoveryConfig, measure, steps: list, tick):
    """Step 3 of the module docstring: worst layers to float, one group per step, until the budget is met.

    Appends a :class:`RecoveryStep` to ``steps`` per re-validation; returns the
    last model built (None when none was), the float nodes and why it stopped.
    """
    float_nodes: list[str] = []
    all_layers = {layer.name for layer in ranking}
    queue = [layer for layer in ranking if layer.name not in excluded]
    model = None
    while not steps[-1].met:
        if len(steps) - 1 >= config.max_steps:
            return model, float_nodes, STOP_MAX_STEPS
        returned = _next_group(queue, float_nodes, excluded, config.group_size)
        if returned and all_layers <= set(float_nodes) | set(returned):
            returned.pop()  # keep one layer int8: an all-float model is the fp32 precision's job
        if not returned:
            return model, float_nodes, STOP_NOTHING_LEFT
        float_nodes.extend(returned)
        model, d = measure(tuple(float_nodes))
        met = not over_budget(d, config.max_drop)
        steps.append(RecoveryStep(len(steps), tuple(returned), len(float_nodes), d, len(model), met))
        tick(len(steps) + 1)
    return model, float_nodes, STOP_MET


def _next_group(queue: list, float_nodes: list, excluded: tuple, group_size: int) -> list[str]:
    """The next ``group_size`` ranked layers off ``queue``, each with the layers reading it (not yet float)."""
    returned: list[str] = []
    picked = 0
    while queue and picked < group_size:
        layer = queue.pop(0)
        if layer.name in float_nodes or layer.name in returned:
            continue  # already in float as a reader of an earlier layer
        picked += 1
        for name in (layer.name, *layer.consumers):
            if name not in float_nodes and name not in returned and name not in excluded:
                returned.append(name)
    return returned


def edgetpu_worst_layers(
    make_converter: Callable[[], object],
    calibration: np.ndarray,
    eval_x: np.ndarray,
    top: int = 5,
    ranking: str = "channel_error",
    rank_samples: int = 64,
    method: str = DEFAULT_METHOD,
    session: Optional[Int8Session] = None,
) -> list[dict]:
    """The ``top`` layers with the largest int8 error, for targets with no float fallback (Edge TPU).

    Same engine and ranking as :func:`recover_int8` (the model ``method``
    produced, or ``session``'s), nothing is returned to float. Each entry is
    ``LayerError.to_dict()``.
    """
    whole_number("top", top, 1)
    if ranking not in RANKINGS:
        raise ConfigError(f"unknown ranking {ranking!r}; choose one of {', '.join(RANKINGS)}")
    eval_x = np.asarray(eval_x, np.float32)
    if eval_x.ndim != 4 or len(eval_x) == 0:
        raise DataError(f"ranking layers needs evaluation images (N, H, W, C), got shape {eval_x.shape}")
    samples = _spread(eval_x, whole_number("rank_samples", rank_samples, 1))
    if session is None:
        session = Int8Session(make_converter, calibration, "float32", method)
    session = DebugSession(session, samples)
    return [layer.to_dict() for layer in rank_layers(session, samples, ranking)[:top]]


def measure_cost(result: RecoveryResult, bench=None, backend: Optional[str] = None) -> dict:
    """Size and latency of the all-int8 model against the recovered one (``bench.benchmark``)."""
    from edgeresnet.device.bench import BenchConfig, benchmark

    bench = bench or BenchConfig()
    before = benchmark(result.initial_model, bench, backend=backend, isolate=False)  # models this run wrote
    after = benchmark(result.model, bench, backend=backend, isolate=False)
    return {
        "float_layers": len(result.float_layers),
        "size_bytes": {"initial": before.size_bytes, "final": after.size_bytes,
                       "change": after.size_bytes - before.size_bytes},
        "latency_ms": {"initial": round(before.median_ms, 4), "final": round(after.median_ms, 4),
                       "ratio": round(after.median_ms / before.median_ms, 3) if before.median_ms > 0 else None},
        "interpreter": f"{after.interpreter} {after.interpreter_version}",
        "repeats": bench.repeats,
    }

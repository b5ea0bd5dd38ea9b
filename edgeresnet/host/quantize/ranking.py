"""The per-layer int8 error ranking accuracy recovery works from.

From the int8 engine's calibrated model, the engine builds a *debug* model in
which every quantized layer has a float twin fed from the same (quantized)
inputs, and a ``NumericVerify`` op between the two
(:class:`DebugSession`; ``tf.lite.experimental.QuantizationDebugger`` runs
it). :func:`rank_layers` runs it on the ranking samples, all tensors kept, and
scores every layer by its own quantization error (``RANKINGS``:
``channel_error``, the mean per-channel relative RMS error; ``rmse_scale``,
the debugger's RMS error over the scale), worst first, with the layers that
read each one and whether it touches the model's input or output.
"""

from __future__ import annotations

import contextlib
import csv
import io
import math
import warnings
from dataclasses import dataclass
from typing import Optional

import numpy as np

from edgeresnet._util import tf as _tf
from edgeresnet._util.capture import capture_output, native_call
from edgeresnet.device.tflite_graph import TFLiteGraph, parse_tflite
from edgeresnet.errors import ConversionError
from edgeresnet.host.calibration import representative_dataset
from edgeresnet.host.quantize.engine import Int8Session

RANKINGS = ("channel_error", "rmse_scale")

_NUMERIC_VERIFY = "NumericVerify"


@dataclass(frozen=True)
class LayerError:
    """One quantized layer's own quantization error, as the ranking saw it."""

    name: str  # the node name the converter's denylist takes (its float output tensor's name)
    op: str
    channel_error: float
    rmse_scale: float
    sqnr_db: float
    scale: float
    consumers: tuple[str, ...] = ()  # quantized layers that read this layer's output
    reads_input: bool = False
    writes_output: bool = False

    @property
    def layer(self) -> str:
        """A short label: the Keras layer the node came from when the name says so."""
        return short_name(self.name, self.op)

    def metric(self, ranking: str) -> float:
        return self.channel_error if ranking == "channel_error" else self.rmse_scale

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "layer": self.layer,
            "op": self.op,
            "channel_error": rounded(self.channel_error),
            "rmse_scale": rounded(self.rmse_scale),
            "sqnr_db": rounded(self.sqnr_db),
            "scale": rounded(self.scale, 8),
        }


def rounded(v, digits: int = 4):
    """``v`` rounded to ``digits`` for a report; None when it is missing or not finite."""
    if v is None:
        return None
    v = float(v)
    return round(v, digits) if math.isfinite(v) else None


# The TF op a TFLite op was made from, as it appears at the end of a node name
# ("model/conv2d_5/Conv2D"): the layer that owns it names the node best.
_TF_OP_SUFFIX = {
    "CONV_2D": ("Conv2D",),
    "DEPTHWISE_CONV_2D": ("depthwise",),
    "FULLY_CONNECTED": ("MatMul", "Tensordot"),
    "ADD": ("add", "Add", "AddV2"),
    "MEAN": ("Mean",),
    "AVERAGE_POOL_2D": ("AvgPool",),
    "MAX_POOL_2D": ("MaxPool",),
}


def short_name(node: str, op: Optional[str] = None) -> str:
    """A readable label for a node name.

    ``model/activation/Relu;model/batch_normalization/FusedBatchNormV3;model/conv2d/Conv2D``
    from a CONV_2D is ``conv2d`` (the Keras layer of the part made from the op),
    else the layer of the first part; a name without layers
    (``StatefulPartitionedCall:0``) is shown with its op.
    """
    parts = [p for p in node.split(";") if p]
    layered = [p.split("/") for p in parts if len(p.split("/")) >= 3]
    if not layered:
        return f"{op} ({node})" if op else node
    for path in layered:
        if op and any(path[-1].startswith(sfx) for sfx in _TF_OP_SUFFIX.get(op, ())):
            return path[1]
    return layered[0][1]


@contextlib.contextmanager
def _quiet():
    """Capture native logs, and silence the two notices the debugger's ``tf.lite.Interpreter`` raises.

    The debugger only works with TensorFlow's own interpreter (the debug model's
    ``NumericVerify`` op is registered there), which announces its deprecation;
    keeping every tensor for the ranking pass is deliberate.
    """
    with capture_output() as cap, warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"(?s).*tf\.lite\.Interpreter is deprecated")
        warnings.filterwarnings("ignore", message=r"(?s).*experimental_preserve_all_tensors")
        yield cap


class DebugSession:
    """The int8 engine's session, and the debugger that ranks its layers on ``rank_samples``."""

    def __init__(self, engine: Int8Session, rank_samples: np.ndarray):
        self.engine, self.tf = engine, _tf.tf()
        self.debug_model = engine.debug_model()
        self.debugger = native_call(
            lambda: self.tf.lite.experimental.QuantizationDebugger(
                quant_debug_model_content=self.debug_model, debug_dataset=representative_dataset(rank_samples)
            ),
            "calibrating for selective quantization failed",
            quiet=_quiet,
        )


# ---------------------------------------------------------------------- ranking


def _layer_rows(debugger) -> list[dict]:
    """The debugger's per-layer table (name, op, tensor index in the debug model, stats)."""
    buf = io.StringIO()
    debugger.layer_statistics_dump(buf)
    return list(csv.DictReader(io.StringIO(buf.getvalue())))


def _graph_links(graph: TFLiteGraph, q_index: dict[int, str]):
    """For every layer (by quantized output tensor): its quantized readers, and the model boundary."""
    producers = {}
    for op in graph.ops:
        for t in op.outputs:
            producers[t] = op
    readers: dict[int, list] = {}
    for op in graph.ops:
        for t in op.inputs:
            if t >= 0:
                readers.setdefault(t, []).append(op)
    model_inputs, model_outputs = set(graph.inputs), set(graph.outputs)

    def layer_readers(t: int, seen: set) -> list[str]:
        found = []
        for op in readers.get(t, []):
            if op.name in (_NUMERIC_VERIFY, "DEQUANTIZE") or op.index in seen:
                continue
            seen.add(op.index)
            for out in op.outputs:
                if out in q_index:
                    found.append(q_index[out])
                elif graph.tensors[out].quantized:  # an int8 op without its own statistics: look through it
                    found.extend(layer_readers(out, seen))
        return found

    links = {}
    for t, name in q_index.items():
        op = producers.get(t)
        reads_input = False
        if op is not None:
            for i in op.inputs:
                src = producers.get(i)
                if i in model_inputs or (src is not None and src.name == "QUANTIZE" and set(src.inputs) & model_inputs):
                    reads_input = True
        writes_output = any(
            r.name == "DEQUANTIZE" and set(r.outputs) & model_outputs for r in readers.get(t, [])
        ) or t in model_outputs
        consumers = tuple(dict.fromkeys(layer_readers(t, set())))
        links[t] = (consumers, reads_input, writes_output)
    return links


def _channel_stats(debug_model: bytes, pairs: list[tuple[int, int]], samples: np.ndarray, tf) -> dict:
    """Per layer (quantized tensor index): per-channel error and signal energy over all samples."""
    with _quiet():
        interp = tf.lite.Interpreter(model_content=debug_model, experimental_preserve_all_tensors=True)
        interp.allocate_tensors()
        detail = interp.get_input_details()[0]
        tensors = {d["index"]: d for d in interp.get_tensor_details()}
        sums = {}
        for x in samples:
            interp.set_tensor(detail["index"], x[None].astype(detail["dtype"]))
            interp.invoke()
            for q_idx, f_idx in pairs:
                scales = tensors[q_idx]["quantization_parameters"]["scales"]
                zps = tensors[q_idx]["quantization_parameters"]["zero_points"]
                scale = float(scales[0]) if len(scales) else 1.0
                zp = int(zps[0]) if len(zps) else 0
                q = interp.get_tensor(q_idx).astype(np.float64)
                f = interp.get_tensor(f_idx).astype(np.float64)
                dq = (q - zp) * scale
                channels = f.shape[-1] if f.ndim else 1
                err = ((dq - f) ** 2).reshape(-1, channels).sum(0)
                sig = (f**2).reshape(-1, channels).sum(0)
                acc = sums.setdefault(q_idx, [np.zeros(channels), np.zeros(channels), 0, scale])
                acc[0] += err
                acc[1] += sig
                acc[2] += f.size
    return sums


def rank_layers(session: DebugSession, samples: np.ndarray, ranking: str) -> list[LayerError]:
    """Every quantized layer of ``session``'s debug model scored on ``samples``, worst by ``ranking`` first."""
    tf = session.tf
    graph = parse_tflite(session.debug_model)

    def run() -> list[dict]:
        session.debugger.run()
        return _layer_rows(session.debugger)

    rows = native_call(run, "ranking layers by quantization error failed", quiet=_quiet)
    q_index = {int(r["tensor_idx"]): r["tensor_name"] for r in rows}
    pairs = []
    for op in graph.ops:
        if op.name == _NUMERIC_VERIFY and len(op.inputs) >= 2 and op.inputs[0] in q_index:
            pairs.append((op.inputs[0], op.inputs[1]))
    try:
        sums = _channel_stats(session.debug_model, pairs, samples, tf)
    except (ValueError, RuntimeError) as exc:
        raise ConversionError(f"running the debug model to rank layers failed: {exc}") from None
    links = _graph_links(graph, q_index)
    layers = []
    for order, r in enumerate(rows):
        t = int(r["tensor_idx"])
        err, sig, count, scale = sums.get(t, [np.zeros(1), np.zeros(1), 0, float(r["scale"])])
        ratio = np.where(sig > 0, np.sqrt(err / np.where(sig > 0, sig, 1.0)), np.where(err > 0, 1.0, 0.0))
        channel_error = float(np.mean(np.minimum(ratio, 1.0)))
        noise, signal = float(err.sum()), float(sig.sum())
        sqnr = 200.0 if noise == 0 else (10.0 * math.log10(signal / noise) if signal > 0 else -200.0)
        mse = float(r["mean_squared_error"])
        rmse_scale = math.sqrt(mse) / float(r["scale"]) if float(r["scale"]) > 0 else float("inf")
        consumers, reads_input, writes_output = links.get(t, ((), False, False))
        layers.append(
            (
                order,
                LayerError(
                    name=r["tensor_name"],
                    op=r["op_name"],
                    channel_error=channel_error,
                    rmse_scale=rmse_scale,
                    sqnr_db=sqnr,
                    scale=float(r["scale"]),
                    consumers=consumers,
                    reads_input=reads_input,
                    writes_output=writes_output,
                ),
            )
        )
    layers.sort(key=lambda p: (-p[1].metric(ranking), p[0]))
    return [layer for _, layer in layers]


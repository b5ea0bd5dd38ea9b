"""The Edge TPU's supported operations: the op table, the per-op rules, and one op's check.

The op list and each op's limitations are data (``converters/edgetpu_ops.toml``,
read by :func:`load_op_table`); the rules a row names are the functions of
:data:`_RULES`. :func:`check_op` checks one op against its row, its rules and
the model-wide tensor requirements: 8-bit quantized tensors, sizes fixed at
compile time, constant parameters, at most three dimensions larger than 1.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Callable, Optional, Union

import numpy as np

from edgeresnet.errors import ConfigError
from edgeresnet._util.resources import read_toml, resource_dir
from edgeresnet.device.runtime import EDGETPU_CUSTOM_OP
from edgeresnet.device.tflite_graph import TFLiteGraph, Op, Tensor

EDGETPU_OP_NAME = EDGETPU_CUSTOM_OP.decode()
EIGHT_BIT = ("int8", "uint8")
FLOAT_TYPES = ("float32", "float16", "float64", "bfloat16")
# int32 constants are legitimate in a fully quantized graph: biases and
# shape/axis/padding operands.
ALLOWED_CONST_TYPES = ("int8", "uint8", "int32")


# --------------------------------------------------------------------------- table


@dataclass(frozen=True)
class OpRule:
    """One row of the Edge TPU supported-operations table."""

    tflite: tuple[str, ...]
    coral: str
    min_runtime: int = 10
    rules: tuple[str, ...] = ()
    limitation: str = ""
    caveat: str = ""
    # Stateful (variable) tensors of these types are allowed besides 8-bit ones
    # (an int8 LSTM keeps its cell state in int16).
    state_types: tuple[str, ...] = ()
    # Numbers the rules read (e.g. max_upscale for the resize ops).
    limits: dict = field(default_factory=dict, compare=False)

    def __post_init__(self):
        unknown = [r for r in self.rules if r not in _RULES]
        if unknown:
            raise ConfigError(f"edgetpu_ops.toml: op {self.coral!r} names unknown rules {unknown}")
        if not self.tflite:
            raise ConfigError(f"edgetpu_ops.toml: op {self.coral!r} lists no TFLite op names")
        missing = [f"{r} needs limits.{k}" for r in self.rules for k in _RULE_LIMITS.get(r, ()) if k not in self.limits]
        if missing:
            raise ConfigError(f"edgetpu_ops.toml: op {self.coral!r}: {'; '.join(missing)}")


@dataclass(frozen=True)
class EdgeTpuOpTable:
    source: str
    cache_bytes: int
    ops: dict  # TFLite op name -> OpRule

    def get(self, name: str) -> Optional[OpRule]:
        return self.ops.get(name)


def load_op_table(path: Optional[Union[str, Path]] = None) -> EdgeTpuOpTable:
    """The supported-operations table (``converters/edgetpu_ops.toml`` by default)."""
    if path is None:
        return _default_table()
    return _load_table(Path(path))


@lru_cache(maxsize=1)
def _default_table() -> EdgeTpuOpTable:
    return _load_table(resource_dir("converters") / "edgetpu_ops.toml")


def _load_table(path: Path) -> EdgeTpuOpTable:
    raw = read_toml(path, "the Edge TPU op table")
    ops = {}
    for row in raw.get("op", []):
        try:
            rule = OpRule(
                tflite=tuple(row["tflite"]),
                coral=str(row["coral"]),
                min_runtime=int(row.get("min_runtime", 10)),
                rules=tuple(row.get("rules", ())),
                limitation=str(row.get("limitation", "")),
                caveat=str(row.get("caveat", "")),
                state_types=tuple(row.get("state_types", ())),
                limits=dict(row.get("limits", {})),
            )
        except KeyError as exc:
            raise ConfigError(f"{path}: an [[op]] row lacks {exc}") from None
        for name in rule.tflite:
            ops[name] = rule
    cache = int(raw.get("cache_bytes", 8 * 1024 * 1024))
    if cache <= 0:
        raise ConfigError(f"{path}: cache_bytes must be positive, got {cache}")
    return EdgeTpuOpTable(source=str(raw.get("source", "")), cache_bytes=cache, ops=ops)


# --------------------------------------------------------------------------- per-op rules
# Each rule returns None when the op satisfies it, else a short reason.


def _tname(t: Tensor) -> str:
    return f"T#{t.index} ({t.name})" if t.name else f"T#{t.index}"


def _axes(graph: TFLiteGraph, tensor_index: int, rank: int) -> Optional[list[int]]:
    arr = graph.const_array(tensor_index)
    if arr is None:
        return None
    return sorted({int(a) % rank if rank else int(a) for a in np.ravel(arr)})


def _first_input(graph: TFLiteGraph, op: Op) -> Optional[Tensor]:
    return graph.tensor(op.inputs[0]) if op.inputs else None


def _rule_no_fused_activation(graph, op, row):
    act = op.options.get("fused_activation", "NONE")
    return None if act == "NONE" else f"has a fused {act} activation"


def _rule_same_dilation(graph, op, row):
    w, h = op.options.get("dilation_w", 1), op.options.get("dilation_h", 1)
    return None if w == h else f"dilation differs along x and y ({w} vs {h})"


def _rule_constant_weights(graph, op, row):
    w = graph.tensor(op.inputs[1]) if len(op.inputs) > 1 else None
    if w is None or not w.is_constant:
        return "its weights are not a constant tensor"
    return None


def _rule_fc_default_weights(graph, op, row):
    fmt = op.options.get("weights_format", 0)
    return None if fmt == 0 else f"uses a non-default weights format ({fmt})"


def _rule_fc_output_1d(graph, op, row):
    out = graph.tensor(op.outputs[0]) if op.outputs else None
    if out is not None and any(d != 1 for d in out.shape[:-1]):
        return f"its output has shape {list(out.shape)}, not one-dimensional"
    return None


def _rule_concat_constant_is_zero_pad(graph, op, row):
    consts = [graph.tensor(i) for i in op.inputs if i >= 0 and graph.tensor(i).is_constant]
    if not consts:
        return None
    if len(op.inputs) != 2:
        return f"has a constant input among {len(op.inputs)} inputs (only 2 are allowed then)"
    t = consts[0]
    arr = graph.const_array(t.index)
    zero = t.quantization.zero_point[0] if t.quantized and t.quantization.zero_point else 0
    if arr is None or np.any(arr != zero):
        return f"its constant input {_tname(t)} is not all zeros"
    return None


def _rule_reduce_not_on_batch(graph, op, row):
    src = _first_input(graph, op)
    if src is None or len(op.inputs) < 2:
        return None
    axes = _axes(graph, op.inputs[1], src.rank)
    if axes is None:
        return "its reduction axes are not a constant"
    return "reduces over the batch dimension" if 0 in axes else None


def _rule_mean_channel_multiple_of_4(graph, op, row):
    src = _first_input(graph, op)
    if src is None or len(op.inputs) < 2 or src.rank == 0:
        return None
    axes = _axes(graph, op.inputs[1], src.rank) or []
    channels = src.shape[-1]
    if src.rank - 1 in axes and channels % 4:
        return f"reduces over {channels} channels, not a multiple of 4"
    return None


def _rule_pack_not_on_batch(graph, op, row):
    return "packs along the batch dimension (axis 0)" if op.options.get("axis", 0) == 0 else None


def _rule_pad_not_on_batch(graph, op, row):
    if len(op.inputs) < 2:
        return None
    pads = graph.const_array(op.inputs[1])
    if pads is None:
        return "its paddings are not a constant"
    pads = np.asarray(pads).reshape(-1, 2)
    return "pads the batch dimension" if pads.shape[0] and np.any(pads[0] != 0) else None


def _rule_prelu_alpha_1d(graph, op, row):
    alpha = graph.tensor(op.inputs[1]) if len(op.inputs) > 1 else None
    if alpha is not None and any(d != 1 for d in alpha.shape[:-1]):
        return f"its alpha has shape {list(alpha.shape)}; only the innermost dimension may exceed 1"
    return None


def _rule_quantize_8bit_both_sides(graph, op, row):
    src = _first_input(graph, op)
    dst = graph.tensor(op.outputs[0]) if op.outputs else None
    if src is None or dst is None:
        return None
    if src.dtype not in EIGHT_BIT or dst.dtype not in EIGHT_BIT:
        return f"quantizes {src.dtype} to {dst.dtype}; only 8-bit to 8-bit re-quantization maps"
    return None


def _rule_resize_3d(graph, op, row):
    for i in (op.inputs[0], op.outputs[0]):
        t = graph.tensor(i)
        if t is not None and (t.rank != 4 or t.shape[0] != 1):
            return f"{_tname(t)} has shape {list(t.shape)}, not a 3-dimensional image of batch 1"
    return None


def _rule_resize_max_upscale(graph, op, row):
    src, dst = graph.tensor(op.inputs[0]), graph.tensor(op.outputs[0])
    if src is None or dst is None or src.rank != 4 or dst.rank != 4:
        return None  # resize_3d reports the shape
    limit = float(row.limits["max_upscale"])
    for axis, what in ((1, "height"), (2, "width")):
        if src.shape[axis] > 0 and dst.shape[axis] / src.shape[axis] > limit:
            return (
                f"scales the {what} {src.shape[axis]} -> {dst.shape[axis]} "
                f"(x{dst.shape[axis] / src.shape[axis]:.3g}; at most x{limit:g} maps without losing precision)"
            )
    return None


def _rule_softmax_1d_16000(graph, op, row):
    src = _first_input(graph, op)
    if src is None:
        return None
    if any(d != 1 for d in src.shape[:-1]):
        return f"its input has shape {list(src.shape)}, not one-dimensional"
    if src.shape and src.shape[-1] > 16000:
        return f"its input has {src.shape[-1]} elements (at most 16,000)"
    return None


def _rule_split_not_on_batch(graph, op, row):
    if len(op.inputs) < 2:
        return None
    src = graph.tensor(op.inputs[1])
    axes = _axes(graph, op.inputs[0], src.rank if src is not None else 0)
    if axes is None:
        return "its split axis is not a constant"
    return "splits along the batch dimension" if 0 in axes else None


def _rule_strided_slice_plain(graph, op, row):
    if op.options.get("ellipsis_mask", 0) or op.options.get("new_axis_mask", 0):
        return "uses an ellipsis or new-axis mask"
    if len(op.inputs) >= 4:
        strides = graph.const_array(op.inputs[3])
        if strides is None:
            return "its strides are not a constant"
        if np.any(np.asarray(strides) != 1):
            return f"has strides {np.ravel(strides).tolist()} (only strides of 1 map)"
    return None


_RULES: dict[str, Callable[[TFLiteGraph, Op, "OpRule"], Optional[str]]] = {
    "no_fused_activation": _rule_no_fused_activation,
    "same_dilation": _rule_same_dilation,
    "constant_weights": _rule_constant_weights,
    "fc_default_weights": _rule_fc_default_weights,
    "fc_output_1d": _rule_fc_output_1d,
    "concat_constant_is_zero_pad": _rule_concat_constant_is_zero_pad,
    "reduce_not_on_batch": _rule_reduce_not_on_batch,
    "mean_channel_multiple_of_4": _rule_mean_channel_multiple_of_4,
    "pack_not_on_batch": _rule_pack_not_on_batch,
    "pad_not_on_batch": _rule_pad_not_on_batch,
    "prelu_alpha_1d": _rule_prelu_alpha_1d,
    "quantize_8bit_both_sides": _rule_quantize_8bit_both_sides,
    "resize_3d": _rule_resize_3d,
    "resize_max_upscale": _rule_resize_max_upscale,
    "softmax_1d_16000": _rule_softmax_1d_16000,
    "split_not_on_batch": _rule_split_not_on_batch,
    "strided_slice_plain": _rule_strided_slice_plain,
}


# Rule -> the keys it reads from its row's ``limits``.
_RULE_LIMITS: dict[str, tuple[str, ...]] = {"resize_max_upscale": ("max_upscale",)}



def holds_no_data(t: Tensor) -> bool:
    """An empty placeholder (a dimension of size 0, e.g. an LSTM's unused intermediates)."""
    return any(d == 0 for d in t.shape)


def _tensor_reasons(graph: TFLiteGraph, op: Op, rule: OpRule) -> list[str]:
    """Model-wide tensor requirements, checked on the tensors one op touches."""
    reasons = []
    for role, indices in (("input", op.inputs), ("output", op.outputs)):
        for i in indices:
            t = graph.tensor(i)
            if t is None or holds_no_data(t):
                continue
            if t.is_constant:
                if t.dtype not in ALLOWED_CONST_TYPES:
                    reasons.append(f"constant {_tname(t)} is {t.dtype}, not quantized")
                continue
            if t.is_variable and t.dtype in rule.state_types and t.quantized:
                continue  # e.g. the int16 cell state of an int8 LSTM
            if t.dtype not in EIGHT_BIT or not t.quantized:
                what = t.dtype if t.dtype not in EIGHT_BIT else f"{t.dtype} without quantization parameters"
                reasons.append(f"{role} {_tname(t)} is {what}, not 8-bit quantized")
            dyn = [d for d in t.dynamic_dims if d != 0]
            if dyn:
                reasons.append(f"{role} {_tname(t)} has a size known only at run time (dimension {dyn[0]})")
            if any(d > 1 for d in t.shape[:-3]):
                reasons.append(
                    f"{role} {_tname(t)} has shape {list(t.shape)}; only the 3 innermost dimensions may exceed 1"
                )
    return reasons


def check_op(graph: TFLiteGraph, op: Op, table: EdgeTpuOpTable) -> tuple[list[str], list[str]]:
    """(reasons, notes) for one op on its own: why it cannot map (none: it can), and what to know when it does."""
    if op.is_custom:
        return [f"custom op {op.name!r}; edgetpu_compiler maps only built-in ops"], []
    rule = table.get(op.name)
    if rule is None:
        return [f"{op.name} is not among the Edge TPU's supported operations"], []
    reasons = _tensor_reasons(graph, op, rule)
    for name in rule.rules:
        why = _RULES[name](graph, op, rule)
        if why:
            reasons.append(f"{op.name} {why}")
    notes = []
    if rule.min_runtime > 10:
        notes.append(f"needs Edge TPU runtime {rule.min_runtime} or later")
    if rule.caveat:
        notes.append(rule.caveat)
    return reasons, notes


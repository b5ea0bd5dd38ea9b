"""Coral Edge TPU: will edgetpu_compiler map this model, and where would it cut it?

The analysis reads the emitted .tflite (``tflite_graph``) and checks every op,
in execution order, against the Edge TPU's documented supported operations
(``converters/edgetpu_ops.toml``: the op list and each op's limitations are
data) and the model-wide requirements: 8-bit quantized tensors, sizes fixed at
compile time, constant parameters, at most three dimensions larger than 1.
Where the compiler cuts the graph is :func:`partition`: one Edge TPU part,
chosen by data flow, with unsupported ops at the very start left on the CPU in
front of it (its docstring gives the rules and their sources). The report
names the op where the graph is cut and says why, and estimates the parameter
memory against the ~8 MiB on-chip cache. :func:`check_against_compiled`
compares the prediction, op by op, with a file edgetpu_compiler produced.

When ``edgetpu_compiler`` is on PATH, :func:`run_compiler` runs it (argument
list, timeout), keeps ``*_edgetpu.tflite`` and its log, and reads the
compiler's own figures from its output. The prediction never replaces the
compiler: it says what to expect on a machine without it (the compiler only
exists for x86-64 Linux).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Callable, Optional, Union

import numpy as np

from edgeresnet.errors import ConfigError, MissingDependencyError, TFLiteFileError
from edgeresnet._util.resources import read_toml, resource_dir
from edgeresnet.device.runtime import EDGETPU_CUSTOM_OP
from edgeresnet.device.tflite_graph import TFLiteGraph, Op, Tensor, read_graph

EDGETPU_OP_NAME = EDGETPU_CUSTOM_OP.decode()
EIGHT_BIT = ("int8", "uint8")
FLOAT_TYPES = ("float32", "float16", "float64", "bfloat16")
# int32 constants are legitimate in a fully quantized graph: biases and
# shape/axis/padding operands.
ALLOWED_CONST_TYPES = ("int8", "uint8", "int32")
COMPILER_NAME = "edgetpu_compiler"
COMPILER_HINT = (
    "edgetpu_compiler is not on PATH, so these figures are edgeresnet's prediction; "
    "compile on an x86-64 Debian/Ubuntu host (Coral's apt package edgetpu-compiler) "
    "for the compiler's own op mapping and memory figures"
)


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


# --------------------------------------------------------------------------- report


@dataclass
class OpVerdict:
    index: int
    op: str
    supported: bool  # the op itself can map (ignoring where the cut falls)
    placement: str  # "edgetpu" or "cpu" after the cut
    reasons: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    side: Optional[str] = None  # for CPU ops: "before" or "after" the Edge TPU part

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class CompilerResult:
    """What edgetpu_compiler did, in its own figures (None where its log is silent)."""

    ok: bool
    command: list[str]
    returncode: Optional[int]
    seconds: float
    output_model: Optional[str] = None
    log_path: Optional[str] = None
    error: Optional[str] = None
    version: Optional[str] = None
    ops_total: Optional[int] = None
    ops_on_edgetpu: Optional[int] = None
    ops_on_cpu: Optional[int] = None
    edgetpu_subgraphs: Optional[int] = None
    on_chip_bytes: Optional[int] = None
    on_chip_remaining_bytes: Optional[int] = None
    off_chip_bytes: Optional[int] = None
    operators: list[dict] = field(default_factory=list)
    stdout: str = field(default="", repr=False)

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("stdout")
        return d


@dataclass
class EdgeTpuReport:
    ops_total: int
    ops_mapped: int  # predicted: ops before the cut
    first_unsupported: Optional[dict]  # {"index", "op", "reason"} or None
    ops: list[OpVerdict]
    cut: str
    param_bytes: int  # constant data of the ops predicted to map
    cache_bytes: int
    issues: list[dict] = field(default_factory=list)  # model-wide: {"severity", "message"}
    notes: list[str] = field(default_factory=list)
    already_compiled: bool = False
    compiler: Optional[CompilerResult] = None
    table_source: str = ""

    @property
    def maps_fully(self) -> bool:
        """Every op lands in the Edge TPU custom op (nothing is left on the CPU)."""
        return all(v.placement == "edgetpu" for v in self.ops)

    @property
    def fits_cache(self) -> bool:
        return self.param_bytes <= self.cache_bytes

    @property
    def ok(self) -> bool:
        """Every op maps and nothing model-wide blocks the Edge TPU."""
        if self.compiler is not None and self.compiler.ok and self.compiler.ops_on_cpu is not None:
            return self.compiler.ops_on_cpu == 0 and not self._errors()
        return self.first_unsupported is None and not self._errors()

    def _errors(self) -> list[dict]:
        return [i for i in self.issues if i["severity"] == "error"]

    def summary(self) -> str:
        if self.already_compiled:
            return self.cut
        if self.compiler is not None and self.compiler.ok and self.compiler.ops_on_edgetpu is not None:
            head = (
                f"edgetpu_compiler: {self.compiler.ops_on_edgetpu}/{self.compiler.ops_total} ops on the Edge TPU"
            )
        else:
            head = f"{self.ops_mapped}/{self.ops_total} ops would map to the Edge TPU"
        before = [v for v in self.ops if v.side == "before"]
        cut = next((v for v in self.ops if v.side == "after" and not v.supported), None)
        if before and self.ops_mapped:
            head += f"; {len(before)} op(s) on the CPU in front of it (#{before[0].index} {before[0].op})"
        if cut is not None:
            head += f"; cut at op #{cut.index} {cut.op}: {cut.reasons[0]}"
        elif self.first_unsupported is not None and not self.ops_mapped:
            fu = self.first_unsupported
            head += f"; op #{fu['index']} {fu['op']}: {fu['reason']}"
        elif self._errors():
            head += "; " + self._errors()[0]["message"]
        return head

    def to_dict(self) -> dict:
        return {
            "ok": self.ok,
            "summary": self.summary(),
            "ops_total": self.ops_total,
            "ops_mapped": self.ops_mapped,
            "maps_fully": self.maps_fully,
            "first_unsupported": self.first_unsupported,
            "cut": self.cut,
            "param_bytes": self.param_bytes,
            "cache_bytes": self.cache_bytes,
            "fits_cache": self.fits_cache,
            "issues": list(self.issues),
            "notes": list(self.notes),
            "already_compiled": self.already_compiled,
            "ops": [v.to_dict() for v in self.ops],
            "compiler": self.compiler.to_dict() if self.compiler is not None else None,
            "table_source": self.table_source,
        }


# --------------------------------------------------------------------------- analysis


def _holds_no_data(t: Tensor) -> bool:
    """An empty placeholder (a dimension of size 0, e.g. an LSTM's unused intermediates)."""
    return any(d == 0 for d in t.shape)


def _tensor_reasons(graph: TFLiteGraph, op: Op, rule: OpRule) -> list[str]:
    """Model-wide tensor requirements, checked on the tensors one op touches."""
    reasons = []
    for role, indices in (("input", op.inputs), ("output", op.outputs)):
        for i in indices:
            t = graph.tensor(i)
            if t is None or _holds_no_data(t):
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


def _check_op(graph: TFLiteGraph, op: Op, table: EdgeTpuOpTable) -> tuple[list[str], list[str]]:
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


BEFORE, EDGETPU, AFTER = "cpu-before", "edgetpu", "cpu-after"


def partition(graph: TFLiteGraph, supported: list[bool]) -> list[tuple[str, Optional[int]]]:
    """Where edgetpu_compiler puts each op: ``(place, blocked_by)`` per op, in op order.

    ``place`` is ``cpu-before`` (on the CPU, in front of the Edge TPU part),
    ``edgetpu`` or ``cpu-after``; ``blocked_by`` is, for a supported op kept on
    the CPU, the index of the CPU op it reads. ``supported[i]`` says whether op
    ``i`` could map on its own (op table, per-op rules, tensor requirements).

    The rules, from Coral's documentation and from what the real compiler did to
    public models (the google-coral/test_data pairs in ``../shared/data/coral-edgetpu``,
    compared op by op by ``benchmarks/edgetpu_mapping.py`` and the tests; rules 2
    and 3 also from a comparison of 14 public pairs, not all of which
    are in that folder):

    1. One Edge TPU part. Without ``-a`` the compiler does not partition a model
       more than once ("TensorFlow models on the Edge TPU",
       coral.ai/docs/edgetpu/models-intro, "Compiling"); every compiled file
       holds exactly one ``edgetpu-custom-op``, and this function predicts that
       single region.
    2. Data flow, not op order. A supported op maps when every input it reads
       is a graph input, a constant, or the output of an op that maps or of a
       ``cpu-before`` op. An op listed after the first CPU op still maps when
       nothing it reads went through the CPU after the Edge TPU part (e.g.
       heads fed from before an ARG_MAX).
    3. Unsupported ops at the start do not stop the compiler. An op that cannot
       map and reads only graph inputs, constants or other ``cpu-before`` ops
       (CAST or QUANTIZE of a float input) runs on the CPU in front of the
       custom op, which takes its output; everything after it can still map.
    4. No way back in. An op that reads the output of a ``cpu-after`` op stays
       on the CPU even when it is supported: mapping it would feed the CPU's
       result back into the Edge TPU, a second custom op. An unsupported op that
       reads the Edge TPU part is ``cpu-after``, and so is everything fed from it.

    By construction no Edge TPU op depends on a ``cpu-after`` op, so the mapped
    ops contract into one custom op between the two CPU sides.
    """
    producer = {t: op.index for op in graph.ops for t in op.outputs if t >= 0}
    places: list[tuple[str, Optional[int]]] = []
    for op in graph.ops:
        sources = [producer[t] for t in op.inputs if t >= 0 and t in producer]
        # An op listed before its producer (not in execution order) is treated as after the cut.
        kinds = [places[j][0] if j < len(places) else AFTER for j in sources]
        after = [j for j, k in zip(sources, kinds) if k == AFTER]
        if supported[op.index] and not after:
            places.append((EDGETPU, None))
        elif after or EDGETPU in kinds:
            places.append((AFTER, after[0] if supported[op.index] and after else None))
        else:
            places.append((BEFORE, None))
    return places


def _model_issues(graph: TFLiteGraph, places: list[tuple[str, Optional[int]]]) -> list[dict]:
    """Model-wide findings. Float or wide tensors are errors only when nothing maps;
    when the CPU converts them before or after the Edge TPU part they are warnings."""
    issues = []
    maps_any = any(p == EDGETPU for p, _ in places)
    producer = {t: op.index for op in graph.ops for t in op.outputs if t >= 0}

    def add(sev, msg):
        issues.append({"severity": sev, "message": msg})

    for t in graph.input_tensors:
        if t.dtype not in EIGHT_BIT:
            if maps_any:
                add("warning", f"input {t.name or t.index} is {t.dtype}: converted on the CPU before the Edge TPU part")
            else:
                add("error", f"input {t.name or t.index} is {t.dtype}; the Edge TPU needs uint8 (default) or int8 inputs")
    wide_outputs = [t for t in graph.output_tensors if t.dtype not in EIGHT_BIT]
    on_cpu = [t for t in wide_outputs if maps_any and producer.get(t.index) is not None]
    for t in wide_outputs:
        if t not in on_cpu:
            add("error", f"output {t.name or t.index} is {t.dtype}; the Edge TPU needs uint8 (default) or int8 outputs")
    if on_cpu:
        names = ", ".join(f"{t.name or t.index} ({t.dtype})" for t in on_cpu)
        ops = ", ".join(sorted({f"#{producer[t.index]} {graph.ops[producer[t.index]].name}" for t in on_cpu}))
        add("warning", f"output(s) {names} are computed on the CPU after the Edge TPU part (by {ops})")
    n_float = sum(1 for t in graph.tensors if t.dtype in FLOAT_TYPES and not _holds_no_data(t))
    if n_float:
        if maps_any:
            add("warning", f"{n_float} float tensor(s), all on the CPU side of the Edge TPU part")
        else:
            add("error", f"{n_float} float tensor(s): the model is not fully 8-bit quantized")
    batch_dynamic = [t for t in graph.input_tensors if 0 in t.dynamic_dims]
    if batch_dynamic:
        add(
            "warning",
            "the batch dimension is dynamic (-1 in shape_signature); the Edge TPU needs static sizes "
            "and batch 1, and some edgetpu_compiler versions refuse such graphs ('dynamic-sized tensors'): "
            "convert with a fixed batch of 1",
        )
    big_batch = [t for t in graph.input_tensors if t.shape and t.shape[0] > 1]
    if big_batch:
        add("warning", f"input batch is {big_batch[0].shape[0]}; the Edge TPU runs batch 1")
    if graph.subgraph_count > 1:
        add("warning", f"the model has {graph.subgraph_count} subgraphs; only the main one was analysed")
    return issues


def _analyze_compiled(graph: TFLiteGraph, table: EdgeTpuOpTable) -> EdgeTpuReport:
    verdicts = []
    for op in graph.ops:
        on_tpu = op.name == EDGETPU_OP_NAME
        verdicts.append(OpVerdict(op.index, op.name, on_tpu, "edgetpu" if on_tpu else "cpu",
                                  [] if on_tpu else ["left on the CPU by edgetpu_compiler"],
                                  side=None if on_tpu else "after"))
    n_tpu = sum(v.supported for v in verdicts)
    cpu_ops = [v.op for v in verdicts if not v.supported]
    cut = (
        f"already compiled by edgetpu_compiler: {n_tpu} {EDGETPU_OP_NAME} op(s) run on the Edge TPU"
        + (f", {len(cpu_ops)} op(s) on the CPU ({', '.join(sorted(set(cpu_ops)))})" if cpu_ops else "")
    )
    first = next((v for v in verdicts if not v.supported), None)
    payload = sum(op.custom_options_bytes for op in graph.ops if op.name == EDGETPU_OP_NAME)
    return EdgeTpuReport(
        ops_total=len(graph.ops),
        ops_mapped=n_tpu,
        first_unsupported=(
            {"index": first.index, "op": first.op, "reason": first.reasons[0]} if first is not None else None
        ),
        ops=verdicts,
        cut=cut,
        # The compiler moves the mapped ops' parameters into the custom op's payload
        # (with the Edge TPU instructions); the CPU ops keep theirs in buffers.
        param_bytes=payload + graph.constant_bytes(),
        cache_bytes=table.cache_bytes,
        notes=[
            "this file is the compiler's output; its ops cannot be re-analysed. Run it with the Edge TPU "
            "delegate (libedgetpu / pycoral), or inspect the model from before edgetpu_compiler",
            f"parameters: the {EDGETPU_OP_NAME} payload ({payload:,} bytes: compiled instructions and the mapped "
            f"ops' parameters) plus {graph.constant_bytes():,} bytes of CPU-op constants",
        ],
        already_compiled=True,
        table_source=table.source,
    )


def _describe_cut(graph: TFLiteGraph, verdicts: list[OpVerdict], places) -> str:
    n = len(verdicts)
    before = [v for v, (p, _) in zip(verdicts, places) if p == BEFORE]
    after = [v for v, (p, _) in zip(verdicts, places) if p == AFTER]
    mapped = n - len(before) - len(after)
    if mapped == n:
        return f"all {n} ops map to the Edge TPU (one {EDGETPU_OP_NAME})"
    if mapped == 0:
        v = verdicts[0]
        why = (v.reasons or v.notes or ["its input is not ready"])[0]
        return f"op #0 {v.op} cannot map ({why}), and nothing maps: all {n} ops run on the CPU"
    parts = []
    if before:
        names = ", ".join(f"#{v.index} {v.op}" for v in before[:4]) + (" ..." if len(before) > 4 else "")
        parts.append(f"{len(before)} op(s) stay on the CPU in front of the Edge TPU part ({names}: {before[0].reasons[0]})")
    parts.append(f"{mapped} ops run on the Edge TPU (one {EDGETPU_OP_NAME})")
    if after:
        first = next((v for v in after if not v.supported), after[0])
        why = (first.reasons or first.notes or ["it reads a tensor no earlier op produces"])[0]
        parts.append(
            f"edgetpu_compiler would cut the graph at op #{first.index} {first.op} ({why}): "
            + (f"it and {len(after) - 1} more op(s) after the Edge TPU part run on the CPU" if len(after) > 1
               else "it runs on the CPU")
        )
    return "; ".join(parts)


def analyze_edgetpu(graph: TFLiteGraph, table: Optional[EdgeTpuOpTable] = None) -> EdgeTpuReport:
    """Predict how edgetpu_compiler maps ``graph`` (no compiler needed); see :func:`partition`."""
    table = table or load_op_table()
    if graph.edgetpu_compiled:
        return _analyze_compiled(graph, table)
    checked = [_check_op(graph, op, table) for op in graph.ops]
    places = partition(graph, [not reasons for reasons, _ in checked])
    verdicts: list[OpVerdict] = []
    for op, (reasons, notes), (place, blocked_by) in zip(graph.ops, checked, places):
        if blocked_by is not None:
            notes = notes + [
                f"supported, but after the cut: it reads op #{blocked_by} {graph.ops[blocked_by].name}, "
                "which runs on the CPU"
            ]
        elif place == BEFORE:
            notes = notes + ["runs on the CPU in front of the Edge TPU part"]
        verdicts.append(OpVerdict(op.index, op.name, not reasons, "edgetpu" if place == EDGETPU else "cpu",
                                  reasons, notes, {BEFORE: "before", AFTER: "after"}.get(place)))
    first = next((v for v in verdicts if v.placement == "cpu"), None)
    seen = set()
    param_bytes = 0
    for v in verdicts:
        if v.placement != "edgetpu":
            continue
        for i in graph.ops[v.index].inputs:
            t = graph.tensor(i)
            if t is not None and t.is_constant and i not in seen:
                seen.add(i)
                param_bytes += t.const_bytes
    notes = []
    if param_bytes > table.cache_bytes:
        notes.append(
            f"parameters of the mapped ops ({param_bytes / 2**20:.2f} MiB) exceed the "
            f"{table.cache_bytes / 2**20:.0f} MiB on-chip cache: the rest streams from off-chip memory (slower)"
        )
    return EdgeTpuReport(
        ops_total=len(verdicts),
        ops_mapped=sum(v.placement == "edgetpu" for v in verdicts),
        first_unsupported=(
            {"index": first.index, "op": first.op,
             "reason": (first.reasons or first.notes or ["reads a tensor no earlier op produces"])[0]}
            if first is not None else None
        ),
        ops=verdicts,
        cut=_describe_cut(graph, verdicts, places),
        param_bytes=param_bytes,
        cache_bytes=table.cache_bytes,
        issues=_model_issues(graph, places),
        notes=notes,
        table_source=table.source,
    )


# --------------------------------------------------------------------------- ground truth


@dataclass
class MappingCheck:
    """The prediction for one model compared, op by op, with what edgetpu_compiler did to it.

    The compiler keeps the ops it leaves on the CPU as ordinary ops with their
    original output tensor names, so each op of the input model is matched to
    its fate by output tensor name.
    """

    ops_total: int
    predicted_cpu: list[int]  # indices of the input model's ops
    compiler_cpu: list[int]
    predicted_maps_fully: bool
    compiler_maps_fully: bool

    @property
    def wrong(self) -> list[int]:
        return sorted(set(self.predicted_cpu) ^ set(self.compiler_cpu))

    @property
    def correct(self) -> int:
        return self.ops_total - len(self.wrong)

    @property
    def exact(self) -> bool:
        return not self.wrong and self.predicted_maps_fully == self.compiler_maps_fully


def compiler_cpu_ops(source: TFLiteGraph, compiled: TFLiteGraph) -> list[int]:
    """Indices of ``source``'s ops that edgetpu_compiler left on the CPU in ``compiled``."""
    if not compiled.edgetpu_compiled:
        raise TFLiteFileError("the second model holds no edgetpu-custom-op: pass the compiler's *_edgetpu.tflite")
    kept: dict[str, str] = {}
    for op in compiled.ops:
        if op.name != EDGETPU_OP_NAME:
            for i in op.outputs:
                kept[compiled.tensors[i].name] = op.name
    cpu = []
    for op in source.ops:
        names = [source.tensors[i].name for i in op.outputs if i >= 0]
        if any(kept.get(n) == op.name for n in names):
            cpu.append(op.index)
    return cpu


def check_against_compiled(source: TFLiteGraph, compiled: TFLiteGraph,
                           table: Optional[EdgeTpuOpTable] = None) -> MappingCheck:
    """Predict ``source``'s mapping and compare it with the compiler's output ``compiled``."""
    report = analyze_edgetpu(source, table)
    actual = compiler_cpu_ops(source, compiled)
    predicted = [v.index for v in report.ops if v.placement == "cpu"]
    return MappingCheck(
        ops_total=len(source.ops),
        predicted_cpu=predicted,
        compiler_cpu=actual,
        predicted_maps_fully=report.maps_fully,
        compiler_maps_fully=not actual,
    )


# --------------------------------------------------------------------------- compiler


def find_compiler() -> Optional[str]:
    """Path of edgetpu_compiler on PATH, or None."""
    return shutil.which(COMPILER_NAME)


_SIZE_UNITS = {"B": 1, "KiB": 1024, "MiB": 1024**2, "GiB": 1024**3}


def _size(text: str) -> Optional[int]:
    m = re.match(r"\s*([\d.]+)\s*(B|KiB|MiB|GiB)\b", text)
    if not m:
        return None
    return int(round(float(m.group(1)) * _SIZE_UNITS[m.group(2)]))


_LINE_FIELDS = {
    "Edge TPU Compiler version": ("version", str),
    "Total number of operations": ("ops_total", int),
    "Number of operations that will run on Edge TPU": ("ops_on_edgetpu", int),
    "Number of operations that will run on CPU": ("ops_on_cpu", int),
    "Number of Edge TPU subgraphs": ("edgetpu_subgraphs", int),
    "On-chip memory used for caching model parameters": ("on_chip_bytes", _size),
    "On-chip memory remaining for caching model parameters": ("on_chip_remaining_bytes", _size),
    "Off-chip memory used for streaming uncached model parameters": ("off_chip_bytes", _size),
}
_OPERATOR_ROW = re.compile(r"^([A-Z][A-Z0-9_]*|[A-Za-z][\w-]*-op)\s+(\d+)\s+(\S.*?)\s*$")


def parse_compiler_log(text: str) -> dict:
    """The figures in edgetpu_compiler's console output and/or its ``*_edgetpu.log``.

    Returns a dict with the keys of :class:`CompilerResult`'s figure fields
    (missing figures are absent) and ``operators``: [{op, count, status}].
    When every op maps, the compiler prints no per-device op counts; they are
    then derived from the operator table ("Mapped to Edge TPU" rows).
    """
    out: dict = {}
    operators = []
    in_table = False
    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            continue
        key, sep, value = line.partition(":")
        if sep and key.strip() in _LINE_FIELDS:
            name, conv = _LINE_FIELDS[key.strip()]
            try:
                parsed = conv(value.strip())
            except ValueError:
                parsed = None
            if parsed is not None and name not in out:
                out[name] = parsed
            continue
        if line.startswith("Edge TPU Compiler version"):
            out.setdefault("version", line.rsplit(" ", 1)[-1])
            continue
        if re.match(r"^Operator\s+Count\s+Status$", line):
            in_table = True
            continue
        if in_table:
            m = _OPERATOR_ROW.match(line)
            if m:
                operators.append({"op": m.group(1), "count": int(m.group(2)), "status": m.group(3)})
            else:
                in_table = False
    if operators:
        # The console table (-s) and the .log file may both be present: keep one copy.
        unique, seen = [], set()
        for row in operators:
            key = (row["op"], row["count"], row["status"])
            if key not in seen:
                seen.add(key)
                unique.append(row)
        operators = unique
        out["operators"] = operators
        mapped = sum(r["count"] for r in operators if r["status"].startswith("Mapped to Edge TPU"))
        total = sum(r["count"] for r in operators)
        out.setdefault("ops_on_edgetpu", mapped)
        out.setdefault("ops_total", total)
        out.setdefault("ops_on_cpu", out["ops_total"] - out["ops_on_edgetpu"])
    elif "ops_total" in out and "ops_on_edgetpu" not in out and "Compilation succeeded" in text:
        pass  # no table and no counts: the figures stay unknown rather than guessed
    return out


def run_compiler(
    tflite_path: Union[str, Path],
    out_dir: Union[str, Path],
    timeout: float = 300,
    compiler: Optional[str] = None,
) -> CompilerResult:
    """Run edgetpu_compiler on a model, keeping ``*_edgetpu.tflite`` and its log in ``out_dir``.

    Raises MissingDependencyError when the compiler is not found; a failed or
    timed-out compilation is returned as ``CompilerResult(ok=False, error=...)``.
    """
    exe = compiler or find_compiler()
    if exe is None:
        raise MissingDependencyError(COMPILER_HINT)
    src = Path(tflite_path)
    if not src.is_file():
        raise TFLiteFileError(f"{src}: no such file; pass the .tflite model to compile")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cmd = [str(exe), "-s", "-o", str(out), str(src)]
    expected_model = out / f"{src.stem}_edgetpu.tflite"
    expected_log = out / f"{src.stem}_edgetpu.log"
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as exc:
        text = (exc.stdout or "") if isinstance(exc.stdout, str) else (exc.stdout or b"").decode("utf-8", "replace")
        return CompilerResult(
            ok=False, command=cmd, returncode=None, seconds=time.perf_counter() - start,
            error=f"edgetpu_compiler did not finish within {timeout:g} s", stdout=text,
        )
    except OSError as exc:
        return CompilerResult(
            ok=False, command=cmd, returncode=None, seconds=time.perf_counter() - start,
            error=f"cannot run {exe}: {exc.strerror or exc}",
        )
    seconds = time.perf_counter() - start
    stdout = (proc.stdout or "") + (("\n" + proc.stderr) if proc.stderr else "")
    log_text = ""
    if expected_log.is_file():
        log_text = expected_log.read_text("utf-8", "replace")
    elif stdout.strip():
        expected_log.write_text(stdout, "utf-8")  # keep a log even if the compiler wrote none
    figures = parse_compiler_log(stdout + "\n" + log_text)
    result = CompilerResult(
        ok=False, command=cmd, returncode=proc.returncode, seconds=seconds,
        log_path=str(expected_log) if expected_log.is_file() else None, stdout=stdout,
        **{k: v for k, v in figures.items()},
    )
    if proc.returncode != 0:
        lines = [ln.strip() for ln in stdout.splitlines() if ln.strip()]
        bad = [ln for ln in lines if "error" in ln.lower() or "fail" in ln.lower()]
        result.error = (bad or lines or [f"exit status {proc.returncode}"])[-1][:300]
        return result
    if not expected_model.is_file():
        result.error = f"edgetpu_compiler exited 0 but wrote no {expected_model.name}"
        return result
    if EDGETPU_CUSTOM_OP not in expected_model.read_bytes():
        result.error = f"{expected_model.name} holds no {EDGETPU_OP_NAME}: nothing was mapped to the Edge TPU"
        result.output_model = str(expected_model)
        return result
    result.output_model = str(expected_model)
    result.ok = True
    return result


def analyze_model(
    model: Union[str, Path, bytes],
    out_dir: Optional[Union[str, Path]] = None,
    use_compiler: bool = True,
    timeout: float = 300,
) -> EdgeTpuReport:
    """Analyse a .tflite for the Edge TPU and, when possible, compile it.

    With ``out_dir``, ``use_compiler`` and a compiler on PATH, edgetpu_compiler
    runs and its figures are attached (``report.compiler``). Without the
    compiler, one note says so; the input model stays the compiler-ready file.
    """
    graph = read_graph(model)
    report = analyze_edgetpu(graph)
    if report.already_compiled or not use_compiler:
        return report
    if find_compiler() is None:
        report.notes.append(COMPILER_HINT)
        return report
    if out_dir is None or isinstance(model, (bytes, bytearray)):
        report.notes.append("edgetpu_compiler is available; pass a model path and an output folder to run it")
        return report
    report.compiler = run_compiler(model, out_dir, timeout=timeout)
    if not report.compiler.ok:
        report.issues.append({"severity": "error", "message": f"edgetpu_compiler failed: {report.compiler.error}"})
    elif report.compiler.ops_on_edgetpu is not None and report.compiler.ops_on_edgetpu != report.ops_mapped:
        report.notes.append(
            f"the compiler mapped {report.compiler.ops_on_edgetpu} ops where edgeresnet predicted "
            f"{report.ops_mapped}; the compiler's figures are the ones that hold"
        )
    return report

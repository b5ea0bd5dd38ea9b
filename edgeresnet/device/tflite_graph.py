"""Read a TFLite model's graph straight from its flatbuffer, with no TensorFlow.

The analyses (Edge TPU mapping, GPU screen, ``edgeresnet inspect``) need the
ops in execution order with their tensors, each tensor's type, shape,
shape signature and quantization, and which tensors are constant buffers. An
interpreter only shows that for models it can load, and an Edge-TPU-compiled
model (``edgetpu-custom-op``) or a model with op versions too new for the
installed runtime does not load. So this module reads the file itself.

The reader is small and self-contained: it knows the flatbuffer wire format
(tables, vtables, vectors, strings) and the field numbers of the few TFLite
schema tables it needs (Model, OperatorCode, SubGraph, Tensor,
QuantizationParameters, Operator, Buffer, plus the options of the ops the
analyses look at). It needs no ``flatbuffers`` package and no schema module,
so it works where only ``tflite-runtime`` is installed; the tests check it
against the generated schema shipped with ``ai-edge-litert``.
"""

from __future__ import annotations

import struct
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Union

import numpy as np

from edgeresnet.errors import TFLiteFileError
from edgeresnet.device.runtime import EDGETPU_CUSTOM_OP, check_tflite_bytes

# BuiltinOperator enum of the TFLite schema, in code order (code = position).
_BUILTIN_NAMES = """
ADD AVERAGE_POOL_2D CONCATENATION CONV_2D DEPTHWISE_CONV_2D DEPTH_TO_SPACE DEQUANTIZE
EMBEDDING_LOOKUP FLOOR FULLY_CONNECTED HASHTABLE_LOOKUP L2_NORMALIZATION L2_POOL_2D
LOCAL_RESPONSE_NORMALIZATION LOGISTIC LSH_PROJECTION LSTM MAX_POOL_2D MUL RELU RELU_N1_TO_1
RELU6 RESHAPE RESIZE_BILINEAR RNN SOFTMAX SPACE_TO_DEPTH SVDF TANH CONCAT_EMBEDDINGS SKIP_GRAM
CALL CUSTOM EMBEDDING_LOOKUP_SPARSE PAD UNIDIRECTIONAL_SEQUENCE_RNN GATHER BATCH_TO_SPACE_ND
SPACE_TO_BATCH_ND TRANSPOSE MEAN SUB DIV SQUEEZE UNIDIRECTIONAL_SEQUENCE_LSTM STRIDED_SLICE
BIDIRECTIONAL_SEQUENCE_RNN EXP TOPK_V2 SPLIT LOG_SOFTMAX DELEGATE BIDIRECTIONAL_SEQUENCE_LSTM
CAST PRELU MAXIMUM ARG_MAX MINIMUM LESS NEG PADV2 GREATER GREATER_EQUAL LESS_EQUAL SELECT
SLICE SIN TRANSPOSE_CONV SPARSE_TO_DENSE TILE EXPAND_DIMS EQUAL NOT_EQUAL LOG SUM SQRT RSQRT
SHAPE POW ARG_MIN FAKE_QUANT REDUCE_PROD REDUCE_MAX PACK LOGICAL_OR ONE_HOT LOGICAL_AND
LOGICAL_NOT UNPACK REDUCE_MIN FLOOR_DIV REDUCE_ANY SQUARE ZEROS_LIKE FILL FLOOR_MOD RANGE
RESIZE_NEAREST_NEIGHBOR LEAKY_RELU SQUARED_DIFFERENCE MIRROR_PAD ABS SPLIT_V UNIQUE CEIL
REVERSE_V2 ADD_N GATHER_ND COS WHERE RANK ELU REVERSE_SEQUENCE MATRIX_DIAG QUANTIZE
MATRIX_SET_DIAG ROUND HARD_SWISH IF WHILE NON_MAX_SUPPRESSION_V4 NON_MAX_SUPPRESSION_V5
SCATTER_ND SELECT_V2 DENSIFY SEGMENT_SUM BATCH_MATMUL PLACEHOLDER_FOR_GREATER_OP_CODES CUMSUM
CALL_ONCE BROADCAST_TO RFFT2D CONV_3D IMAG REAL COMPLEX_ABS HASHTABLE HASHTABLE_FIND
HASHTABLE_IMPORT HASHTABLE_SIZE REDUCE_ALL CONV_3D_TRANSPOSE VAR_HANDLE READ_VARIABLE
ASSIGN_VARIABLE BROADCAST_ARGS RANDOM_STANDARD_NORMAL BUCKETIZE RANDOM_UNIFORM MULTINOMIAL GELU
DYNAMIC_UPDATE_SLICE RELU_0_TO_1 UNSORTED_SEGMENT_PROD UNSORTED_SEGMENT_MAX UNSORTED_SEGMENT_SUM
ATAN2 UNSORTED_SEGMENT_MIN SIGN BITCAST BITWISE_XOR RIGHT_SHIFT STABLEHLO_LOGISTIC STABLEHLO_ADD
STABLEHLO_DIVIDE STABLEHLO_MULTIPLY STABLEHLO_MAXIMUM STABLEHLO_RESHAPE STABLEHLO_CLAMP
STABLEHLO_CONCATENATE STABLEHLO_BROADCAST_IN_DIM STABLEHLO_CONVOLUTION STABLEHLO_SLICE
STABLEHLO_CUSTOM_CALL STABLEHLO_REDUCE STABLEHLO_ABS STABLEHLO_AND STABLEHLO_COSINE
STABLEHLO_EXPONENTIAL STABLEHLO_FLOOR STABLEHLO_LOG STABLEHLO_MINIMUM STABLEHLO_NEGATE
STABLEHLO_OR STABLEHLO_POWER STABLEHLO_REMAINDER STABLEHLO_RSQRT STABLEHLO_SELECT
STABLEHLO_SUBTRACT STABLEHLO_TANH STABLEHLO_SCATTER STABLEHLO_COMPARE STABLEHLO_CONVERT
STABLEHLO_DYNAMIC_SLICE STABLEHLO_DYNAMIC_UPDATE_SLICE STABLEHLO_PAD STABLEHLO_IOTA
STABLEHLO_DOT_GENERAL STABLEHLO_REDUCE_WINDOW STABLEHLO_SORT STABLEHLO_WHILE STABLEHLO_GATHER
STABLEHLO_TRANSPOSE DILATE STABLEHLO_RNG_BIT_GENERATOR REDUCE_WINDOW STABLEHLO_COMPOSITE
STABLEHLO_SHIFT_LEFT STABLEHLO_CBRT STABLEHLO_CASE
""".split()

CUSTOM_CODE = _BUILTIN_NAMES.index("CUSTOM")
FLEX_PREFIX = "Flex"  # custom code of a TensorFlow op run by the Flex delegate (SELECT_TF_OPS)

# TensorType enum -> (name, bytes per element or None when not fixed-size).
_TENSOR_TYPES = {
    0: ("float32", 4), 1: ("float16", 2), 2: ("int32", 4), 3: ("uint8", 1), 4: ("int64", 8),
    5: ("string", None), 6: ("bool", 1), 7: ("int16", 2), 8: ("complex64", 8), 9: ("int8", 1),
    10: ("float64", 8), 11: ("complex128", 16), 12: ("uint64", 8), 13: ("resource", None),
    14: ("variant", None), 15: ("uint32", 4), 16: ("uint16", 2), 17: ("int4", None),
    18: ("bfloat16", 2), 19: ("int2", None), 20: ("uint4", None), 21: ("float8_e4m3fn", 1),
    22: ("float8_e5m2", 1),
}

ACTIVATIONS = {0: "NONE", 1: "RELU", 2: "RELU_N1_TO_1", 3: "RELU6", 4: "TANH", 5: "SIGN_BIT"}

# Options of the ops the analyses inspect: (field, slot, struct format, default).
_I, _B, _F = "<i", "<B", "<f"
_POOL = (("padding", 0, _B, 0), ("stride_w", 1, _I, 0), ("stride_h", 2, _I, 0),
         ("filter_width", 3, _I, 0), ("filter_height", 4, _I, 0), ("fused_activation", 5, _B, 0))
_ACT0 = (("fused_activation", 0, _B, 0),)
_OPTION_FIELDS: dict[str, tuple] = {
    "CONV_2D": (("padding", 0, _B, 0), ("stride_w", 1, _I, 0), ("stride_h", 2, _I, 0),
                ("fused_activation", 3, _B, 0), ("dilation_w", 4, _I, 1), ("dilation_h", 5, _I, 1)),
    "DEPTHWISE_CONV_2D": (("padding", 0, _B, 0), ("stride_w", 1, _I, 0), ("stride_h", 2, _I, 0),
                          ("depth_multiplier", 3, _I, 0), ("fused_activation", 4, _B, 0),
                          ("dilation_w", 5, _I, 1), ("dilation_h", 6, _I, 1)),
    "AVERAGE_POOL_2D": _POOL,
    "MAX_POOL_2D": _POOL,
    "L2_POOL_2D": _POOL,
    "FULLY_CONNECTED": (("fused_activation", 0, _B, 0), ("weights_format", 1, _B, 0),
                        ("keep_num_dims", 2, _B, 0)),
    "CONCATENATION": (("axis", 0, _I, 0), ("fused_activation", 1, _B, 0)),
    "SOFTMAX": (("beta", 0, _F, 0.0),),
    "STRIDED_SLICE": (("begin_mask", 0, _I, 0), ("end_mask", 1, _I, 0), ("ellipsis_mask", 2, _I, 0),
                      ("new_axis_mask", 3, _I, 0), ("shrink_axis_mask", 4, _I, 0)),
    "ADD": _ACT0,
    "SUB": _ACT0,
    "MUL": _ACT0,
    "PACK": (("values_count", 0, _I, 0), ("axis", 1, _I, 0)),
    "MEAN": (("keep_dims", 0, _B, 0),),
    "SUM": (("keep_dims", 0, _B, 0),),
    "REDUCE_MAX": (("keep_dims", 0, _B, 0),),
    "REDUCE_MIN": (("keep_dims", 0, _B, 0),),
    "SPLIT": (("num_splits", 0, _I, 0),),
    "TRANSPOSE_CONV": (("padding", 0, _B, 0), ("stride_w", 1, _I, 0), ("stride_h", 2, _I, 0),
                       ("fused_activation", 3, _B, 0)),
}


WEIGHT_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")
"""Ops with a filter (input 1): the weights that quantization and pruning act on."""


def builtin_name(code: int) -> str:
    """Name of a BuiltinOperator code (``BUILTIN_<n>`` for codes newer than this table)."""
    if 0 <= code < len(_BUILTIN_NAMES):
        return _BUILTIN_NAMES[code]
    return f"BUILTIN_{code}"


class _Reader:
    """Just enough of the flatbuffer wire format to walk a TFLite model."""

    def __init__(self, data: bytes, label: str):
        self.buf = memoryview(data)
        self.n = len(data)
        self.label = label

    def _bad(self, what: str):
        hint = " (it holds edgetpu-custom-op: an Edge-TPU-compiled model)" if EDGETPU_CUSTOM_OP in self.buf.obj else ""
        return TFLiteFileError(
            f"{self.label} is not a readable TFLite flatbuffer ({what}){hint}; the file may be truncated or corrupt"
        )

    def u8(self, pos): return self._unpack("<B", pos)
    def u16(self, pos): return self._unpack("<H", pos)
    def i32(self, pos): return self._unpack("<i", pos)
    def u32(self, pos): return self._unpack("<I", pos)

    def _unpack(self, fmt, pos):
        size = struct.calcsize(fmt)
        if pos < 0 or pos + size > self.n:
            raise self._bad(f"offset {pos} out of range")
        return struct.unpack_from(fmt, self.buf, pos)[0]

    def root(self) -> int:
        return self.u32(0)

    def field_pos(self, table: int, slot: int) -> Optional[int]:
        vtable = table - self.i32(table)
        vt_size = self.u16(vtable)
        entry = 4 + 2 * slot
        if entry >= vt_size:
            return None
        off = self.u16(vtable + entry)
        return table + off if off else None

    def scalar(self, table: int, slot: int, fmt: str, default):
        pos = self.field_pos(table, slot)
        return default if pos is None else self._unpack(fmt, pos)

    def indirect(self, pos: int) -> int:
        return pos + self.u32(pos)

    def table(self, table: int, slot: int) -> Optional[int]:
        pos = self.field_pos(table, slot)
        return None if pos is None else self.indirect(pos)

    def vector(self, table: int, slot: int) -> Optional[tuple[int, int]]:
        """(start of elements, length) of a vector field, or None."""
        pos = self.field_pos(table, slot)
        if pos is None:
            return None
        vec = self.indirect(pos)
        length = self.u32(vec)
        return vec + 4, length

    def tables(self, table: int, slot: int) -> list[int]:
        v = self.vector(table, slot)
        if v is None:
            return []
        start, length = v
        return [self.indirect(start + 4 * i) for i in range(length)]

    def scalars(self, table: int, slot: int, fmt: str) -> tuple:
        v = self.vector(table, slot)
        if v is None:
            return ()
        start, length = v
        size = struct.calcsize(fmt)
        if start + size * length > self.n:
            raise self._bad("vector runs past the end of the file")
        return struct.unpack_from("<" + fmt[-1] * length, self.buf, start) if length else ()

    def string(self, table: int, slot: int) -> Optional[str]:
        v = self.vector(table, slot)
        if v is None:
            return None
        start, length = v
        if start + length > self.n:
            raise self._bad("string runs past the end of the file")
        return bytes(self.buf[start : start + length]).decode("utf-8", "replace")

    def byte_span(self, table: int, slot: int) -> Optional[tuple[int, int]]:
        v = self.vector(table, slot)
        if v is None:
            return None
        start, length = v
        if start + length > self.n:
            raise self._bad("buffer runs past the end of the file")
        return start, length


@dataclass(frozen=True)
class Quantization:
    scale: tuple[float, ...]
    zero_point: tuple[int, ...]
    quantized_dimension: int = 0

    @property
    def per_channel(self) -> bool:
        return len(self.scale) > 1

    def to_dict(self) -> dict:
        def short(vals):
            vals = [float(v) if isinstance(v, float) else int(v) for v in vals]
            return vals if len(vals) <= 4 else vals[:4] + [f"... ({len(vals)} values)"]

        return {
            "scale": short(self.scale),
            "zero_point": short(self.zero_point),
            "per_channel": self.per_channel,
            "quantized_dimension": self.quantized_dimension,
        }


@dataclass(frozen=True)
class Tensor:
    index: int
    name: str
    dtype: str
    shape: tuple[int, ...]
    shape_signature: Optional[tuple[int, ...]]
    buffer: int
    const_bytes: int  # size of its constant data (0 for activations)
    quantization: Optional[Quantization]
    is_variable: bool = False

    @property
    def is_constant(self) -> bool:
        return self.const_bytes > 0

    @property
    def quantized(self) -> bool:
        return self.quantization is not None and len(self.quantization.scale) > 0

    @property
    def dynamic_dims(self) -> tuple[int, ...]:
        """Positions whose size is only known at run time (-1 in shape_signature)."""
        sig = self.shape_signature if self.shape_signature is not None else self.shape
        return tuple(i for i, d in enumerate(sig) if d < 0)

    @property
    def rank(self) -> int:
        return len(self.shape)

    def to_dict(self) -> dict:
        d = {
            "index": self.index,
            "name": self.name,
            "dtype": self.dtype,
            "shape": list(self.shape),
        }
        if self.shape_signature is not None and tuple(self.shape_signature) != tuple(self.shape):
            d["shape_signature"] = list(self.shape_signature)
        if self.quantized:
            d["quantization"] = self.quantization.to_dict()
        return d


@dataclass(frozen=True)
class Op:
    index: int
    name: str  # builtin name (CONV_2D) or the custom code of a custom op
    builtin_code: int
    custom_code: Optional[str]
    version: int
    inputs: tuple[int, ...]  # tensor indices; -1 marks an omitted optional input
    outputs: tuple[int, ...]
    options: dict = field(default_factory=dict, compare=False)
    custom_options_bytes: int = 0  # size of a custom op's payload (an edgetpu-custom-op's compiled code)

    @property
    def is_custom(self) -> bool:
        return self.builtin_code == CUSTOM_CODE

    def to_dict(self) -> dict:
        d = {"index": self.index, "op": self.name, "version": self.version,
             "inputs": list(self.inputs), "outputs": list(self.outputs)}
        if self.options:
            d["options"] = dict(self.options)
        return d


@dataclass(frozen=True)
class TFLiteGraph:
    """The main subgraph of a TFLite model, as stored in the file."""

    size_bytes: int
    schema_version: int
    description: str
    tensors: tuple[Tensor, ...]
    ops: tuple[Op, ...]
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]
    subgraph_count: int
    edgetpu_compiled: bool
    data: bytes = field(repr=False, compare=False, default=b"")
    custom_codes: tuple[str, ...] = ()  # every custom op code the model declares (all subgraphs)
    _buffer_spans: tuple = field(repr=False, compare=False, default=())

    @property
    def input_tensors(self) -> list[Tensor]:
        return [self.tensors[i] for i in self.inputs]

    @property
    def output_tensors(self) -> list[Tensor]:
        return [self.tensors[i] for i in self.outputs]

    @property
    def flex_ops(self) -> tuple[str, ...]:
        """TensorFlow ops the model runs through the Flex delegate (converted with SELECT_TF_OPS).

        Flex ops are stored as custom ops named ``Flex<TensorFlow op>``; read from
        the model's operator codes, so ops in every subgraph count.
        """
        return tuple(sorted({c[len(FLEX_PREFIX):] for c in self.custom_codes if c.startswith(FLEX_PREFIX)}))

    def tensor(self, index: int) -> Optional[Tensor]:
        return self.tensors[index] if 0 <= index < len(self.tensors) else None

    def op_histogram(self) -> dict[str, int]:
        """Op name -> count, most frequent first (ties by name)."""
        counts = Counter(op.name for op in self.ops)
        return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))

    def dtype_counts(self) -> dict[str, int]:
        counts = Counter(t.dtype for t in self.tensors)
        return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))

    def constant_bytes(self) -> int:
        return sum(t.const_bytes for t in self.tensors)

    def const_array(self, index: int) -> Optional[np.ndarray]:
        """The constant data of tensor ``index`` as a numpy array (None for activations)."""
        t = self.tensor(index)
        if t is None or not t.is_constant or t.buffer >= len(self._buffer_spans):
            return None
        span = self._buffer_spans[t.buffer]
        if span is None:
            return None
        start, length = span
        try:
            dtype = np.dtype(t.dtype)
        except TypeError:
            return None
        raw = np.frombuffer(self.data, dtype=dtype, count=length // dtype.itemsize, offset=start)
        if int(np.prod(t.shape)) == raw.size:
            return raw.reshape(t.shape)
        return raw

    def consumers(self, tensor_index: int) -> list[Op]:
        return [op for op in self.ops if tensor_index in op.inputs]

    def producer(self, tensor_index: int) -> Optional[Op]:
        for op in self.ops:
            if tensor_index in op.outputs:
                return op
        return None

    def filter_tensors(self) -> list[tuple[Op, Tensor]]:
        """(op, stored filter tensor) of every CONV_2D, DEPTHWISE_CONV_2D and FULLY_CONNECTED.

        The filter is input 1. When a DEQUANTIZE op produces it (float16 weights
        stored as constants and widened at load time), the stored constant that
        feeds the DEQUANTIZE is returned instead: that is what the file ships.
        """
        found = []
        for op in self.ops:
            if op.name not in WEIGHT_OPS or len(op.inputs) < 2 or op.inputs[1] < 0:
                continue
            t = self.tensors[op.inputs[1]]
            if not t.is_constant:
                src = self.producer(t.index)
                if src is not None and src.name == "DEQUANTIZE" and src.inputs:
                    t = self.tensors[src.inputs[0]]
            found.append((op, t))
        return found


def _quantization(r: _Reader, table: Optional[int]) -> Optional[Quantization]:
    if table is None:
        return None
    scale = r.scalars(table, 2, "f")
    if not scale:
        return None
    zero_point = r.scalars(table, 3, "q")
    return Quantization(
        scale=tuple(float(s) for s in scale),
        zero_point=tuple(int(z) for z in zero_point),
        quantized_dimension=r.scalar(table, 6, "<i", 0),
    )


def _options(r: _Reader, name: str, table: Optional[int]) -> dict:
    spec = _OPTION_FIELDS.get(name)
    if spec is None:
        return {}
    out = {}
    for fname, slot, fmt, default in spec:
        out[fname] = default if table is None else r.scalar(table, slot, fmt, default)
    if "fused_activation" in out:
        out["fused_activation"] = ACTIVATIONS.get(out["fused_activation"], str(out["fused_activation"]))
    if "padding" in out:
        out["padding"] = {0: "SAME", 1: "VALID"}.get(out["padding"], str(out["padding"]))
    return out


def _custom_options_bytes(r: _Reader, op_table: int) -> int:
    """Length of Operator.custom_options (slot 5), or of the payload stored outside the
    flatbuffer for large models (large_custom_options_size, slot 10)."""
    v = r.vector(op_table, 5)
    if v is not None and v[1]:
        return int(v[1])
    return int(r.scalar(op_table, 10, "<Q", 0))


def parse_tflite(data: bytes, label: str = "model") -> TFLiteGraph:
    """Parse TFLite bytes into a :class:`TFLiteGraph` (raises TFLiteFileError)."""
    data = bytes(data)
    check_tflite_bytes(data, label)
    r = _Reader(data, label)
    try:
        model = r.root()
        version = r.scalar(model, 0, "<I", 0)
        codes = _read_codes(r, model)
        spans = _read_spans(r, model, len(data))
        subgraphs = r.tables(model, 2)
        if not subgraphs:
            raise TFLiteFileError(f"{label} has no subgraph; it is not a usable TFLite model")
        sg = subgraphs[0]
        tensors = _read_tensors(r, sg, spans)
        ops = _read_ops(r, sg, codes, label)
        graph = TFLiteGraph(
            size_bytes=len(data),
            schema_version=int(version),
            description=r.string(model, 3) or "",
            tensors=tuple(tensors),
            ops=tuple(ops),
            inputs=tuple(int(x) for x in r.scalars(sg, 1, "i")),
            outputs=tuple(int(x) for x in r.scalars(sg, 2, "i")),
            subgraph_count=len(subgraphs),
            edgetpu_compiled=EDGETPU_CUSTOM_OP in data,
            data=data,
            custom_codes=tuple(c for code, c, _ in codes if code == CUSTOM_CODE and c),
            _buffer_spans=tuple(spans),
        )
    except TFLiteFileError:
        raise
    except (struct.error, IndexError, ValueError, OverflowError) as exc:
        hint = (
            " (it holds edgetpu-custom-op: an Edge-TPU-compiled model)" if EDGETPU_CUSTOM_OP in data else ""
        )
        raise TFLiteFileError(
            f"{label} is not a readable TFLite flatbuffer ({exc}){hint}; the file may be truncated or corrupt"
        ) from None
    for t in graph.inputs + graph.outputs:
        if not 0 <= t < len(graph.tensors):
            raise TFLiteFileError(f"{label}: graph input/output tensor {t} does not exist; the file is corrupt")
    return graph


def _read_codes(r: "_Reader", model) -> list[tuple[int, Optional[str], int]]:
    """(builtin code, custom code, version) of every operator code."""
    codes = []
    for oc in r.tables(model, 1):
        deprecated = r.scalar(oc, 0, "<b", 0)
        builtin = r.scalar(oc, 3, "<i", 0)
        code = max(int(deprecated), int(builtin))
        codes.append((code, r.string(oc, 1), r.scalar(oc, 2, "<i", 1)))
    return codes


def _read_spans(r: "_Reader", model, size: int) -> list:
    """(offset, length) of every buffer's bytes, inline or after the flatbuffer; None when empty."""
    spans = []
    for buf in r.tables(model, 4):
        span = r.byte_span(buf, 0)
        if span is None or span[1] == 0:
            offset = r.scalar(buf, 1, "<Q", 0)
            length = r.scalar(buf, 2, "<Q", 0)
            span = (int(offset), int(length)) if offset > 1 and length > 0 and offset + length <= size else None
        spans.append(span)
    return spans


def _read_tensors(r: "_Reader", sg, spans: list) -> list:
    tensors = []
    for i, t in enumerate(r.tables(sg, 0)):
        type_code = r.scalar(t, 1, "<b", 0)
        dtype, _ = _TENSOR_TYPES.get(type_code, (f"type{type_code}", None))
        buf_index = r.scalar(t, 2, "<I", 0)
        span = spans[buf_index] if 0 < buf_index < len(spans) else None
        sig = r.scalars(t, 7, "i")
        tensors.append(
            Tensor(
                index=i,
                name=r.string(t, 3) or "",
                dtype=dtype,
                shape=tuple(int(s) for s in r.scalars(t, 0, "i")),
                shape_signature=tuple(int(s) for s in sig) if r.vector(t, 7) is not None else None,
                buffer=buf_index,
                const_bytes=span[1] if span else 0,
                quantization=_quantization(r, r.table(t, 4)),
                is_variable=bool(r.scalar(t, 5, "<B", 0)),
            )
        )
    return tensors


def _read_ops(r: "_Reader", sg, codes: list, label: str) -> list:
    ops = []
    for j, o in enumerate(r.tables(sg, 3)):
        idx = r.scalar(o, 0, "<I", 0)
        if idx >= len(codes):
            raise TFLiteFileError(f"{label}: op {j} names operator code {idx}, which does not exist")
        code, custom, op_version = codes[idx]
        name = (custom or "CUSTOM") if code == CUSTOM_CODE else builtin_name(code)
        ops.append(
            Op(
                index=j,
                name=name,
                builtin_code=code,
                custom_code=custom if code == CUSTOM_CODE else None,
                version=int(op_version),
                inputs=tuple(int(x) for x in r.scalars(o, 1, "i")),
                outputs=tuple(int(x) for x in r.scalars(o, 2, "i")),
                options=_options(r, name, r.table(o, 4)),
                custom_options_bytes=_custom_options_bytes(r, o),
            )
        )
    return ops


def read_graph(model: Union[str, Path, bytes, bytearray], label: Optional[str] = None) -> TFLiteGraph:
    """Read a .tflite path (or bytes) into a :class:`TFLiteGraph`."""
    if isinstance(model, (bytes, bytearray)):
        return parse_tflite(bytes(model), label or "model")
    from edgeresnet.device.runtime import read_tflite_bytes

    return parse_tflite(read_tflite_bytes(model), label or str(model))

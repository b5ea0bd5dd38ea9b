"""How sparse the weights of an emitted .tflite model really are, and how small it packs.

Pruning happens in Keras, but what ships is the flatbuffer: BatchNorm folding,
quantization and the converter's constant handling all sit in between. This
module therefore reads the *emitted* model and counts zero weights there.

How it reads the file: the model is loaded in the project's interpreter layer
(``edgeresnet.runtime.TFLiteModel``) with the default delegates switched off
(``use_xnnpack=False``), so every op keeps its builtin name instead of being
replaced by a ``DELEGATE`` node. For each ``CONV_2D``, ``DEPTHWISE_CONV_2D`` and
``FULLY_CONNECTED`` op, its filter (input 1) is a constant tensor that
``interpreter.get_tensor`` returns after ``allocate_tensors``. When the filter is
produced by a ``DEQUANTIZE`` op (float16 weights), the constant feeding that op
is read instead. Biases are not counted: they are not pruned.

A weight is "zero" when it dequantizes to exactly 0.0: for integer tensors that
is a stored value equal to the zero point of its channel (0 for the symmetric
int8 weights the converter writes), for float tensors the value 0.0. Small
weights that round to 0 in int8 count as zeros too, so the int8 figure can be a
little higher than the Keras one.

Nothing here imports TensorFlow: it runs wherever an interpreter is installed.
"""

from __future__ import annotations

import zlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Union

import numpy as np

from .errors import TFLiteFileError

WEIGHT_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")
"""Ops whose filter (input 1) is counted."""

_FILTER_INPUT = 1
ZLIB_LEVEL = 9


@dataclass(frozen=True)
class OpWeights:
    """Zero count of one op's filter tensor."""

    op_index: int
    op: str
    tensor: str
    shape: tuple
    dtype: str
    weights: int
    zeros: int

    @property
    def fraction(self) -> float:
        return self.zeros / self.weights if self.weights else 0.0

    def to_dict(self) -> dict:
        out = asdict(self)
        out["shape"] = list(self.shape)
        out["fraction"] = round(self.fraction, 6)
        return out


def compressed_size(data: bytes, level: int = ZLIB_LEVEL) -> int:
    """Size in bytes of ``data`` after zlib (DEFLATE) compression, level 9 by default.

    This is what a gzip'd download or a zipped app asset costs, give or take the
    few bytes of gzip header: the figure that shows pruning's size gain, since
    the .tflite file itself stores zeros densely.
    """
    return len(zlib.compress(bytes(data), level))


def size_summary(data: bytes) -> dict:
    """``{"bytes", "zlib_bytes", "zlib_ratio"}`` for one model file's contents."""
    raw = len(data)
    packed = compressed_size(data)
    return {"bytes": raw, "zlib_bytes": packed, "zlib_ratio": round(packed / raw, 4) if raw else None}


def _as_bytes(model: Union[str, Path, bytes, bytearray]) -> bytes:
    if isinstance(model, (bytes, bytearray)):
        return bytes(model)
    from .runtime import read_tflite_bytes

    return read_tflite_bytes(model)


def _zero_mask(values: np.ndarray, detail: dict) -> np.ndarray:
    """Which stored values dequantize to exactly zero."""
    if not np.issubdtype(values.dtype, np.integer):
        return values == 0
    qp = detail.get("quantization_parameters") or {}
    zps = np.asarray(qp.get("zero_points", ()), dtype=np.int64)
    if zps.size == 0:
        zp = detail.get("quantization", (0.0, 0))[1]
        return values.astype(np.int64) == int(zp)
    if zps.size == 1:
        return values.astype(np.int64) == int(zps[0])
    axis = int(qp.get("quantized_dimension", 0))
    shape = [1] * values.ndim
    shape[axis] = zps.size
    return values.astype(np.int64) == zps.reshape(shape)


def tflite_weight_sparsity(model: Union[str, Path, bytes, bytearray]) -> dict:
    """Count zero filter weights of the conv / depthwise / fully-connected ops.

    Returns a JSON-ready dict: ``total_weights``, ``zero_weights``, ``fraction``,
    ``by_op`` (totals per op type) and ``ops`` (one entry per op, in execution
    order). Raises :class:`TFLiteFileError` for files that are not TFLite models
    or that the interpreter cannot load.
    """
    from .runtime import TFLiteModel

    data = _as_bytes(model)
    tfl = TFLiteModel(data, use_xnnpack=False)
    interp = tfl.interpreter
    details = {int(d["index"]): d for d in interp.get_tensor_details()}
    ops = interp._get_ops_details()
    producer = {}
    for op in ops:
        for t in op.get("outputs", ()):
            producer[int(t)] = op

    records = []
    for op in ops:
        name = op["op_name"]
        if name not in WEIGHT_OPS:
            continue
        inputs = [int(i) for i in op.get("inputs", ())]
        if len(inputs) <= _FILTER_INPUT or inputs[_FILTER_INPUT] < 0:
            continue
        idx = inputs[_FILTER_INPUT]
        src = producer.get(idx)
        if src is not None and src["op_name"] == "DEQUANTIZE":
            idx = int(src["inputs"][0])  # float16 (or int8) constant behind a DEQUANTIZE
        elif src is not None:
            continue  # weights computed at run time: nothing stored to count
        detail = details.get(idx)
        if detail is None:
            continue
        try:
            values = np.asarray(interp.get_tensor(idx))
        except ValueError as exc:  # not readable (e.g. no buffer)
            raise TFLiteFileError(
                f"cannot read the weights of {name} op {op['index']} ({detail['name']}): {exc}"
            ) from None
        zeros = int(np.count_nonzero(_zero_mask(values, detail)))
        records.append(
            OpWeights(
                op_index=int(op["index"]),
                op=name,
                tensor=str(detail["name"]),
                shape=tuple(int(s) for s in values.shape),
                dtype=str(values.dtype),
                weights=int(values.size),
                zeros=zeros,
            )
        )

    total = sum(r.weights for r in records)
    zeros = sum(r.zeros for r in records)
    by_op = {}
    for r in records:
        entry = by_op.setdefault(r.op, {"weights": 0, "zeros": 0})
        entry["weights"] += r.weights
        entry["zeros"] += r.zeros
    for entry in by_op.values():
        entry["fraction"] = round(entry["zeros"] / entry["weights"], 6) if entry["weights"] else 0.0
    return {
        "total_weights": total,
        "zero_weights": zeros,
        "fraction": round(zeros / total, 6) if total else 0.0,
        "by_op": by_op,
        "ops": [r.to_dict() for r in records],
    }

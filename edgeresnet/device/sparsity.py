"""How sparse the weights of an emitted .tflite model really are, and how small it packs.

Pruning happens in Keras, but what ships is the flatbuffer: BatchNorm folding,
quantization and the converter's constant handling all sit in between. This
module therefore reads the *emitted* model and counts zero weights there.

How it reads the file: ``edgeresnet.device.tflite_graph`` parses the flatbuffer and
``TFLiteGraph.filter_tensors()`` names the stored filter (input 1) of every
``CONV_2D``, ``DEPTHWISE_CONV_2D`` and ``FULLY_CONNECTED`` op, following a
``DEQUANTIZE`` back to its float16 constant. Biases are not counted: they are
not pruned.

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

from edgeresnet.device.tflite_graph import read_graph

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


def _zero_mask(values: np.ndarray, quant) -> np.ndarray:
    """Which stored values dequantize to exactly zero (``quant``: tflite_graph.Quantization or None)."""
    if not np.issubdtype(values.dtype, np.integer):
        return values == 0
    zps = np.asarray(quant.zero_point if quant is not None else (0,), dtype=np.int64)
    if zps.size <= 1:
        return values.astype(np.int64) == (int(zps[0]) if zps.size else 0)
    shape = [1] * values.ndim
    shape[quant.quantized_dimension] = zps.size
    return values.astype(np.int64) == zps.reshape(shape)


def tflite_weight_sparsity(model: Union[str, Path, bytes, bytearray]) -> dict:
    """Count zero filter weights of the conv / depthwise / fully-connected ops.

    Returns a JSON-ready dict: ``total_weights``, ``zero_weights``, ``fraction``,
    ``by_op`` (totals per op type) and ``ops`` (one entry per op, in execution
    order). Raises :class:`TFLiteFileError` for files that are not TFLite models.
    """
    graph = read_graph(model)
    records = []
    for op, tensor in graph.filter_tensors():
        values = graph.const_array(tensor.index)
        if values is None:
            continue  # weights computed at run time: nothing stored to count
        zeros = int(np.count_nonzero(_zero_mask(values, tensor.quantization)))
        records.append(
            OpWeights(
                op_index=op.index,
                op=op.name,
                tensor=tensor.name,
                shape=tuple(int(d) for d in values.shape),
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

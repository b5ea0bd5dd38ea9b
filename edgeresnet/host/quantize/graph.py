"""The calibrated float model as the int8 methods see it, and a float probe that runs it.

:class:`Graph` is a mutable view of the converter's calibrate-only flatbuffer
(constants, activation ranges, weight layers, who reads what);
:func:`run_probe` runs it in the interpreter with chosen tensors made outputs.
The statistics pass (``stats.py``) and every method module work on it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np

from edgeresnet._util import tf as _tf

# Builtin op codes (tflite schema BuiltinOperator), named here so this module
# does not need the schema at import time.
AVERAGE_POOL_2D = 1
CONV_2D = 3
FULLY_CONNECTED = 9
LOGISTIC = 14
MAX_POOL_2D = 17
RESHAPE = 22
SOFTMAX = 25
TANH = 28
PAD = 34
TRANSPOSE = 39
SQUEEZE = 43
STRIDED_SLICE = 45
EXPAND_DIMS = 70
SLICE = 65
PADV2 = 60
LOG_SOFTMAX = 50
MEAN = 40
# Ops whose output range is fixed (the quantizer ignores a calibrated min/max for them).
FIXED_RANGE_OPS = {SOFTMAX, LOGISTIC, TANH, LOG_SOFTMAX}
ACT_NONE, ACT_RELU = 0, 1  # fused activations
WEIGHT_OPS = {CONV_2D, FULLY_CONNECTED}

TFLITE_FLOAT32 = 0
TFLITE_INT32 = 2
TFLITE_INT8 = 9


def flatbuffer_utils():
    """TensorFlow's ``flatbuffer_utils`` (TensorFlow loaded first, as everywhere in edgeresnet)."""
    _tf.tf()
    from tensorflow.lite.tools import flatbuffer_utils

    return flatbuffer_utils


def op_code(model, op) -> int:
    """The builtin op code of ``op`` in the flatbuffer object ``model``."""
    c = model.operatorCodes[op.opcodeIndex]
    return max(int(c.builtinCode), int(c.deprecatedBuiltinCode))


# ---------------------------------------------------------------------- the flatbuffer


@dataclass
class Layer:
    """A convolution or fully-connected layer with float constant weights, by tensor index."""

    kind: int
    x: int  # input activation tensor
    w: int  # weight tensor
    b: Optional[int]  # bias tensor
    y: int  # output tensor
    options: object
    per_channel: bool


class Graph:
    """The calibrated float model as a mutable flatbuffer object."""

    def __init__(self, data: bytes):
        self.fu = flatbuffer_utils()
        self.model = self.fu.convert_bytearray_to_object(bytearray(data))
        if len(self.model.subgraphs) != 1:
            raise ValueError(f"the model has {len(self.model.subgraphs)} subgraphs; only single-graph models work")
        self.sg = self.model.subgraphs[0]
        self.index_ops()
        self.inputs = set(int(i) for i in self.sg.inputs)
        self.outputs = set(int(i) for i in self.sg.outputs)

    def index_ops(self) -> None:
        """(Re)build :attr:`ops` ((code, op) in order) and :attr:`consumers` (who reads each tensor)."""
        self.ops = [(op_code(self.model, op), op) for op in self.sg.operators]
        self.consumers: dict[int, list] = {}
        for code, op in self.ops:
            for i in op.inputs:
                if i >= 0:
                    self.consumers.setdefault(int(i), []).append((code, op))

    def drop_unused_tensors(self) -> None:
        """Remove the tensors no op, graph input or output reads or writes, renumbering every reference to the
        rest (ops, graph inputs and outputs, signatures). Their buffers stay, unreferenced."""
        sg = self.sg
        used = {int(i) for i in list(sg.inputs) + list(sg.outputs)}
        for op in sg.operators:
            used |= {int(i) for i in list(op.inputs) + list(op.outputs) + list(op.intermediates or []) if i >= 0}
        if len(used) == len(sg.tensors):
            return
        keep = sorted(used)
        new = {old: k for k, old in enumerate(keep)}
        renumber = lambda ids: np.array([new[int(i)] if i >= 0 else -1 for i in ids], np.int32)  # noqa: E731
        sg.tensors = [sg.tensors[i] for i in keep]
        for op in sg.operators:
            op.inputs, op.outputs = renumber(op.inputs), renumber(op.outputs)
            if op.intermediates is not None and len(op.intermediates):
                op.intermediates = renumber(op.intermediates)
        sg.inputs, sg.outputs = renumber(sg.inputs), renumber(sg.outputs)
        for sig in self.model.signatureDefs or []:
            for t in list(sig.inputs or []) + list(sig.outputs or []):
                if t.tensorIndex in new:
                    t.tensorIndex = new[t.tensorIndex]
        self.inputs, self.outputs = set(int(i) for i in sg.inputs), set(int(i) for i in sg.outputs)
        self.index_ops()

    def to_bytes(self) -> bytes:
        return bytes(self.fu.convert_object_to_bytearray(self.model))

    def name_like_saved_model(self) -> None:
        """Give a single-input, single-output model converted from a traced function the SavedModel path's names.

        The converter's SavedModel path (its default for a traced function)
        names the input ``serving_default_<arg>:0``, the output
        ``StatefulPartitionedCall:0``, and adds the ``serving_default``
        signature (input keyed by the argument's name, output ``output_0``);
        the direct path names them ``<arg>`` and ``Identity`` and has no
        signature. A model of another shape is left as it is.
        """
        from tensorflow.lite.python import schema_py_generated as schema

        if len(self.sg.inputs) != 1 or len(self.sg.outputs) != 1 or self.model.signatureDefs:
            return
        i, o = int(self.sg.inputs[0]), int(self.sg.outputs[0])
        arg = self.sg.tensors[i].name.decode()
        self.sg.tensors[i].name = f"serving_default_{arg}:0".encode()
        self.sg.tensors[o].name = b"StatefulPartitionedCall:0"

        def tensor_map(key: str, index: int):
            m = schema.TensorMapT()
            m.name, m.tensorIndex = key.encode(), index
            return m

        sig = schema.SignatureDefT()
        sig.signatureKey, sig.subgraphIndex = b"serving_default", 0
        sig.inputs, sig.outputs = [tensor_map(arg, i)], [tensor_map("output_0", o)]
        self.model.signatureDefs = [sig]

    # constants ----------------------------------------------------------
    def const(self, i: int) -> Optional[np.ndarray]:
        t = self.sg.tensors[i]
        data = self.model.buffers[t.buffer].data if t.buffer < len(self.model.buffers) else None
        if data is None or len(data) == 0 or t.type != TFLITE_FLOAT32:
            return None
        return np.frombuffer(np.asarray(data, np.uint8).tobytes(), np.float32).reshape(tuple(t.shape))

    def int_values(self, i: int) -> Optional[list[int]]:
        """An int32 constant's values, flat (axes, shapes), or None when tensor ``i`` is not one."""
        t = self.sg.tensors[i]
        data = self.model.buffers[t.buffer].data if t.buffer < len(self.model.buffers) else None
        if data is None or len(data) == 0 or t.type != TFLITE_INT32:
            return None
        return np.frombuffer(np.asarray(data, np.uint8).tobytes(), np.int32).tolist()

    def set_const(self, i: int, value: np.ndarray) -> None:
        """Write a float constant; a buffer shared with other tensors is split off first."""
        from tensorflow.lite.python import schema_py_generated as schema

        t = self.sg.tensors[i]
        shared = sum(1 for u in self.sg.tensors if u.buffer == t.buffer) > 1
        raw = np.frombuffer(np.ascontiguousarray(value, np.float32).tobytes(), np.uint8).copy()
        if shared:
            buf = schema.BufferT()
            buf.data = raw
            self.model.buffers.append(buf)
            t.buffer = len(self.model.buffers) - 1
        else:
            self.model.buffers[t.buffer].data = raw

    # activations --------------------------------------------------------
    def has_range(self, i: int) -> bool:
        q = self.sg.tensors[i].quantization
        return q is not None and q.min is not None and len(q.min) == 1 and self.const(i) is None

    def range(self, i: int) -> tuple[float, float]:
        q = self.sg.tensors[i].quantization
        return float(q.min[0]), float(q.max[0])

    def set_range(self, i: int, lo: float, hi: float) -> None:
        q = self.sg.tensors[i].quantization
        q.min = np.array([min(lo, 0.0)], np.float32)
        q.max = np.array([max(hi, 0.0)], np.float32)

    def activation_tensors(self) -> list[int]:
        """Float activations the quantizer will give a range (not graph inputs/outputs)."""
        out = []
        for code, op in self.ops:
            for i in op.outputs:
                i = int(i)
                if i in self.inputs or i in self.outputs or not self.has_range(i):
                    continue
                if self.sg.tensors[i].type != TFLITE_FLOAT32:
                    continue
                out.append(i)
        return out

    def producer(self, i: int):
        for code, op in self.ops:
            if i in [int(o) for o in op.outputs]:
                return code, op
        return None, None

    def weight_layers(self, per_channel: bool, dense_per_channel: bool) -> list[Layer]:
        """The layers whose float weights the methods may set (``per_channel``: the quantizer's setting)."""
        layers = []
        for code, op in self.ops:
            if code not in WEIGHT_OPS or len(op.inputs) < 2:
                continue
            x, w = int(op.inputs[0]), int(op.inputs[1])
            b = int(op.inputs[2]) if len(op.inputs) > 2 and op.inputs[2] >= 0 else None
            wv = self.const(w)
            if wv is None or self.sg.tensors[x].type != TFLITE_FLOAT32:
                continue  # weights computed at run time, or already quantized
            if b is not None and self.const(b) is None:
                b = None
            x_shape = tuple(self.sg.tensors[x].shape)
            if code == CONV_2D and (wv.ndim != 4 or x_shape[-1] != wv.shape[3]):
                continue  # grouped convolution: leave to the quantizer
            if code == FULLY_CONNECTED and (wv.ndim != 2 or int(np.prod(x_shape)) % wv.shape[1]):
                continue
            pc = per_channel and (dense_per_channel or code != FULLY_CONNECTED)
            layers.append(Layer(code, x, w, b, int(op.outputs[0]), op.builtinOptions, pc))
        return layers


# ---------------------------------------------------------------------- running probes


PROBE_BYTES = 256 << 20  # activations a statistics batch may hold (all of them are kept as outputs)
PROBE_MAX_BATCH = 32


def _probe(graph: Graph, tensors: list[int], samples: np.ndarray):
    """An interpreter on the float model with ``tensors`` as its outputs, the batch it runs, and a name map.

    The batch is as large as ``PROBE_BYTES`` of kept activations allows (at
    most ``PROBE_MAX_BATCH``); a model whose batch dimension cannot be resized
    runs one sample at a time.
    """
    from edgeresnet.device.runtime import get_backend, resize_batch

    saved = graph.sg.outputs
    graph.sg.outputs = np.array(tensors, np.int32)
    try:
        data = graph.to_bytes()
    finally:
        graph.sg.outputs = saved
    per_sample = sum(4 * int(np.prod(graph.sg.tensors[i].shape[1:])) for i in tensors)
    batch = int(max(1, min(PROBE_MAX_BATCH, len(samples), PROBE_BYTES // max(per_sample, 1))))
    backend = get_backend()
    # The statistics passes are plain float inference: use the cores (the
    # converter's own calibrator runs single-threaded, one sample at a time).
    interp = backend.interpreter_cls(model_content=data, num_threads=min(os.cpu_count() or 1, 4))
    inp = interp.get_input_details()[0]
    names = {graph.sg.tensors[i].name.decode(): i for i in tensors}
    if batch > 1 and not resize_batch(interp, inp["index"], batch, samples.shape[1:],
                                      lambda d: graph.sg.tensors[names[d["name"]]].shape):
        batch = 1
        interp = backend.interpreter_cls(model_content=data, num_threads=min(os.cpu_count() or 1, 4))
    interp.allocate_tensors()
    outs = [(d["index"], names[d["name"]]) for d in interp.get_output_details()]
    return interp, inp["index"], outs, batch


def run_probe(graph: Graph, tensors: list[int], samples: np.ndarray, visit: Callable[[dict, np.ndarray], None], tick,
               rows: Optional[np.ndarray] = None) -> bool:
    """Run ``samples`` (the ``rows`` of it, in that order; default all) through the float model in batches;
    ``visit(values, batch_rows)`` gets {tensor: (B, ...) values} and the rows of ``samples`` they came from,
    and stops the run by returning True (then this returns True).

    The values are views of the interpreter's buffers, valid only during the call (copy what is kept).
    """
    rows = np.arange(len(samples)) if rows is None else np.asarray(rows)
    if not tensors:
        tick(len(rows))
        return False
    interp, inp, outs, batch = _probe(graph, tensors, samples[rows[:PROBE_MAX_BATCH]])
    for k in range(0, len(rows), batch):
        here = rows[k : k + batch]
        n = len(here)
        chunk = samples[here]
        if n < batch:  # the last, short batch: padded with its own first sample, which is not visited
            chunk = np.concatenate([chunk, np.repeat(chunk[:1], batch - n, axis=0)])
        interp.set_tensor(inp, np.ascontiguousarray(chunk))
        interp.invoke()
        stop = visit({i: interp.tensor(idx)()[:n] for idx, i in outs}, here)  # no view outlives the call
        tick(n)
        if stop:
            return True
    return False

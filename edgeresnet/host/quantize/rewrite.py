"""Float-exact rewrites of the calibrated model that int8 computes better.

:func:`global_pools_as_mean`: an ``AVERAGE_POOL_2D`` whose window covers its
whole input (a ResNet's ``AveragePooling2D(pool_size=8)`` before the
classifier) computes the same as ``MEAN`` over height and width. The int8
average pool must give its output its input's scale, and the input's range
is a dozen times wider than the averages': the pooled features lose about
3.5 bits, the largest single error of an int8 ResNet-8 (output SQNR 25.8 dB
with it, 28.1 dB without). An int8 ``MEAN`` gives its output a range of its
own. ``MEAN`` over the spatial axes is what Keras's ``GlobalAveragePooling2D``
converts to, runs on XNNPACK, the Edge TPU and the GPU delegate, and is the
op most ResNets already hold.

:func:`classifiers_before_pool`: a classifier (``FULLY_CONNECTED``, no
activation) on the spatial mean of a feature map computes the same as the
mean of that classifier applied at every position (both are linear), so it
becomes a 1x1 ``CONV_2D`` followed by the ``MEAN``. The pooled features, an
int8 tensor of their own that cost the ResNet-8 about as much agreement as its
logits' grid, are gone; the per-position logits' rounding is averaged over the
positions by the int8 ``MEAN`` (which sums in 32 bits); and the classifier's
weights get a scale per class, as every convolution's do. On the MLPerf
ResNet-8 (``mse+gptq``, three seeds) this lifted the agreement with the float
model from 98.37 to 98.57 % on the test images and from 98.44 to 98.60 % on
held-out training images. The cost is the classifier's multiply-accumulates
times the positions (ResNet-8: 64 x 640; ResNet-50 at 224x224: 49 x 2 M, 2.5 %
of the model).
"""

from __future__ import annotations

import numpy as np

from edgeresnet.host.quantize.graph import (
    AVERAGE_POOL_2D, CONV_2D, FULLY_CONNECTED, MEAN, RESHAPE, SQUEEZE, TFLITE_FLOAT32, TFLITE_INT32, Graph,
)


def global_pools_as_mean(graph: Graph) -> list[int]:
    """Rewrite whole-input average pools (no fused activation, 1x1 output) as ``MEAN`` over axes 1 and 2.

    Returns the output tensors of the rewritten ops.
    """
    from tensorflow.lite.python import schema_py_generated as schema

    done = []
    for code, op in graph.ops:
        if code != AVERAGE_POOL_2D or not _whole_input(graph, op):
            continue
        op.opcodeIndex = _op_code_index(graph, schema, MEAN)
        op.inputs = np.array([int(op.inputs[0]), _axes_tensor(graph, schema)], np.int32)
        options = schema.ReducerOptionsT()
        options.keepDims = True
        op.builtinOptionsType, op.builtinOptions = schema.BuiltinOptions.ReducerOptions, options
        done.append(int(op.outputs[0]))
    if done:
        graph.index_ops()
    return done


def _whole_input(graph: Graph, op) -> bool:
    x, y = graph.sg.tensors[int(op.inputs[0])], graph.sg.tensors[int(op.outputs[0])]
    o = op.builtinOptions
    if len(x.shape) != 4 or len(y.shape) != 4 or getattr(o, "fusedActivationFunction", 0):
        return False
    return (list(y.shape[1:3]) == [1, 1] and (o.filterHeight, o.filterWidth) == (x.shape[1], x.shape[2])
            and o.padding == 1)  # VALID


def _op_code_index(graph: Graph, schema, code: int) -> int:
    for k, c in enumerate(graph.model.operatorCodes):
        if max(int(c.builtinCode), int(c.deprecatedBuiltinCode)) == code:
            return k
    new = schema.OperatorCodeT()
    new.builtinCode = new.deprecatedBuiltinCode = code
    new.version = 1
    graph.model.operatorCodes.append(new)
    return len(graph.model.operatorCodes) - 1


def _axes_tensor(graph: Graph, schema) -> int:
    """A new int32 constant [1, 2] (height and width), by tensor index."""
    return _new_const(graph, schema, np.array([1, 2], np.int32), f"edgeresnet/mean_axes_{len(graph.sg.tensors)}".encode())


def _new_const(graph: Graph, schema, value: np.ndarray, name: bytes) -> int:
    """A new constant tensor holding ``value`` (int32 or float32), with a buffer of its own, by tensor index."""
    buf = schema.BufferT()
    buf.data = np.frombuffer(np.ascontiguousarray(value).tobytes(), np.uint8).copy()
    graph.model.buffers.append(buf)
    t = schema.TensorT()
    t.shape, t.buffer = np.array(value.shape, np.int32), len(graph.model.buffers) - 1
    t.type = TFLITE_INT32 if value.dtype == np.int32 else TFLITE_FLOAT32
    t.name = name
    graph.sg.tensors.append(t)
    return len(graph.sg.tensors) - 1


def classifiers_before_pool(graph: Graph) -> list[int]:
    """Rewrite ``MEAN`` over height and width, [``RESHAPE``/``SQUEEZE``], ``FULLY_CONNECTED`` (no activation) as a
    1x1 ``CONV_2D`` with the classifier's weights, then ``MEAN`` over height and width.

    Returns the new per-position output tensors (each with a placeholder range the statistics pass replaces).
    """
    from tensorflow.lite.python import schema_py_generated as schema

    done = []
    for code, mean in list(graph.ops):
        chain = _pooled_classifier(graph, mean) if code == MEAN else None
        if chain is None:
            continue
        between, fc = chain
        x, axes, w, y = int(mean.inputs[0]), int(mean.inputs[1]), int(fc.inputs[1]), int(fc.outputs[0])
        k, c = graph.sg.tensors[w].shape
        has_bias = len(fc.inputs) > 2 and fc.inputs[2] >= 0  # else the converter dropped an all-zero bias
        b = int(fc.inputs[2]) if has_bias else _new_const(graph, schema, np.zeros(k, np.float32), graph.sg.tensors[y].name + b"/bias")
        graph.sg.tensors[w].shape = np.array([k, 1, 1, c], np.int32)  # the same bytes, as a 1x1 kernel
        graph.sg.tensors[w].shapeSignature = None
        z = _per_position_tensor(graph, schema, x, y, int(k))
        conv = schema.Conv2DOptionsT()
        conv.padding, conv.strideH, conv.strideW = 1, 1, 1  # VALID
        conv.dilationHFactor = conv.dilationWFactor = 1
        mean.opcodeIndex, mean.inputs, mean.outputs = _op_code_index(graph, schema, CONV_2D), np.array([x, w, b], np.int32), np.array([z], np.int32)
        mean.builtinOptionsType, mean.builtinOptions = schema.BuiltinOptions.Conv2DOptions, conv
        reduce = schema.ReducerOptionsT()
        reduce.keepDims = False
        fc.opcodeIndex, fc.inputs, fc.outputs = _op_code_index(graph, schema, MEAN), np.array([z, axes], np.int32), np.array([y], np.int32)
        fc.builtinOptionsType, fc.builtinOptions = schema.BuiltinOptions.ReducerOptions, reduce
        graph.sg.operators = [op for op in graph.sg.operators if not any(op is o for o in between)]
        graph.index_ops()
        done.append(graph.sg.tensors[z])
    if done:  # the pooled features (and their reshapes) no op reads now: quantizers would keep them, in float
        graph.drop_unused_tensors()
    return [graph.sg.tensors.index(t) for t in done]


def _pooled_classifier(graph: Graph, mean):
    """(the reshapes between, the FULLY_CONNECTED op) when ``mean`` is a spatial mean that only feeds a classifier
    the rewrite keeps exact; else None."""
    x = graph.sg.tensors[int(mean.inputs[0])]
    axes = graph.int_values(int(mean.inputs[1]))
    if len(x.shape) != 4 or axes is None or sorted(a % 4 for a in axes) != [1, 2] or x.shape[1] * x.shape[2] < 2:
        return None
    t, between = int(mean.outputs[0]), []
    while True:
        readers = graph.consumers.get(t, [])
        if t in graph.outputs or len(readers) != 1 or int(readers[0][1].inputs[0]) != t:
            return None
        code, op = readers[0]
        if code == FULLY_CONNECTED:
            break
        if code not in (RESHAPE, SQUEEZE) or int(np.prod(graph.sg.tensors[int(op.outputs[0])].shape)) != x.shape[3] * x.shape[0]:
            return None
        between.append(op)
        t = int(op.outputs[0])
    w = graph.const(int(op.inputs[1])) if len(op.inputs) > 1 else None
    computed_bias = len(op.inputs) > 2 and op.inputs[2] >= 0 and graph.const(int(op.inputs[2])) is None
    y = graph.sg.tensors[int(op.outputs[0])]
    if (w is None or w.ndim != 2 or w.shape[1] != x.shape[3] or computed_bias or len(y.shape) != 2
            or getattr(op.builtinOptions, "fusedActivationFunction", 0) or getattr(op.builtinOptions, "keepNumDims", False)
            or len(graph.consumers.get(int(op.inputs[1]), [])) != 1):
        return None
    return between, op


def _per_position_tensor(graph: Graph, schema, x: int, y: int, classes: int) -> int:
    """A new float activation tensor: ``x``'s batch and positions, ``classes`` channels, named after ``y``."""
    src = graph.sg.tensors[x]
    t = schema.TensorT()
    t.shape = np.array(list(src.shape[:3]) + [classes], np.int32)
    if src.shapeSignature is not None and len(src.shapeSignature):
        t.shapeSignature = np.array(list(src.shapeSignature[:3]) + [classes], np.int32)
    t.type, t.buffer = TFLITE_FLOAT32, 0
    t.name = graph.sg.tensors[y].name + b"/per_position"
    q = schema.QuantizationParametersT()
    q.min, q.max = np.array([0.0], np.float32), np.array([0.0], np.float32)  # measured by the statistics pass
    t.quantization = q
    graph.sg.tensors.append(t)
    return len(graph.sg.tensors) - 1

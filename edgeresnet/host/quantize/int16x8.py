"""int16x8 (16-bit activations, int8 weights) with the int8 methods' weights.

With 16-bit activations the activations are almost exact, and what is left of
the error is the int8 weights'. The plain converter rounds each weight to
nearest; here the weights (and bias corrections) are the ones an int8 method
chose (for the default ``auto``: ``mse+gptq``'s, or ``mse+bias``'s on a model
too large for GPTQ, as ``auto`` decides for int8), and the
converter's own 16x8 quantizer (``calibrator.Calibrator``, the path
``TFLiteConverter`` takes for
``EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8``) then measures
every activation range on the calibration samples again and quantizes. GPTQ
holds each output channel's largest weight at exactly 127 steps, so that
quantizer recomputes the method's scale and keeps its int8 weights bit for bit.
The activation ranges the method chose are not used: the quantizer measures its
own (min/max), which at 16 bits cost nothing that matters.

On the MLPerf ResNet-8 (``benchmarks/quant_methods.py --int16x8``, three seeds of 300 calibration
images) this lifts the agreement with the float model on the CIFAR-10 test images from 98.50 %
(plain int16x8, no better than int8) to 99.43 %, and on the 4,700 training images no calibration
used from 98.34 to 99.47 %; SQNR from 27.8 to 37.5 dB; drop -0.07 points.
"""

from __future__ import annotations

import time
from typing import Callable, Optional

import numpy as np

from edgeresnet._util import tf as _tf
from edgeresnet._util.capture import native_call
from edgeresnet.host.quantize import graph as g

PLAIN = "minmax"  # the plain converter's int16x8, bit for bit
#: Learned ranges only change ranges, which the 16x8 quantizer measures again: the same weights, sooner.
_SAME_WEIGHTS = {"mse+gptq+ranges": "mse+gptq"}
#: ``auto`` (which scores int8 activations) gives its weights to GPTQ where auto would try GPTQ (the
#: model's size: ``Method.max_choice_macs``, which ``Int8Session`` checks for a tuple of methods), else to
#: bias-corrected rounding to nearest. ResNet-50 at
#: 224x224 (4 G multiply-accumulates), 100 images: 52 s with ``mse+bias``'s weights, 233 s with GPTQ's,
#: 67 s for the plain converter.
_AUTO = ("mse+gptq", "mse+bias")


def convert_int16x8(make_converter: Callable[[], object], calibration: np.ndarray, io_type: str, method: str,
                    progress=None) -> tuple[bytes, object]:
    """(the int16x8 model, the :class:`~edgeresnet.host.quantize.Int8Session` whose weights it has)."""
    from edgeresnet.host.quantize.engine import Int8Session, Ticker

    methods = _AUTO if method == "auto" else _SAME_WEIGHTS.get(method, method)
    session = Int8Session(make_converter, calibration, "float32", methods, progress=progress)
    start = time.perf_counter()
    tick = Ticker(progress, len(session.calibration), "calibration images, 16-bit")
    data = quantize_int16x8(session.calibrated(), session.calibration, io_type, tick)
    session.seconds["quantize"] += time.perf_counter() - start
    return data, session


def quantize_int16x8(calibrated: bytes, samples: np.ndarray, io_type: str, tick: Optional[Callable] = None) -> bytes:
    """The converter's 16x8 quantizer on the float model ``calibrated`` (its weights quantized as they are, its
    activation ranges measured on ``samples`` one at a time, as the converter does)."""
    from tensorflow.lite.python.optimize import calibrator

    from edgeresnet.host.calibration import representative_dataset

    tf = _tf.tf()
    dtypes = {"float32": tf.float32, "int16": tf.int16}
    gen = representative_dataset(samples, None if tick is None else lambda done, total: tick())
    model = _without_unused_opcodes(calibrated)

    def call():
        return bytes(calibrator.Calibrator(model).calibrate_and_quantize(
            gen, dtypes[io_type], dtypes[io_type], False, tf.int16, bias_type=tf.int64))

    return native_call(call, "the TFLite 16x8 quantizer failed")


def _without_unused_opcodes(data: bytes) -> bytes:
    """``data`` without operator codes no op uses (the average pool the MEAN rewrite replaced): the calibrator's
    interpreter refuses to build a model that lists one."""
    fu = g.flatbuffer_utils()
    m = fu.convert_bytearray_to_object(bytearray(data))
    used = sorted({int(op.opcodeIndex) for sg in m.subgraphs for op in sg.operators})
    if len(used) == len(m.operatorCodes):
        return data
    index = {old: new for new, old in enumerate(used)}
    m.operatorCodes = [m.operatorCodes[i] for i in used]
    for sg in m.subgraphs:
        for op in sg.operators:
            op.opcodeIndex = index[int(op.opcodeIndex)]
    return bytes(fu.convert_object_to_bytearray(m))

"""Keras model -> TFLite bytes, for one (precision, io type) at a time.

The target table (``targets.py``) decides *which* precision a target gets; this
module knows how to ask ``tf.lite.TFLiteConverter`` for it. Full-integer int8
is only ever built with ``TFLITE_BUILTINS_INT8``: if an op cannot be quantized
the conversion fails loudly instead of falling back to float or to
dynamic-range, and ``SELECT_TF_OPS`` is never enabled.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np

from edgeresnet._util import tf as _tf
from edgeresnet._util.capture import native_call
from edgeresnet.host.calibration import representative_dataset
from edgeresnet.errors import ConfigError
from edgeresnet.host.quantize.registry import DEFAULT_METHOD, get_method
from edgeresnet.host.quantize.int16x8 import PLAIN as PLAIN_INT16X8
from edgeresnet.targets import PRECISIONS

ProgressFn = Callable[[int, int], None]

# The int8 "method" of a model fine-tuned with fake quantization (edgeresnet.host.training.qat):
# its ranges come from training, not from calibration.
QAT_METHOD = "qat"


@dataclass(frozen=True)
class ConversionSpec:
    """One TFLite variant to build."""

    precision: str
    io_type: str = "float32"
    method: str = DEFAULT_METHOD  # how int8 ranges and weights are chosen (the quantize method registry)

    def __post_init__(self):
        if self.precision not in PRECISIONS:
            raise ConfigError(
                f"unknown precision {self.precision!r}; choose one of {', '.join(PRECISIONS)}"
            )
        allowed = PRECISIONS[self.precision].io_types
        if self.io_type not in allowed:
            raise ConfigError(
                f"io type {self.io_type!r} is not possible for {self.precision}; choose one of {', '.join(allowed)}"
            )
        if self.method == QAT_METHOD:
            if self.precision != "int8":
                raise ConfigError(f"quantization-aware models convert to int8 only, not {self.precision}")
        else:
            get_method(self.method)  # raises ConfigError naming the registered methods

    @property
    def needs_calibration(self) -> bool:
        return PRECISIONS[self.precision].needs_calibration


@dataclass(frozen=True)
class ConversionResult:
    spec: ConversionSpec
    model: bytes
    seconds: float
    log: str
    session: object = field(default=None, repr=False, compare=False)  # int8: the quantize.Int8Session it came from


def _configure(converter, spec: ConversionSpec, calibration: Optional[np.ndarray], progress):
    tf = _tf.tf()
    dtypes = {"int8": tf.int8, "uint8": tf.uint8, "int16": tf.int16, "float32": tf.float32}
    if spec.precision == "fp32":
        return
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if spec.precision == "fp16":
        converter.target_spec.supported_types = [tf.float16]
        return
    if spec.precision == "dynamic":
        return
    converter.representative_dataset = representative_dataset(calibration, progress)
    # int16x8 with --int8-method minmax here (otherwise quantize.int16x8); full int8 goes through the int8
    # engine (quantize.Int8Session).
    converter.target_spec.supported_ops = [tf.lite.OpsSet.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8]
    converter.inference_input_type = dtypes[spec.io_type]
    converter.inference_output_type = dtypes[spec.io_type]


def convert(
    make_converter: Callable[[], object],
    spec: ConversionSpec,
    calibration: Optional[np.ndarray] = None,
    progress: Optional[ProgressFn] = None,
) -> ConversionResult:
    """Build one TFLite model.

    ``make_converter`` returns a fresh ``tf.lite.TFLiteConverter`` for the model
    (``LoadedModel.tflite_converter``); ``calibration`` holds preprocessed float32
    samples (N, H, W, C) for the full-integer precisions.
    """
    if spec.needs_calibration and (calibration is None or len(calibration) == 0):
        raise ConfigError(
            f"{spec.precision} needs calibration data; pass --calib with a folder of representative images"
        )
    if spec.precision == "int8":
        return _convert_int8(make_converter, spec, calibration, progress)
    if spec.precision == "int16x8" and spec.method != PLAIN_INT16X8:  # int8 weights chosen by an int8 method
        from edgeresnet.host.quantize.int16x8 import convert_int16x8

        start = time.perf_counter()
        data, session = convert_int16x8(make_converter, calibration, spec.io_type, spec.method, progress)
        return ConversionResult(spec=spec, model=data, seconds=time.perf_counter() - start, log="", session=session)
    converter = make_converter()
    _configure(converter, spec, calibration, progress)
    start = time.perf_counter()
    data = native_call(converter.convert, f"the TFLite converter failed for {spec.precision}")
    return ConversionResult(spec=spec, model=bytes(data), seconds=time.perf_counter() - start, log="")


def _convert_int8(make_converter, spec: ConversionSpec, calibration, progress) -> ConversionResult:
    """Full integer: TFLITE_BUILTINS_INT8 only, ranges and weights chosen by ``spec.method``."""
    start = time.perf_counter()
    if spec.method == QAT_METHOD:  # ranges come from training (edgeresnet.host.training.qat), not from calibration
        from edgeresnet.host.training.qat import convert_qat

        data = convert_qat(make_converter, spec.io_type, calibration)
        return ConversionResult(spec=spec, model=data, seconds=time.perf_counter() - start, log="")
    from edgeresnet.host.quantize import Int8Session

    session = Int8Session(make_converter, calibration, spec.io_type, method=spec.method, progress=progress)
    return ConversionResult(spec=spec, model=session.model, seconds=time.perf_counter() - start, log="", session=session)

"""int16x8 (16-bit activations, int8 weights) takes its int8 weights from an int8 method (quantize.int16x8)."""

from __future__ import annotations

import numpy as np
import pytest

from edgeresnet.device import verify
from edgeresnet.device.runtime import TFLiteModel


@pytest.fixture(scope="module")
def tiny(tiny_model_h5, tiny_data):
    from edgeresnet.device.images import load_images
    from edgeresnet.host.models.loading import load_model

    loaded = load_model(tiny_model_h5)
    calib = load_images(tiny_data["calib"], (16, 16, 3)).images.astype(np.float32) / 255.0
    return loaded, calib


def _int16x8(loaded, calib, method=None, io_type="float32"):
    from edgeresnet.host.converter import ConversionSpec, convert

    spec = ConversionSpec("int16x8", io_type) if method is None else ConversionSpec("int16x8", io_type, method)
    return convert(loaded.tflite_converter, spec, calib)


@pytest.mark.slow  # two GPTQ sessions (6 s); the quick loop keeps the size-limit test below
def test_default_int16x8_keeps_mse_gptqs_int8_weights_bit_for_bit(tiny, weight_tensors):
    from edgeresnet.device.inspection import inspect_tflite
    from edgeresnet.host.quantize import Int8Session

    loaded, calib = tiny
    result = _int16x8(loaded, calib)
    assert result.session is not None and result.session.method.name == "mse+gptq"
    gptq = Int8Session(loaded.tflite_converter, calib, "int8", "mse+gptq").model
    weights = weight_tensors(result.model)
    assert weights and weights == weight_tensors(gptq)  # the same int8 values and scales
    assert inspect_tflite(result.model, gpu=False, runtimes=False).precision == "int16x8"
    assert result.session.record("auto")["method"] == "mse+gptq"


def test_default_int16x8_on_a_model_over_gptqs_size_limit_takes_mse_bias_weights(tiny, monkeypatch, weight_tensors):
    from edgeresnet.host.quantize import Int8Session
    from edgeresnet.host.quantize.registry import get_method

    loaded, calib = tiny
    monkeypatch.setattr(get_method("mse+gptq"), "max_choice_macs", 1.0)  # the tiny model is "too large" for GPTQ
    result = _int16x8(loaded, calib)
    assert result.session.method.name == "mse+bias"
    assert weight_tensors(result.model) == weight_tensors(Int8Session(loaded.tflite_converter, calib, "int8", "mse+bias").model)


@pytest.mark.slow  # two conversions through the converter's SavedModel path (7 s)
def test_minmax_int16x8_is_the_plain_converters_model(tiny):
    from edgeresnet._util import tf as _tf

    loaded, calib = tiny
    calib = calib[:16]  # the converter's 16x8 calibrator runs one sample at a time
    result = _int16x8(loaded, calib, "minmax", io_type="int16")
    assert result.session is None
    tf = _tf.tf()
    converter = loaded.tflite_converter()
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: ([calib[i : i + 1]] for i in range(len(calib)))
    converter.target_spec.supported_ops = [tf.lite.OpsSet.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8]
    converter.inference_input_type = converter.inference_output_type = tf.int16
    assert result.model == bytes(converter.convert())
    assert TFLiteModel(result.model).input.dtype == np.int16


@pytest.mark.slow  # two int16x8 conversions and 2,000 evaluations on reference kernels (30 s)
def test_real_resnet8_int16x8_agrees_with_float_more_than_the_plain_converters(resnet8_h5, shared_data):
    """On the 1,000 CIFAR-10 test images (no calibration image among them): measured 98.5 % against 99.3 %."""
    from edgeresnet.device.images import load_images
    from edgeresnet.host.models.loading import load_model

    loaded = load_model(resnet8_h5)
    calib = load_images(shared_data / "cifar10" / "train", (32, 32, 3), samples=300, seed=0).images.astype(np.float32)
    test = load_images(shared_data / "cifar10" / "test", (32, 32, 3)).images.astype(np.float32)
    ref = loaded.predict(test)
    outs = {m: TFLiteModel(_int16x8(loaded, calib, m).model).predict(test) for m in ("minmax", "auto")}
    agree = {m: verify.agreement(ref, o) for m, o in outs.items()}
    sqnr = {m: verify.sqnr_db(ref, o) for m, o in outs.items()}
    assert agree["auto"] >= 99.0 and agree["auto"] >= agree["minmax"] + 0.3, agree
    assert sqnr["auto"] >= sqnr["minmax"] + 5.0, sqnr

"""The baseline the int8 benchmarks time edgeresnet against: a bare ``TFLiteConverter`` call."""

from __future__ import annotations

import time


def bare_int8_seconds(tf, model, calib) -> float:
    """Seconds one plain full-integer int8 conversion of the Keras ``model`` takes (int8 in/out)."""
    conv = tf.lite.TFLiteConverter.from_keras_model(model)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = lambda: ([calib[i : i + 1]] for i in range(len(calib)))
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    conv.inference_input_type = tf.int8
    conv.inference_output_type = tf.int8
    start = time.perf_counter()
    conv.convert()
    return time.perf_counter() - start

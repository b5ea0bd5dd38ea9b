import json
import os
import subprocess
import sys

import numpy as np
import pytest

from edgeresnet.device import bench
from edgeresnet.device.bench import BenchConfig, benchmark, format_bench
from edgeresnet.errors import ConfigError, TFLiteFileError
from edgeresnet.device.runtime import TensorSpec, available_backends


@pytest.fixture(scope="module")
def tiny_models():
    """A 16x16 conv net converted to fp32 and to full-int8 (int8 in/out) with the project's converter."""
    from edgeresnet._util.tf import tf_keras
    from edgeresnet.host.converter import ConversionSpec, convert
    from edgeresnet.host.models.loading import LoadedModel

    keras = tf_keras()
    keras.utils.set_random_seed(0)
    inp = keras.Input((16, 16, 3))
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(inp)
    x = keras.layers.Conv2D(8, 3, strides=2, padding="same", activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    out = keras.layers.Dense(4, activation="softmax")(x)
    loaded = LoadedModel.from_keras(keras.Model(inp, out), "tiny")
    calib = np.random.default_rng(0).random((16, 16, 16, 3)).astype(np.float32)
    fp32 = convert(loaded.tflite_converter, ConversionSpec("fp32")).model
    int8 = convert(loaded.tflite_converter, ConversionSpec("int8", "int8"), calib).model
    return {"fp32": fp32, "int8": int8}


def test_fp32_statistics_are_ordered_and_repeats_honoured(tiny_models):
    calls = []
    r = benchmark(tiny_models["fp32"], BenchConfig(warmup=3, repeats=7, threads=1), progress=lambda d, t: calls.append((d, t)))
    assert r.repeats == 7 and len(r.times_ms) == 7 and r.warmup == 3 and r.threads == 1
    assert calls == [(i, 10) for i in range(1, 11)]
    assert r.p90_ms >= r.median_ms >= r.min_ms > 0
    assert r.max_ms >= r.p90_ms and r.min_ms <= r.mean_ms <= r.max_ms
    assert r.median_ms == pytest.approx(float(np.median(r.times_ms)))
    assert r.input_shape == (1, 16, 16, 3) and r.input_dtype == "float32"
    assert r.size_bytes == len(tiny_models["fp32"]) and r.model == "model"
    assert r.interpreter and r.interpreter_version


def test_int8_model_gets_an_int8_input_from_a_path(tiny_models, tmp_path):
    path = tmp_path / "tiny_int8.tflite"
    path.write_bytes(tiny_models["int8"])
    r = benchmark(path, BenchConfig(warmup=0, repeats=1))
    assert r.model == str(path) and r.size_bytes == path.stat().st_size
    assert r.input_dtype == "int8" and r.repeats == 1 and len(r.times_ms) == 1
    assert r.p90_ms == r.median_ms == r.min_ms > 0
    assert r.threads is None


def test_random_input_is_quantized_with_the_tensor_parameters():
    spec = TensorSpec("input", 0, (1, 8, 8, 3), np.dtype(np.int8), scale=0.5, zero_point=-10)
    x = bench.random_input(spec)
    assert x.dtype == np.int8 and x.shape == (1, 8, 8, 3)
    assert x.min() < -100 and x.max() > 100  # spans the int8 range, not a constant
    assert np.array_equal(x, bench.random_input(spec))  # seeded: two runs time the same tensor
    fspec = TensorSpec("input", 0, (-1, 4, 4, 1), np.dtype(np.float32), 0.0, 0)
    f = bench.random_input(fspec)
    assert f.dtype == np.float32 and f.shape == (1, 4, 4, 1) and f.std() > 0


def test_to_dict_is_json_ready_and_format_names_the_figures(tiny_models):
    r = benchmark(tiny_models["int8"], BenchConfig(warmup=1, repeats=5, threads=2))
    d = json.loads(json.dumps(r.to_dict()))
    assert d["repeats"] == 5 and d["threads"] == 2 and d["input_shape"] == [1, 16, 16, 3]
    assert "times_ms" not in d
    assert len(r.to_dict(include_times=True)["times_ms"]) == 5
    text = format_bench(r)
    assert r.interpreter in text and f"{r.median_ms:.3f}" in text and "threads: 2" in text


def test_not_a_tflite_file_is_a_one_line_error(tmp_path):
    junk = tmp_path / "model.tflite"
    junk.write_bytes(b"\x00" * 64)
    with pytest.raises(TFLiteFileError, match="not a TFLite flatbuffer"):
        benchmark(junk)
    with pytest.raises(TFLiteFileError, match="no such file"):
        benchmark(tmp_path / "missing.tflite")


@pytest.mark.parametrize(
    "kwargs, needle",
    [
        ({"repeats": 0}, "repeats must be at least 1, got 0"),
        ({"warmup": -1}, "warmup must be at least 0, got -1"),
        ({"threads": 0}, "threads must be at least 1, got 0"),
        ({"repeats": 2.5}, "repeats must be a whole number, got 2.5"),
        ({"threads": True}, "threads must be a whole number, got True"),
        ({"warmup": "3"}, "warmup must be a whole number, got '3'"),
    ],
)
def test_bad_config_values_name_the_value(kwargs, needle):
    with pytest.raises(ConfigError) as exc:
        BenchConfig(**kwargs)
    assert needle in str(exc.value)


def test_benchmark_runs_without_tensorflow(tiny_models, tmp_path):
    if not set(available_backends()) & {"ai-edge-litert", "tflite-runtime"}:
        pytest.skip("neither ai-edge-litert nor tflite-runtime is installed")
    path = tmp_path / "m.tflite"
    path.write_bytes(tiny_models["int8"])
    code = (
        "import sys; from edgeresnet.device.bench import benchmark, BenchConfig; "
        f"r = benchmark({str(path)!r}, BenchConfig(warmup=1, repeats=2)); "
        "assert r.interpreter != 'tf.lite', r.interpreter; "
        "assert 'tensorflow' not in sys.modules, 'tensorflow was imported'"
    )
    env = {k: v for k, v in os.environ.items() if k != "EDGERESNET_INTERPRETER"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]

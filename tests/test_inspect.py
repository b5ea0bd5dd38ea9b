"""The TF-free graph reader, `inspect`, interpreter load checks and the GPU verdict."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from edgeresnet.errors import TFLiteFileError
from edgeresnet.targets.gpu.analysis import analyze_gpu, analyzer_checks_gpu, parse_analyzer_output
from edgeresnet.device.inspection import (
    TFLITE_RUNTIME_PYTHON_ENV,
    check_in_process,
    check_in_venv,
    format_inspect,
    inspect_tflite,
)
from edgeresnet.device.tflite_graph import _BUILTIN_NAMES, parse_tflite

REPO = Path(__file__).resolve().parents[1]
schema = pytest.importorskip("ai_edge_litert.schema_py_generated")


# --------------------------------------------------------------------------- tiny models


def _keras():
    from edgeresnet._util import tf as _tf

    return _tf.tf(), _tf.tf_keras()


def _tiny(extra=None, size=16):
    _, k = _keras()
    k.utils.set_random_seed(2)
    inp = k.Input((size, size, 3), batch_size=1)
    x = k.layers.Conv2D(8, 3, padding="same", activation="relu")(inp)
    x = k.layers.DepthwiseConv2D(3, padding="same", activation="relu")(x)
    if extra is not None:
        x = extra(x)
    x = k.layers.GlobalAveragePooling2D()(x)
    return k.Model(inp, k.layers.Dense(5, activation="softmax")(x))


def _convert(model, precision: str, io: str = "float32", custom_ops: bool = False) -> bytes:
    from edgeresnet.host.converter import ConversionSpec, convert

    tf, _ = _keras()

    def make():
        c = tf.lite.TFLiteConverter.from_keras_model(model)
        c.allow_custom_ops = custom_ops
        return c

    calib = np.random.default_rng(0).uniform(0, 1, (12,) + tuple(model.input_shape[1:])).astype(np.float32)
    needs = precision in ("int8", "int16x8")
    return convert(make, ConversionSpec(precision, io), calib if needs else None).model


@pytest.fixture(scope="module")
def models():
    tf, k = _keras()
    base = _tiny()
    erf = k.layers.Lambda(lambda t: tf.math.erf(t))
    return {
        "int8": _convert(base, "int8", "int8"),
        "fp16": _convert(base, "fp16"),
        "fp32": _convert(base, "fp32"),
        "int16x8": _convert(base, "int16x8"),
        "custom": _convert(_tiny(erf), "fp32", custom_ops=True),
    }


def _write(tmp_path, name, data) -> Path:
    p = tmp_path / name
    p.write_bytes(data)
    return p


# --------------------------------------------------------------------------- graph reader


def test_builtin_names_match_the_schema():
    enum = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    for code, name in enumerate(_BUILTIN_NAMES):
        assert enum.get(code) == name, code


def _cross_check(data: bytes):
    """Our reader against the generated schema of ai-edge-litert, field by field."""
    g = parse_tflite(data)
    m = schema.ModelT.InitFromObj(schema.Model.GetRootAs(data, 0))
    sg = m.subgraphs[0]
    assert len(sg.tensors) == len(g.tensors) and len(sg.operators) == len(g.ops)
    assert list(sg.inputs) == list(g.inputs) and list(sg.outputs) == list(g.outputs)
    for t, mine in zip(sg.tensors, g.tensors):
        assert list(t.shape if t.shape is not None else []) == list(mine.shape)
        assert (t.name.decode() if t.name else "") == mine.name
        sig = None if t.shapeSignature is None else list(t.shapeSignature)
        assert sig == (None if mine.shape_signature is None else list(mine.shape_signature))
        q = t.quantization
        if q is not None and q.scale is not None and len(q.scale):
            assert np.allclose(q.scale, mine.quantization.scale)
            assert list(q.zeroPoint) == list(mine.quantization.zero_point)
            assert q.quantizedDimension == mine.quantization.quantized_dimension
        else:
            assert not mine.quantized
        data_len = m.buffers[t.buffer].data
        assert (0 if data_len is None else len(data_len)) == mine.const_bytes
        if mine.is_constant and mine.dtype in ("int8", "int32", "float32", "float16"):
            raw = np.asarray(m.buffers[t.buffer].data, np.uint8).tobytes()
            assert g.const_array(mine.index).tobytes() == raw
    for o, mine in zip(sg.operators, g.ops):
        assert list(o.inputs) == list(mine.inputs) and list(o.outputs) == list(mine.outputs)
        oc = m.operatorCodes[o.opcodeIndex]
        assert max(oc.builtinCode, oc.deprecatedBuiltinCode) == mine.builtin_code
        assert oc.version == mine.version
        opts = o.builtinOptions
        if mine.name in ("CONV_2D", "DEPTHWISE_CONV_2D"):
            assert opts.dilationWFactor == mine.options["dilation_w"]
            assert opts.strideH == mine.options["stride_h"]
            act = {0: "NONE", 1: "RELU", 3: "RELU6"}[opts.fusedActivationFunction]
            assert act == mine.options["fused_activation"]
        if mine.name == "FULLY_CONNECTED":
            assert opts.weightsFormat == mine.options["weights_format"]
        if mine.name in ("AVERAGE_POOL_2D", "MAX_POOL_2D"):
            assert opts.filterWidth == mine.options["filter_width"]
    return g


@pytest.mark.parametrize("kind", ["int8", "fp16", "fp32", "int16x8", "custom"])
def test_graph_reader_agrees_with_schema(models, kind):
    g = _cross_check(models[kind])
    assert g.ops and g.subgraph_count == 1


def test_graph_reader_on_the_real_models(shared_data):
    for name in ("pretrainedResnet.tflite", "pretrainedResnet_quant.tflite"):
        g = _cross_check((shared_data / "mlperf-tiny-resnet8" / name).read_bytes())
        assert g.op_histogram() == {
            "CONV_2D": 9, "ADD": 3, "AVERAGE_POOL_2D": 1, "FULLY_CONNECTED": 1, "RESHAPE": 1, "SOFTMAX": 1
        }


def test_custom_op_is_named_by_its_custom_code(models):
    g = parse_tflite(models["custom"])
    custom = [op for op in g.ops if op.is_custom]
    assert [op.name for op in custom] == ["Erf"]


# --------------------------------------------------------------------------- inspect


def test_inspect_mlperf_reference_int8(shared_data):
    path = shared_data / "mlperf-tiny-resnet8" / "pretrainedResnet_quant.tflite"
    r = inspect_tflite(path)
    assert r.size_bytes == path.stat().st_size
    assert r.precision == "int8" and r.ops_total == 16
    assert r.op_histogram["CONV_2D"] == 9
    assert r.float32_tensors == 0 and set(r.tensor_dtypes) == {"int8", "int32"}
    (inp,), (out,) = r.inputs, r.outputs
    assert inp["dtype"] == "int8" and inp["quantization"] == {"scale": 1.0, "zero_point": -128}
    assert out["dtype"] == "int8" and out["shape"] == [1, 10]
    assert inp["shape_signature"] == [-1, 32, 32, 3]
    assert r.verdicts["cpu"].ok is True and "XNNPACK takes" in r.verdicts["cpu"].summary
    assert r.interpreters["ai-edge-litert"].loads is True
    assert r.interpreters["ai-edge-litert"].delegated_ops > 0
    assert r.verdicts["edgetpu"].ok is True
    assert r.verdicts["edgetpu"].details["ops_mapped"] == 16
    assert r.verdicts["gpu"].ok is True
    d = json.loads(r.to_json())
    assert set(d["verdicts"]) == {"cpu", "edgetpu", "gpu"}
    assert {"ok", "summary", "details"} <= set(d["verdicts"]["edgetpu"])
    assert d["interpreters"]["tflite-runtime"]["status"] in ("loads", "fails", "not checked")
    text = format_inspect(r)
    assert "CONV_2D" in text and "zero_point -128" in text and "edgetpu" in text


def test_inspect_rejects_a_non_tflite_file(tmp_path):
    bad = _write(tmp_path, "notes.tflite", b"PK\x03\x04 a zip file, not a model")
    with pytest.raises(TFLiteFileError, match="not a TFLite flatbuffer"):
        inspect_tflite(bad)


def test_inspect_precisions_and_xnnpack(models):
    int8 = inspect_tflite(models["int8"])
    assert int8.precision == "int8" and int8.verdicts["edgetpu"].ok is True  # int8 io is allowed by flag
    assert int8.interpreters["ai-edge-litert"].delegated_ops >= 1
    fp16 = inspect_tflite(models["fp16"])
    assert fp16.precision == "fp16" and fp16.tensor_dtypes.get("float16", 0) > 0
    assert fp16.verdicts["edgetpu"].ok is False
    i16 = inspect_tflite(models["int16x8"])
    assert i16.precision == "int16x8"
    assert i16.verdicts["cpu"].ok is True
    assert "not accelerated by XNNPACK" in i16.verdicts["cpu"].summary
    # Measured, not assumed: XNNPACK takes none of the int16x8 ops.
    assert i16.interpreters["ai-edge-litert"].delegated_ops == 0


def test_newer_op_version_fails_to_load_with_a_clear_reason(models, bump_op_version):
    future = bump_op_version(models["int8"], "CONV_2D", 99)
    assert {op.version for op in parse_tflite(future).ops if op.name == "CONV_2D"} == {99}
    check = check_in_process(future, "ai-edge-litert")
    assert check.status == "fails"
    assert "CONV_2D" in check.error and "99" in check.error
    r = inspect_tflite(future)
    assert r.verdicts["cpu"].ok is False and "does not load" in r.verdicts["cpu"].summary
    assert r.op_versions["CONV_2D"] == [99]


# --------------------------------------------------------------------------- tflite-runtime


def test_check_in_venv_reports_missing_runtime_and_missing_python(tmp_path, models):
    path = _write(tmp_path, "m.tflite", models["int8"])
    here = check_in_venv(path, sys.executable, timeout=120)
    if here.status == "loads":  # tflite-runtime happens to be installed in this python
        assert here.version
    else:
        assert here.status == "not installed" and "tflite_runtime" in here.error
    gone = check_in_venv(path, tmp_path / "no-python", timeout=10)
    assert gone.status == "not checked" and TFLITE_RUNTIME_PYTHON_ENV in gone.error


def test_tflite_runtime_not_checked_without_env(monkeypatch, models):
    monkeypatch.delenv(TFLITE_RUNTIME_PYTHON_ENV, raising=False)
    r = inspect_tflite(models["int8"])
    c = r.interpreters["tflite-runtime"]
    if c.status != "loads":
        assert c.status == "not checked" and TFLITE_RUNTIME_PYTHON_ENV in c.error


@pytest.mark.skipif(not os.environ.get(TFLITE_RUNTIME_PYTHON_ENV), reason=f"set {TFLITE_RUNTIME_PYTHON_ENV} to a python with tflite-runtime")
def test_real_tflite_runtime_loads_reference_and_tf221_models(shared_data, tmp_path, models, bump_op_version, batch_60161):
    exe = os.environ[TFLITE_RUNTIME_PYTHON_ENV]
    ref = check_in_venv(shared_data / "mlperf-tiny-resnet8" / "pretrainedResnet_quant.tflite", exe)
    assert ref.status == "loads", ref.error
    ours = check_in_venv(_write(tmp_path, "int8.tflite", models["int8"]), exe)
    assert ours.status == "loads", ours.error
    future = check_in_venv(_write(tmp_path, "v99.tflite", bump_op_version(models["int8"], "CONV_2D", 99)), exe)
    assert future.status == "fails" and "CONV_2D" in future.error
    # A corrupt batch size is refused there as here, before 700 MiB are allocated and run (it took 28 s, and
    # more than a minute on 2 busy cores, in the fuzz test).
    big = _write(tmp_path, "big.tflite", batch_60161((shared_data / "mlperf-tiny-resnet8" / "pretrainedResnet.tflite").read_bytes()))
    started = time.monotonic()
    refused = check_in_venv(big, exe)
    assert refused.status == "fails" and "input [60161, 32, 32, 3] would take" in refused.error, refused.error
    assert "more than the 256 MiB edgeresnet runs" in refused.error and time.monotonic() - started < 20


def test_inspect_needs_no_tensorflow(tmp_path, models):
    path = _write(tmp_path, "m.tflite", models["int8"])
    code = (
        "import sys, json\n"
        "from edgeresnet.device.inspection import inspect_tflite\n"
        f"r = inspect_tflite({str(path)!r})\n"
        "assert 'tensorflow' not in sys.modules, 'tensorflow was imported'\n"
        "print(json.dumps({'gpu': r.verdicts['gpu'].ok, 'cpu': r.verdicts['cpu'].ok}))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == {"gpu": True, "cpu": True}


# --------------------------------------------------------------------------- GPU


def test_gpu_fp16_model_is_compatible(models):
    report = analyze_gpu(models["fp16"])
    assert report.verdict == "compatible" and report.ok is True and not report.issues
    screen_only = analyze_gpu(models["fp16"], engine="none")
    assert screen_only.verdict == "compatible" and screen_only.engine == "none"


def test_gpu_custom_op_is_reported_structurally(models):
    report = analyze_gpu(models["custom"])
    assert report.verdict == "incompatible" and report.ok is False
    (issue,) = [i for i in report.issues if i.op == "Erf"]
    g = parse_tflite(models["custom"])
    assert g.ops[issue.index].name == "Erf"
    assert "custom op" in issue.reason
    d = report.to_dict()
    assert d["issues"][0]["op"] == "Erf" and isinstance(d["issues"][0]["index"], int)


def test_gpu_analyzer_build_is_probed(models):
    checks = analyzer_checks_gpu("litert")
    assert checks in (True, False)
    report = analyze_gpu(models["fp16"], engine="litert")
    assert report.analyzer_checks is checks
    if checks is False:
        assert any("no longer checks GPU support" in n for n in report.notes)


@pytest.mark.slow
def test_gpu_tensorflow_analyzer_engine(models):
    report = analyze_gpu(models["custom"], engine="tensorflow")
    assert report.engine == "tf.lite.experimental.Analyzer"
    assert "Erf" in report.raw  # the captured dump names the op
    assert report.verdict == "incompatible"


# SAMPLE FORMAT, hand-written: the analyzer's text when its GPU checks run
# (TensorFlow <= 2.18), with per-op warnings under the op lines.
SAMPLE_ANALYZER = """\
=== TFLite ModelAnalyzer ===

Your TFLite model has '1' subgraph(s). In the subgraph description below,
T# represents the Tensor numbers.

Subgraph#0 main(T#0) -> [T#6]
  Op#0 CONV_2D(T#0, T#1, T#2) -> [T#3]
  Op#1 TOPK_V2(T#3, T#4[3]) -> [T#5, T#6]
GPU COMPATIBILITY WARNING: Not supported op TOPK_V2
  Op#2 CAST(T#6) -> [T#7]
GPU COMPATIBILITY WARNING: Not supported Cast case. Input type: INT32 and output type: FLOAT32

GPU COMPATIBILITY WARNING: Subgraph#0 has GPU delegate compatibility issues at nodes 1, 2 with TFLite runtime version 2.13.0

Tensors of Subgraph#0
  T#0(input) shape:[1, 8], type:FLOAT32
"""


def test_parse_analyzer_output_sample():
    parsed = parse_analyzer_output(SAMPLE_ANALYZER)
    assert [(i.index, i.op) for i in parsed["issues"]] == [(1, "TOPK_V2"), (2, "CAST")]
    assert parsed["issues"][0].reason == "Not supported op TOPK_V2"
    assert parsed["flagged_nodes"] == {0: [1, 2]}
    assert parsed["runtime"] == "2.13.0"
    assert parsed["compatible_claim"] is False
    ok = parse_analyzer_output("Your model looks compatible with GPU delegate on TFLite runtime version 2.21.0.\n")
    assert ok["compatible_claim"] is True and ok["runtime"] == "2.21.0" and not ok["issues"]

"""Edge TPU compatibility analysis on real converted models, and the compiler runner."""

from __future__ import annotations

import dataclasses
import os
import stat
import sys
import textwrap
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from edgeresnet.targets.edgetpu.analysis import analyze_edgetpu, analyze_model
from edgeresnet.targets.edgetpu.compiler import COMPILER_HINT, find_compiler, parse_compiler_log, run_compiler
from edgeresnet.targets.edgetpu.ground_truth import check_against_compiled, compiler_cpu_ops
from edgeresnet.targets.edgetpu.ops import EDGETPU_OP_NAME, load_op_table
from edgeresnet.targets.edgetpu.partition import partition
from edgeresnet.errors import MissingDependencyError, TFLiteFileError
from edgeresnet.device.runtime import TFLiteModel, is_edgetpu_compiled
from edgeresnet.device.tflite_graph import _BUILTIN_NAMES, parse_tflite, read_graph


# --------------------------------------------------------------------------- tiny models


def _keras():
    from edgeresnet._util import tf as _tf

    return _tf.tf(), _tf.tf_keras()


def _to_tflite(model, int8: bool, io: str = "uint8", method: str = "mse+bias") -> bytes:
    from edgeresnet.host.converter import ConversionSpec, convert

    tf, _ = _keras()
    rng = np.random.default_rng(0)
    calib = rng.uniform(0, 1, (16,) + tuple(model.input_shape[1:])).astype(np.float32)
    spec = ConversionSpec("int8", io, method) if int8 else ConversionSpec("fp32", "float32")
    result = convert(lambda: tf.lite.TFLiteConverter.from_keras_model(model), spec, calib if int8 else None)
    return result.model


def _tiny_resnet(extra=None):
    """32x32 input, one residual block, GAP, dense softmax; ``extra`` adds a layer after the block."""
    tf, k = _keras()
    k.utils.set_random_seed(1)
    inp = k.Input((32, 32, 3), batch_size=1)
    x = k.layers.Conv2D(8, 3, padding="same", activation="relu")(inp)
    y = k.layers.Conv2D(8, 3, padding="same", activation="relu")(x)
    y = k.layers.DepthwiseConv2D(3, padding="same")(y)
    x = k.layers.Activation("relu")(k.layers.Add()([x, y]))
    x = k.layers.MaxPooling2D(2)(x)
    if extra is not None:
        x = extra(x)
    x = k.layers.GlobalAveragePooling2D()(x)
    out = k.layers.Dense(10, activation="softmax")(x)
    return k.Model(inp, out)


@pytest.fixture(scope="module")
def int8_uint8io():
    return _to_tflite(_tiny_resnet(), int8=True, io="uint8")


@pytest.fixture(scope="module")
def float_model():
    return _to_tflite(_tiny_resnet(), int8=False)


@pytest.fixture(scope="module")
def cumsum_int8():
    """TFLITE_BUILTINS_INT8 keeps CUMSUM in float, between DEQUANTIZE and QUANTIZE.

    Built with the plain converter (minmax): edgeresnet's default int8 path
    refuses such a model outright, which is what a user wants but not what
    this test needs to analyse.
    """
    tf, k = _keras()
    layer = k.layers.Lambda(lambda t: tf.math.cumsum(t, axis=1))
    return _to_tflite(_tiny_resnet(layer), int8=True, method="minmax")


@pytest.fixture(scope="module")
def reshape5d_int8():
    _, k = _keras()

    def five_d(x):
        x = k.layers.Reshape((2, 8, 16, 8))(x)  # [1, 2, 8, 16, 8]: 4 dims > 1
        x = k.layers.Lambda(lambda t: t * 0.5 + t)(x)  # arithmetic on the 5-D tensor
        return k.layers.Reshape((16, 16, 8))(x)

    return _to_tflite(_tiny_resnet(five_d), int8=True)


@pytest.fixture(scope="module")
def maxpool_relu_int8():
    """A ReLU after a max-pool: the converter fuses it into MAX_POOL_2D."""
    _, k = _keras()
    inp = k.Input((16, 16, 3), batch_size=1)
    x = k.layers.Conv2D(8, 3, padding="same")(inp)
    x = k.layers.MaxPooling2D(2)(x)
    x = k.layers.Activation("relu")(x)
    x = k.layers.GlobalAveragePooling2D()(x)
    return _to_tflite(k.Model(inp, k.layers.Dense(4)(x)), int8=True)


# --------------------------------------------------------------------------- the table


def test_op_table_names_real_tflite_ops_and_known_rules():
    table = load_op_table()
    assert table.cache_bytes == 8 * 1024 * 1024
    assert set(table.ops) <= set(_BUILTIN_NAMES)
    for name in ("CONV_2D", "DEPTHWISE_CONV_2D", "ADD", "FULLY_CONNECTED", "SOFTMAX", "QUANTIZE", "MEAN"):
        assert table.get(name) is not None, name
    for name in ("DEQUANTIZE", "CUMSUM", "CUSTOM", "HARD_SWISH", "BATCH_MATMUL"):
        assert table.get(name) is None, name


def test_op_table_rejects_unknown_rule(tmp_path):
    bad = tmp_path / "ops.toml"
    bad.write_text('[[op]]\ntflite = ["ADD"]\ncoral = "Add"\nrules = ["no_such_rule"]\n')
    with pytest.raises(Exception, match="no_such_rule"):
        load_op_table(bad)


def test_op_table_rule_without_its_limit_is_refused(tmp_path):
    bad = tmp_path / "ops.toml"
    bad.write_text('[[op]]\ntflite = ["RESIZE_BILINEAR"]\ncoral = "ResizeBilinear"\nrules = ["resize_max_upscale"]\n')
    with pytest.raises(Exception, match="needs limits.max_upscale"):
        load_op_table(bad)
    table = load_op_table()
    assert table.get("TILE") is not None
    assert table.get("RESIZE_BILINEAR").limits["max_upscale"] == 8
    assert table.get("UNIDIRECTIONAL_SEQUENCE_LSTM").state_types == ("int16",)


# --------------------------------------------------------------------------- analysis


def test_full_int8_uint8_io_maps_entirely(int8_uint8io):
    graph = parse_tflite(int8_uint8io)
    report = analyze_edgetpu(graph)
    assert report.ok, report.summary()
    assert report.first_unsupported is None
    assert report.ops_mapped == report.ops_total == len(graph.ops)
    assert all(v.placement == "edgetpu" and v.supported for v in report.ops)
    assert [t.dtype for t in graph.input_tensors] == ["uint8"]
    assert [t.dtype for t in graph.output_tensors] == ["uint8"]
    assert not [t for t in graph.tensors if t.dtype == "float32"]
    assert 0 < report.param_bytes < report.cache_bytes and report.fits_cache
    # The parameter estimate is the model's constant data (weights and biases).
    assert report.param_bytes == graph.constant_bytes()
    # And the model really runs as an 8-bit model.
    m = TFLiteModel(int8_uint8io)
    y = m.predict(np.random.default_rng(1).uniform(0, 1, (2, 32, 32, 3)))
    assert y.shape == (2, 10) and np.allclose(y.sum(axis=1), 1.0, atol=0.05)


def test_float_model_is_cut_at_the_first_op(float_model):
    report = analyze_edgetpu(parse_tflite(float_model))
    assert not report.ok
    assert report.ops_mapped == 0
    assert report.first_unsupported["index"] == 0
    assert "float32" in report.first_unsupported["reason"]
    assert "nothing maps" in report.cut
    messages = " ".join(i["message"] for i in report.issues if i["severity"] == "error")
    assert "not fully 8-bit" in messages and "uint8" in messages


def test_int8_model_with_float_island_names_op_and_predicts_cut(cumsum_int8):
    graph = parse_tflite(cumsum_int8)
    names = [op.name for op in graph.ops]
    assert "CUMSUM" in names  # the converter kept it in float despite TFLITE_BUILTINS_INT8
    report = analyze_edgetpu(graph)
    first = report.first_unsupported
    # The first op that cannot map is where the float island starts.
    first_bad = next(i for i, n in enumerate(names) if n in ("DEQUANTIZE", "CUMSUM"))
    assert first["index"] == first_bad and first["op"] == names[first_bad]
    assert report.ops_mapped == first_bad > 0
    cumsum = next(v for v in report.ops if v.op == "CUMSUM")
    assert not cumsum.supported and "CUMSUM is not among" in cumsum.reasons[0]
    assert [v.placement for v in report.ops] == ["edgetpu"] * first_bad + ["cpu"] * (len(names) - first_bad)
    # Supported ops after the cut are still said to run on the CPU.
    after = [v for v in report.ops[first_bad:] if v.supported]
    assert after and all("after the cut" in " ".join(v.notes) for v in after)
    assert f"op #{first_bad} {names[first_bad]}" in report.cut
    assert not report.ok


def test_five_dimensional_tensor_is_unsupported(reshape5d_int8):
    graph = parse_tflite(reshape5d_int8)
    report = analyze_edgetpu(graph)
    first = report.first_unsupported
    assert first is not None and first["op"] == "RESHAPE"
    out = graph.tensor(graph.ops[first["index"]].outputs[0])
    assert out.rank == 5
    assert "3 innermost" in first["reason"]
    assert report.ops_mapped == first["index"]


def test_fused_activation_on_pooling_is_unsupported(maxpool_relu_int8):
    graph = parse_tflite(maxpool_relu_int8)
    pool = next(op for op in graph.ops if op.name == "MAX_POOL_2D")
    report = analyze_edgetpu(graph)
    if pool.options["fused_activation"] == "NONE":
        pytest.skip("this converter version did not fuse the ReLU into MAX_POOL_2D")
    assert report.first_unsupported["index"] == pool.index
    assert "fused RELU" in report.first_unsupported["reason"]


def test_mlperf_reference_int8_maps_but_warns_about_dynamic_batch(shared_data):
    graph = read_graph(shared_data / "mlperf-tiny-resnet8" / "pretrainedResnet_quant.tflite")
    report = analyze_edgetpu(graph)
    assert report.first_unsupported is None and report.ops_mapped == 16
    warnings = [i["message"] for i in report.issues if i["severity"] == "warning"]
    assert any("dynamic" in w for w in warnings)
    assert report.ok  # int8 input/output is allowed (by flag); a warning does not block


@pytest.mark.slow
def test_real_resnet8_edgetpu_model_is_fully_8bit(resnet8_h5, shared_data):
    """The real pretrained ResNet-8 converted the Edge TPU way: every op on the supported list."""
    from PIL import Image

    from edgeresnet.host.converter import ConversionSpec, convert

    tf, k = _keras()
    model = k.models.load_model(resnet8_h5, compile=False)
    inp = k.Input((32, 32, 3), batch_size=1)
    fixed = k.Model(inp, model(inp))
    files = sorted((shared_data / "cifar10" / "train").glob("*/*.jpg"))[::100][:40]
    calib = np.stack([np.asarray(Image.open(f).convert("RGB"), np.float32) for f in files])
    data = convert(lambda: tf.lite.TFLiteConverter.from_keras_model(fixed), ConversionSpec("int8", "uint8"), calib).model
    graph = parse_tflite(data)
    report = analyze_edgetpu(graph)
    assert report.ok, report.summary()
    assert not [t for t in graph.tensors if t.dtype in ("float32", "float16")]
    assert [t.dtype for t in graph.input_tensors + graph.output_tensors] == ["uint8", "uint8"]
    table = load_op_table()
    assert all(table.get(op.name) is not None for op in graph.ops)
    assert report.ops_mapped == len(graph.ops) and report.fits_cache
    assert not report.issues


@pytest.fixture(scope="module")
def float_io_int8():
    """Full-integer int8 body with float32 input and output: QUANTIZE first, DEQUANTIZE last."""
    return _to_tflite(_tiny_resnet(), int8=True, io="float32")


@pytest.fixture(scope="module")
def resize_int8():
    """Bilinear upsampling x2 (maps) and x16 (loses precision on the Edge TPU), then a conv."""
    _, k = _keras()
    k.utils.set_random_seed(2)
    inp = k.Input((4, 4, 3), batch_size=1)
    x = k.layers.Conv2D(4, 1)(inp)
    x = k.layers.UpSampling2D(2, interpolation="bilinear")(x)
    x = k.layers.Conv2D(4, 1)(x)
    x = k.layers.UpSampling2D(16, interpolation="bilinear")(x)
    out = k.layers.Conv2D(2, 1)(x)
    return _to_tflite(k.Model(inp, out), int8=True)


@pytest.fixture(scope="module")
def two_heads_int8():
    """One head ends in ARG_MAX (not on the Edge TPU), the other in a dense layer (in int8 a 1x1 convolution and
    its mean: quantize.rewrite.classifiers_before_pool)."""
    tf, k = _keras()
    k.utils.set_random_seed(3)
    inp = k.Input((16, 16, 3), batch_size=1)
    x = k.layers.Conv2D(8, 3, padding="same", activation="relu")(inp)
    seg = k.layers.Conv2D(4, 1)(x)
    label = k.layers.Lambda(lambda t: tf.math.argmax(t, axis=-1, output_type=tf.int32))(seg)
    y = k.layers.Conv2D(8, 3, padding="same", activation="relu")(x)
    y = k.layers.GlobalAveragePooling2D()(y)
    score = k.layers.Dense(3)(y)
    return _to_tflite(k.Model(inp, [label, score]), int8=True)


def _downstream(graph, start: int) -> set[int]:
    """Indices of op ``start`` and every op that reads its results, directly or not."""
    seen, tensors = {start}, set(graph.ops[start].outputs)
    for op in graph.ops[start + 1:]:
        if tensors & set(op.inputs):
            seen.add(op.index)
            tensors |= set(op.outputs)
    return seen


def test_float_input_is_quantized_on_the_cpu_in_front_and_the_rest_maps(float_io_int8):
    graph = parse_tflite(float_io_int8)
    names = [op.name for op in graph.ops]
    assert names[0] == "QUANTIZE" and names[-1] == "DEQUANTIZE"
    assert [t.dtype for t in graph.input_tensors + graph.output_tensors] == ["float32", "float32"]
    report = analyze_edgetpu(graph)
    # The float -> int8 QUANTIZE cannot map, but it does not stop the compiler.
    assert report.ops[0].placement == "cpu" and report.ops[0].side == "before"
    assert "float32" in report.ops[0].reasons[0]
    assert [v.placement for v in report.ops[1:-1]] == ["edgetpu"] * (len(names) - 2)
    assert report.ops[-1].placement == "cpu" and report.ops[-1].side == "after"
    assert report.ops_mapped == len(names) - 2 and not report.maps_fully and not report.ok
    # Float tensors that only the CPU ops touch are warnings, not errors.
    assert not [i for i in report.issues if i["severity"] == "error"], report.issues
    warnings = " ".join(i["message"] for i in report.issues)
    assert "before the Edge TPU part" in warnings and "after the Edge TPU part" in warnings
    assert "in front of it (#0 QUANTIZE)" in report.summary() and "cut at op" in report.summary()
    assert report.param_bytes == sum(t.const_bytes for t in graph.tensors) > 0


def test_resize_beyond_the_upscale_limit_stays_on_the_cpu(resize_int8):
    graph = parse_tflite(resize_int8)
    resizes = [op for op in graph.ops if op.name == "RESIZE_BILINEAR"]
    assert [graph.tensor(op.outputs[0]).shape[1] for op in resizes] == [8, 128]
    report = analyze_edgetpu(graph)
    x2, x16 = (report.ops[op.index] for op in resizes)
    assert x2.placement == "edgetpu" and x2.supported
    assert x16.placement == "cpu" and not x16.supported and "x16" in x16.reasons[0] and "x8" in x16.reasons[0]
    # Everything after the x16 resize reads it, so it runs on the CPU too.
    assert {v.index for v in report.ops if v.placement == "cpu"} == _downstream(graph, x16.index)
    assert report.first_unsupported["index"] == x16.index


def test_ops_listed_after_the_first_cpu_op_still_map_when_their_inputs_do(two_heads_int8):
    graph = parse_tflite(two_heads_int8)
    argmax = next(op for op in graph.ops if op.name == "ARG_MAX")
    # Put ARG_MAX as early as its input allows, so the other head comes after it in op order,
    # as it does in real segmentation models (the order stays a valid execution order).
    producer = next(op.index for op in graph.ops if argmax.inputs[0] in op.outputs)
    order = [op for op in graph.ops if op.index != argmax.index]
    order.insert(producer + 1, argmax)
    ops = tuple(dataclasses.replace(op, index=k) for k, op in enumerate(order))
    graph = dataclasses.replace(graph, ops=ops)
    report = analyze_edgetpu(graph)
    first_cpu = report.first_unsupported["index"]
    assert graph.ops[first_cpu].name == "ARG_MAX"
    cpu = {v.index for v in report.ops if v.placement == "cpu"}
    assert cpu == _downstream(graph, first_cpu)
    later_mapped = [v for v in report.ops[first_cpu + 1:] if v.placement == "edgetpu"]
    assert {v.op for v in later_mapped} >= {"CONV_2D", "MEAN"}  # the dense head: a 1x1 convolution, then its mean
    # The partition is a single region: no mapped op reads a CPU op's output.
    places = partition(graph, [v.supported for v in report.ops])
    assert sum(p == "edgetpu" for p, _ in places) == report.ops_mapped


# --------------------------------------------------------------------------- the real compiler's output


def _coral_dir() -> Path:
    root = Path(os.environ.get("EDGERESNET_TEST_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
    return root / "coral-edgetpu" / "models"


def _coral_pairs() -> list[str]:
    folder = _coral_dir()
    names = sorted(p.name[: -len("_edgetpu.tflite")] for p in folder.glob("*_edgetpu.tflite")) if folder.is_dir() else []
    return [n for n in names if (folder / f"{n}.tflite").is_file()]


@pytest.fixture(scope="module")
def coral_dir() -> Path:
    folder = _coral_dir()
    if not _coral_pairs():
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true but the Coral compiler pairs are missing from {folder}; set EDGERESNET_TEST_DATA")
        pytest.skip(f"Coral compiler pairs not found in {folder}; set EDGERESNET_TEST_DATA to ../shared/data")
    return folder


@pytest.mark.parametrize("pair", _coral_pairs() or ["(no data)"])
def test_prediction_matches_the_real_compiler(coral_dir, pair):
    """Every pair of the shared ground truth: the same CPU ops, op by op, and the same 'maps fully'."""
    source = read_graph(coral_dir / f"{pair}.tflite")
    compiled = read_graph(coral_dir / f"{pair}_edgetpu.tflite")
    assert sum(op.name == EDGETPU_OP_NAME for op in compiled.ops) == 1
    check = check_against_compiled(source, compiled)
    # The compiled file keeps exactly the ops it did not map, under their original output names.
    assert len(check.compiler_cpu) == len(compiled.ops) - 1
    predicted = Counter(source.ops[i].name for i in check.predicted_cpu)
    actual = Counter(op.name for op in compiled.ops if op.name != EDGETPU_OP_NAME)
    assert predicted == actual
    assert check.predicted_cpu == check.compiler_cpu, [source.ops[i].name for i in check.wrong]
    assert check.predicted_maps_fully == check.compiler_maps_fully
    report = analyze_edgetpu(source)
    assert report.ok == (check.compiler_maps_fully and not [i for i in report.issues if i["severity"] == "error"])
    if check.compiler_maps_fully:
        assert report.ok and not report.issues, report.issues


def test_compiled_models_report_their_payload_and_are_not_gpu_failures(coral_dir, tmp_path, run_cli):
    from edgeresnet.device.inspection import format_inspect, inspect_tflite

    for pair in _coral_pairs():
        path = coral_dir / f"{pair}_edgetpu.tflite"
        graph = read_graph(path)
        report = analyze_edgetpu(graph)
        payload = sum(op.custom_options_bytes for op in graph.ops if op.name == EDGETPU_OP_NAME)
        # The compiler moved the parameters into its custom op: far more than the 0 bytes of buffers.
        assert payload > 0.5 * read_graph(coral_dir / f"{pair}.tflite").constant_bytes()
        assert report.param_bytes == payload + graph.constant_bytes()
        assert report.ok == (len(graph.ops) == 1)
        assert len(compiler_cpu_ops(read_graph(coral_dir / f"{pair}.tflite"), graph)) == len(graph.ops) - 1
        ins = inspect_tflite(path, gpu=False)
        assert not ins.verdicts["cpu"].applies and ins.verdicts["cpu"].ok is None
        assert "Edge TPU delegate" in ins.verdicts["cpu"].summary
        assert not ins.verdicts["gpu"].applies and ins.verdicts["gpu"].ok is None
        text = format_inspect(ins)
        assert f"{payload:,} in the {EDGETPU_OP_NAME} payload" in text and "~0.0 KiB" not in text
        for flags in (["--strict"], ["--strict", "--no-gpu"]):
            result = run_cli(["inspect", str(path), *flags])
            if len(graph.ops) == 1:
                assert result.exit_code == 0, result.output
            else:  # CPU ops left beside the custom op: not entirely on the Edge TPU
                assert result.exit_code == 4 and "edgetpu" in result.output and "gpu" not in result.output.splitlines()[-1]


@pytest.mark.slow
@pytest.mark.parametrize("name,shape", [("resnet18", (32, 32, 3))])
def test_zoo_resnets_map_fully(name, shape):
    """An ImageNet-style ResNet of the zoo (7x7 stem, max pool, projection shortcuts; the CIFAR
    ones are covered by the real ResNet-8): one Edge TPU part, every constant counted once."""
    from edgeresnet.host.models import build_model

    _, k = _keras()
    k.utils.set_random_seed(4)
    model = build_model(name, input_shape=shape, classes=10)
    inp = k.Input(shape, batch_size=1)
    graph = parse_tflite(_to_tflite(k.Model(inp, model(inp)), int8=True, method="minmax"))
    report = analyze_edgetpu(graph)
    assert report.ok and report.maps_fully and not report.issues, report.summary()
    assert report.ops_mapped == len(graph.ops) and "all" in report.cut
    assert report.param_bytes == graph.constant_bytes()


# --------------------------------------------------------------------------- bad input


def test_not_a_tflite_file(tmp_path):
    f = tmp_path / "model.tflite"
    f.write_text("this is a text file, not a model")
    with pytest.raises(TFLiteFileError, match="not a TFLite flatbuffer"):
        read_graph(f)
    with pytest.raises(TFLiteFileError, match="no such file"):
        read_graph(tmp_path / "missing.tflite")


def test_truncated_tflite_is_a_clear_error(int8_uint8io):
    with pytest.raises(TFLiteFileError, match="truncated or corrupt"):
        parse_tflite(int8_uint8io[:200], "cut.tflite")


def _compiled_model_bytes() -> bytes:
    """A model shaped like edgetpu_compiler's output: uint8 in, one edgetpu-custom-op, uint8 out."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as s

    code = s.OperatorCodeT()
    code.builtinCode = code.deprecatedBuiltinCode = 32
    code.customCode = "edgetpu-custom-op"
    code.version = 1
    tensors = []
    for name, shape in (("input", [1, 32, 32, 3]), ("output", [1, 10])):
        t = s.TensorT()
        t.shape, t.type, t.buffer, t.name = shape, 3, 0, name  # 3 = UINT8
        q = s.QuantizationParametersT()
        q.scale, q.zeroPoint = [0.0039], [0]
        t.quantization = q
        tensors.append(t)
    op = s.OperatorT()
    op.opcodeIndex, op.inputs, op.outputs = 0, [0], [1]
    op.customOptions = list(b"\x00" * 16)
    sg = s.SubGraphT()
    sg.tensors, sg.inputs, sg.outputs, sg.operators = tensors, [0], [1], [op]
    m = s.ModelT()
    m.version, m.operatorCodes, m.subgraphs, m.buffers = 3, [code], [sg], [s.BufferT()]
    b = flatbuffers.Builder(256)
    b.Finish(m.Pack(b), file_identifier=b"TFL3")
    return bytes(b.Output())


def test_already_compiled_model_is_recognised():
    data = _compiled_model_bytes()
    assert is_edgetpu_compiled(data)
    graph = parse_tflite(data)
    assert graph.edgetpu_compiled and graph.ops[0].name == "edgetpu-custom-op"
    report = analyze_edgetpu(graph)
    assert report.already_compiled and report.ok
    assert "already compiled" in report.summary()
    assert any("libedgetpu" in n for n in report.notes)
    with pytest.raises(TFLiteFileError, match="already compiled for the Edge TPU"):
        TFLiteModel(data)


def test_corrupt_compiled_bytes_still_named():
    data = _compiled_model_bytes()
    with pytest.raises(TFLiteFileError, match="edgetpu-custom-op"):
        parse_tflite(b"\xff\xff\x00\x00" + data[4:], "broken_edgetpu.tflite")  # root offset out of range


# --------------------------------------------------------------------------- compiler log

# SAMPLE FORMAT, hand-written for these tests: the layout of edgetpu_compiler's
# console output when some ops stay on the CPU (figures invented).
SAMPLE_PARTIAL = """\
Edge TPU Compiler version 16.0.384591198
Started a compilation timeout timer of 180 seconds.

Model compiled successfully in 412 ms.

Input model: m.tflite
Input size: 96.19KiB
Output model: m_edgetpu.tflite
Output size: 180.02KiB
On-chip memory used for caching model parameters: 101.25KiB
On-chip memory remaining for caching model parameters: 7.86MiB
Off-chip memory used for streaming uncached model parameters: 0.00B
Number of Edge TPU subgraphs: 1
Total number of operations: 8
Operation log: m_edgetpu.log

Model successfully compiled but not all operations are supported by the Edge TPU.
Number of operations that will run on Edge TPU: 2
Number of operations that will run on CPU: 6

Operator                       Count      Status

QUANTIZE                       1          Mapped to Edge TPU
CONV_2D                        1          Mapped to Edge TPU
DEQUANTIZE                     1          Operation is working on an unsupported data type
CUMSUM                         1          Operation not supported
QUANTIZE                       2          More than one subgraph is not supported
MEAN                           1          More than one subgraph is not supported
FULLY_CONNECTED                1          More than one subgraph is not supported
Compilation child process completed within timeout period.
Compilation succeeded!
"""

# SAMPLE FORMAT: when every op maps, the console omits the per-device counts and
# the operator table is only in the *_edgetpu.log file.
SAMPLE_ALL_CONSOLE = """\
Edge TPU Compiler version 16.0.384591198
On-chip memory used for caching model parameters: 1.30MiB
On-chip memory remaining for caching model parameters: 6.89MiB
Off-chip memory used for streaming uncached model parameters: 0.00B
Number of Edge TPU subgraphs: 1
Total number of operations: 17
See the operation log file for individual operation details.
Compilation succeeded!
"""
SAMPLE_ALL_LOG = """\
Edge TPU Compiler version 16.0.384591198
Input: r8.tflite
Output: r8_edgetpu.tflite

Operator                       Count      Status

CONV_2D                        9          Mapped to Edge TPU
ADD                            3          Mapped to Edge TPU
QUANTIZE                       2          Mapped to Edge TPU
AVERAGE_POOL_2D                1          Mapped to Edge TPU
FULLY_CONNECTED                1          Mapped to Edge TPU
SOFTMAX                        1          Mapped to Edge TPU
"""


def test_parse_compiler_log_partial_mapping():
    f = parse_compiler_log(SAMPLE_PARTIAL)
    assert f["version"] == "16.0.384591198"
    assert (f["ops_total"], f["ops_on_edgetpu"], f["ops_on_cpu"]) == (8, 2, 6)
    assert f["on_chip_bytes"] == round(101.25 * 1024)
    assert f["on_chip_remaining_bytes"] == round(7.86 * 1024**2)
    assert f["off_chip_bytes"] == 0
    assert f["edgetpu_subgraphs"] == 1
    assert {"op": "CUMSUM", "count": 1, "status": "Operation not supported"} in f["operators"]
    assert sum(r["count"] for r in f["operators"]) == 8


def test_parse_compiler_log_all_mapped_counts_from_table():
    f = parse_compiler_log(SAMPLE_ALL_CONSOLE + "\n" + SAMPLE_ALL_LOG)
    assert (f["ops_total"], f["ops_on_edgetpu"], f["ops_on_cpu"]) == (17, 17, 0)
    assert f["on_chip_bytes"] == round(1.30 * 1024**2)
    assert len(f["operators"]) == 6


# --------------------------------------------------------------------------- running it


def _fake_compiler(bin_dir: Path, body: str) -> Path:
    exe = bin_dir / "edgetpu_compiler"
    exe.write_text(f"#!{sys.executable}\n" + textwrap.dedent(body))
    exe.chmod(exe.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return exe


FAKE_OK = f"""
import sys, pathlib
args = sys.argv[1:]
out = pathlib.Path(args[args.index("-o") + 1])
src = pathlib.Path(args[-1])
data = src.read_bytes() + b"edgetpu-custom-op"
(out / (src.stem + "_edgetpu.tflite")).write_bytes(data)
(out / (src.stem + "_edgetpu.log")).write_text({SAMPLE_ALL_LOG!r})
print({SAMPLE_ALL_CONSOLE!r})
"""


@pytest.fixture
def fake_path(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    monkeypatch.setenv("PATH", str(bin_dir))
    return bin_dir


def test_run_compiler_with_fake_compiler_keeps_model_and_log(tmp_path, fake_path, int8_uint8io):
    _fake_compiler(fake_path, FAKE_OK)
    assert find_compiler() == str(fake_path / "edgetpu_compiler")
    src = tmp_path / "r8.tflite"
    src.write_bytes(int8_uint8io)
    out = tmp_path / "out"
    result = run_compiler(src, out, timeout=60)
    assert result.ok, result.error
    assert result.command[0].endswith("edgetpu_compiler") and result.command[-1] == str(src)
    assert Path(result.output_model) == out / "r8_edgetpu.tflite"
    assert is_edgetpu_compiled(Path(result.output_model).read_bytes())
    assert Path(result.log_path).read_text().startswith("Edge TPU Compiler version")
    assert (result.ops_on_edgetpu, result.ops_on_cpu, result.ops_total) == (17, 0, 17)
    assert result.on_chip_bytes == round(1.30 * 1024**2)
    d = result.to_dict()
    assert "stdout" not in d and d["ok"] is True


def test_analyze_model_attaches_compiler_figures(tmp_path, fake_path, int8_uint8io):
    _fake_compiler(fake_path, FAKE_OK)
    src = tmp_path / "tiny.tflite"
    src.write_bytes(int8_uint8io)
    report = analyze_model(src, out_dir=tmp_path / "out")
    assert report.compiler is not None and report.compiler.ok
    assert report.to_dict()["compiler"]["on_chip_bytes"] == round(1.30 * 1024**2)
    assert COMPILER_HINT not in report.notes


def test_failing_and_hanging_compiler(tmp_path, fake_path, int8_uint8io):
    src = tmp_path / "m.tflite"
    src.write_bytes(int8_uint8io)
    _fake_compiler(fake_path, """
        import sys
        print("Edge TPU Compiler version 16.0")
        print("ERROR: Attempting to use a delegate that only supports static-sized tensors")
        sys.exit(1)
    """)
    failed = run_compiler(src, tmp_path / "out", timeout=60)
    assert not failed.ok and failed.returncode == 1
    assert "static-sized tensors" in failed.error
    _fake_compiler(fake_path, "import time\ntime.sleep(30)\n")
    hung = run_compiler(src, tmp_path / "out2", timeout=1)
    assert not hung.ok and "did not finish within 1 s" in hung.error


def test_without_compiler_says_so_once(tmp_path, fake_path, int8_uint8io):
    assert find_compiler() is None
    src = tmp_path / "m.tflite"
    src.write_bytes(int8_uint8io)
    report = analyze_model(src, out_dir=tmp_path / "out")
    assert report.compiler is None
    assert report.notes.count(COMPILER_HINT) == 1
    assert report.ok  # the prediction still stands
    with pytest.raises(MissingDependencyError, match="not on PATH"):
        run_compiler(src, tmp_path / "out")

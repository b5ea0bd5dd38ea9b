"""A model file from someone else must not run code here: refused before loading, unless trusted.

The malicious models are real: a tf_keras Lambda whose function writes a marker
file, and a SavedModel whose call writes one with tf.io.write_file. Every
refusal is checked by the marker never appearing.
"""

from __future__ import annotations

import json
import zipfile

import h5py
import numpy as np
import pytest

from edgeresnet._util import tf as _tf
from edgeresnet.errors import ModelLoadError, UnsafeModelError
from edgeresnet.host.models import build_model
from edgeresnet.host.models.loading import LoadedModel, load_model
from edgeresnet.host.models.safety import keras_config_findings, risky_op, saved_model_findings

pytestmark = pytest.mark.filterwarnings("ignore:You are saving your model as an HDF5 file")

SHAPE = (8, 8, 3)
CLASSES = 3


def _classifier(keras, middle=None):
    inp = keras.Input(SHAPE)
    x = middle(inp) if middle is not None else inp
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inp, keras.layers.Dense(CLASSES, activation="softmax")(x))


def _evil_lambda(keras, marker):
    # The path is a literal in the function's bytecode, so the saved model carries it.
    fn = eval(f"lambda t: (open({str(marker)!r}, 'w').write('pwned'), t)[1]")  # noqa: S307 - the attack
    return keras.layers.Lambda(fn, output_shape=SHAPE, name="evil_lambda")


@pytest.fixture(scope="module")
def evil(tmp_path_factory):
    """name -> path of each malicious model, and the marker file their code would write."""
    root = tmp_path_factory.mktemp("evil")
    marker = root / "PWNED"
    tf, tfk = _tf.tf(), _tf.tf_keras()
    model = _classifier(tfk, _evil_lambda(tfk, marker))  # building the model runs the Lambda once
    paths = {"evil.h5": root / "evil.h5", "evil.keras": root / "evil.keras"}
    for p in paths.values():
        model.save(str(p))

    class WritesAFile(tf.Module):
        def __init__(self):
            self.w = tf.Variable(tf.ones([3, CLASSES]))

        @tf.function(input_signature=[tf.TensorSpec([None, *SHAPE], tf.float32)])
        def __call__(self, x):
            tf.io.write_file(str(marker), "pwned")
            return tf.nn.softmax(tf.matmul(tf.reduce_mean(x, [1, 2]), self.w))

    module = WritesAFile()
    paths["evil_savedmodel"] = root / "evil_savedmodel"
    tf.saved_model.save(module, str(paths["evil_savedmodel"]), signatures=module.__call__)

    import keras as keras3

    paths["evil_k3.keras"] = root / "evil_k3.keras"
    _classifier(keras3, _evil_lambda(keras3, marker)).save(str(paths["evil_k3.keras"]))
    marker.unlink()
    return paths, marker


@pytest.fixture(scope="module")
def data(tmp_path_factory, write_image_folder):
    root = tmp_path_factory.mktemp("safety_data")
    return {
        "calib": write_image_folder(root / "calib", classes=CLASSES, per_class=4, size=SHAPE[:2], seed=4),
        "eval": write_image_folder(root / "eval", classes=CLASSES, per_class=4, size=SHAPE[:2], seed=5),
    }


# --------------------------------------------------------------------------- refused through the CLI


@pytest.mark.parametrize("name, names", [
    ("evil.h5", "layer 'evil_lambda' (Lambda)"),
    ("evil.keras", "layer 'evil_lambda' (Lambda)"),
    ("evil_savedmodel", "op WriteFile"),
])
@pytest.mark.parametrize("precision", [["--precision", "fp32"], ["--int8", "--calib-samples", "12"]], ids=["fp32", "int8"])
def test_malicious_model_is_refused_by_convert(evil, data, tmp_path, name, names, precision, run_cli):
    paths, marker = evil
    path = paths[name]
    before = sorted((p.relative_to(path.parent), p.stat().st_mtime_ns) for p in path.parent.rglob("*"))
    args = [path, *precision, "--out", tmp_path / "OUT"]
    if "--int8" in precision:
        args += ["--calib", data["calib"]]
    code, out, err = run_cli(["convert", *args])
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: refusing to load {path}: it carries code")
    assert names in lines[0] and "--trust-model-code" in lines[0]
    assert "Traceback" not in err and out == ""
    assert not marker.exists(), "the model's code ran"
    assert not (tmp_path / "OUT").exists()
    assert sorted((p.relative_to(path.parent), p.stat().st_mtime_ns) for p in path.parent.rglob("*")) == before


def test_report_refuses_too(evil, data, tmp_path, run_cli):
    paths, marker = evil
    code, _, err = run_cli(["report", paths["evil.h5"], "--eval", data["eval"], "--calib", data["calib"],
                             "--target", "gpu", "--no-latency", "--out", tmp_path / "R"])
    assert code == 2 and "refusing to load" in err and len(err.strip().splitlines()) == 1
    assert not marker.exists() and not (tmp_path / "R").exists()


@pytest.mark.parametrize("name, found", [
    ("evil.h5", "a Lambda layer with marshalled Python bytecode"),
    ("evil.keras", "a Lambda layer with marshalled Python bytecode"),
    ("evil_k3.keras", "a Lambda layer with marshalled Python bytecode"),
    ("evil_savedmodel", "function __inference___call___"),
])
def test_library_refuses_with_unsafe_model_error(evil, name, found):
    paths, marker = evil
    with pytest.raises(UnsafeModelError) as err:
        load_model(paths[name])
    assert found in str(err.value) and "\n" not in str(err.value)
    assert not marker.exists()


# --------------------------------------------------------------------------- trusted: converts as before


def test_trust_model_code_converts_the_lambda_model_and_the_report_says_so(evil, data, tmp_path, run_cli):
    paths, marker = evil
    out = tmp_path / "OUT"
    code, stdout, err = run_cli(["convert", paths["evil.h5"], "--precision", "fp32", "--eval", data["eval"],
                                  "--trust-model-code", "--out", out])
    assert code == 0, err
    assert marker.exists(), "trusted: the Lambda runs, as it did before the checks"
    marker.unlink()
    report = json.loads((out / "report.json").read_text())
    assert report["model"]["safe_mode"] is False
    # the untrained classifier scores at chance on these images, so its drift is marked as meaningless
    expected = "float_at_chance" if report["float"].get("at_chance") else "ok"
    assert report["variants"][0]["status"] == expected and report["variants"][0]["agreement"] == 100.0
    assert "loaded in safe mode: NO: --trust-model-code" in (out / "report.md").read_text()


def test_trusted_savedmodel_the_converter_refuses_fails_with_its_cause_and_exit_3(evil, data, tmp_path, run_cli):
    """Its WriteFile op has no TFLite builtin: the error names that, not only the converter's "failed while converting"."""
    paths, marker = evil
    path = paths["evil_savedmodel"]
    before = sorted((p.relative_to(path.parent), p.stat().st_mtime_ns) for p in path.parent.rglob("*") if p != marker)
    out = tmp_path / "OUT"
    code, _, err = run_cli(["convert", path, "--precision", "fp32", "--eval", data["eval"],
                            "--trust-model-code", "--out", out])
    marker.unlink(missing_ok=True)  # trusted: its code may run while the float model is evaluated
    assert code == 3, err
    errors = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in err, err
    assert errors[0].startswith("error: evil_savedmodel_cpu_fp32.tflite: convert failed: the TFLite converter failed "
                                "for fp32: 'tf.WriteFile' op is neither a custom op nor a flex op"), errors[0]
    assert "TFLite has no builtin op for WriteFile" in errors[0] and "'main':" not in errors[0]
    assert f"the report is in {out}.failed ({out} was left as it was)" in errors[0]
    assert not out.exists() and (tmp_path / "OUT.failed" / "report.json").is_file()
    assert sorted((p.relative_to(path.parent), p.stat().st_mtime_ns) for p in path.parent.rglob("*")) == before


def test_safe_run_is_recorded_in_the_report(data, tmp_path, run_cli):
    path = tmp_path / "plain.h5"
    _classifier(_tf.tf_keras()).save(str(path))
    out = tmp_path / "OUT"
    code, _, err = run_cli(["convert", path, "--precision", "fp32", "--eval", data["eval"], "--out", out])
    assert code == 0, err
    assert json.loads((out / "report.json").read_text())["model"]["safe_mode"] is True
    assert "loaded in safe mode: yes" in (out / "report.md").read_text()


# --------------------------------------------------------------------------- ordinary models still load


@pytest.fixture(scope="module")
def ordinary(tmp_path_factory):
    """Models with nothing to refuse, in every format: name -> path."""
    root = tmp_path_factory.mktemp("ordinary")
    zoo = build_model("resnet8", input_shape=(16, 16, 3), classes=4)
    paths = {}
    for name in ("zoo.h5", "zoo.keras", "zoo_savedmodel"):
        zoo.save(str(root / name))
        paths[name] = root / name
    tf = _tf.tf()
    paths["zoo_plain_savedmodel"] = root / "zoo_plain_savedmodel"
    serve = tf.function(lambda x: zoo(x, training=False), input_signature=[tf.TensorSpec([None, 16, 16, 3], tf.float32)])
    tf.saved_model.save(zoo, str(paths["zoo_plain_savedmodel"]), signatures=serve)

    import keras

    inp = keras.Input(SHAPE)
    block = keras.Sequential([keras.layers.Conv2D(4, 3, padding="same", kernel_regularizer=keras.regularizers.L2(1e-4)),
                              keras.layers.BatchNormalization()], name="block")
    x = keras.ops.relu(block(inp)) + 1.0  # Keras 3 records these ops as classes of keras.src.ops
    x = keras.layers.GlobalAveragePooling2D()(x)
    k3 = keras.Model(inp, keras.layers.Dense(CLASSES, activation="softmax")(x))
    paths["k3.keras"] = root / "k3.keras"
    k3.save(str(paths["k3.keras"]))
    paths["k3_export"] = root / "k3_export"
    k3.export(str(paths["k3_export"]), verbose=False)
    return paths


@pytest.mark.parametrize("name", ["zoo.h5", "zoo.keras", "zoo_savedmodel", "zoo_plain_savedmodel", "k3.keras", "k3_export"])
def test_ordinary_models_load_without_the_flag(ordinary, name):
    loaded = load_model(ordinary[name])
    assert loaded.safe_mode is True
    x = np.random.default_rng(0).uniform(0, 1, (2, *loaded.input_shape)).astype(np.float32)
    assert np.allclose(loaded.predict(x).sum(1), 1.0, atol=1e-4)


def test_ordinary_savedmodel_has_a_saver_that_is_not_counted(ordinary):
    """Every SavedModel carries SaveV2/RestoreV2 in its saver functions; loading does not run them."""
    from tensorflow.core.protobuf import saved_model_pb2

    sm = saved_model_pb2.SavedModel()
    sm.ParseFromString((ordinary["zoo_plain_savedmodel"] / "saved_model.pb").read_bytes())
    ops = {n.op for f in sm.meta_graphs[0].graph_def.library.function for n in f.node_def}
    assert {"SaveV2", "RestoreV2", "MergeV2Checkpoints"} <= ops
    assert saved_model_findings(ordinary["zoo_plain_savedmodel"]) == []


def test_builtin_reference_model_loads_in_safe_mode():
    from edgeresnet.host import demo

    loaded = load_model(demo.reference_model_path())
    assert loaded.safe_mode is True
    assert loaded.predict(np.zeros((1, *loaded.input_shape), np.float32)).shape == (1, 10)  # traced graph passes


def test_real_mlperf_resnet8_loads_in_safe_mode(resnet8_h5):
    loaded = load_model(resnet8_h5)
    assert (loaded.safe_mode, loaded.num_classes, loaded.params) == (True, 10, 78666)
    assert np.allclose(loaded.predict(np.zeros((2, 32, 32, 3), np.float32)).sum(1), 1.0, atol=1e-4)


# --------------------------------------------------------------------------- what the config walk finds


def _h5_with_config(tmp_path, edit):
    """A real tf_keras .h5 whose model_config is edited as an attacker would."""
    path = tmp_path / "edited.h5"
    keras = _tf.tf_keras()
    inp = keras.Input(SHAPE)
    x = keras.layers.GlobalAveragePooling2D()(_tf.tf().math.multiply(inp, 2.0))  # a TFOpLambda
    keras.Model(inp, keras.layers.Dense(CLASSES)(x)).save(str(path))
    with h5py.File(path, "r+") as f:
        config = json.loads(f.attrs["model_config"])
        edit(config)
        f.attrs["model_config"] = json.dumps(config)
    return path


def _layer(config, class_name):
    return next(layer for layer in config["config"]["layers"] if layer["class_name"] == class_name)


@pytest.mark.parametrize("edit, found", [
    (lambda c: _layer(c, "TFOpLambda")["config"].update(function="io.write_file"),
     "a TFOpLambda calling tf.io.write_file, which is not tensor math"),
    (lambda c: _layer(c, "TFOpLambda")["config"].update(function="compat.v1.py_func"), "tf.compat.v1.py_func"),
    (lambda c: _layer(c, "Dense").update(class_name="Backdoor", module="evil_pkg.layers"),
     "custom class 'Backdoor' from evil_pkg.layers"),
    (lambda c: _layer(c, "Dense")["config"].update(activation={"class_name": "__lambda__", "config": {"code": "x"}}),
     "marshalled Python bytecode (__lambda__)"),
    (lambda c: _layer(c, "Dense")["config"].update(kernel_initializer={
        "module": "keras.config", "class_name": "function", "config": "enable_unsafe_deserialization"}),
     "not a Keras activation"),
], ids=["tf-io-write-file", "py-func", "custom-module", "lambda-marker", "function-reference"])
def test_edited_h5_configs_are_refused_naming_the_layer(tmp_path, edit, found):
    path = _h5_with_config(tmp_path, edit)
    with pytest.raises(UnsafeModelError) as err:
        load_model(path)
    assert found in str(err.value) and "layer '" in str(err.value)


def test_the_unedited_tf_op_model_loads(tmp_path):
    assert load_model(_h5_with_config(tmp_path, lambda c: None)).safe_mode is True


def test_bytecode_is_found_anywhere_and_in_nested_models():
    import marshal
    import base64

    code = base64.b64encode(marshal.dumps((lambda: 0).__code__)).decode()
    inner = {"class_name": "Functional", "config": {"name": "inner", "layers": [
        {"class_name": "Dense", "config": {"name": "head", "units": 2, "note": code}},
    ]}}
    config = {"class_name": "Functional", "config": {"name": "outer", "layers": [
        {"class_name": "InputLayer", "config": {"name": "in"}}, inner,
        {"class_name": "TFSMLayer", "config": {"name": "loader", "filepath": "/elsewhere"}},
    ]}, "compile_config": {"loss": {"class_name": "CustomLoss", "config": {"f": code}}}}
    found = [str(f) for f in keras_config_findings(config, "tf_keras")]
    assert "layer 'inner' (Functional) > layer 'head' (Dense): marshalled Python bytecode in 'note'" in found
    assert any(f.startswith("layer 'loader' (TFSMLayer): a TFSMLayer") for f in found)
    assert "model: marshalled Python bytecode in 'f'" in found  # compile_config: code only, classes unchecked
    assert not any("CustomLoss" in f for f in found)


@pytest.mark.parametrize("op, attrs, risky", [
    ("WriteFile", None, True), ("ReadFile", None, True), ("MatchingFiles", None, True), ("SaveV2", None, True),
    ("RestoreV2", None, True), ("MergeV2Checkpoints", None, True), ("PyFunc", None, True),
    ("EagerPyFunc", None, True), ("TFRecordDatasetV2", None, True), ("CreateSummaryFileWriter", None, True),
    ("InitializeTableFromTextFileV2", None, True), ("CollectiveReduceV2", None, True),
    ("PrintV2", "file:///tmp/x", True), ("PrintV2", "stderr", False), ("PrintV2", "", True),
    ("Conv2D", None, False), ("ReadVariableOp", None, False), ("StatefulPartitionedCall", None, False),
    ("Snapshot", None, False),
])
def test_risky_ops(op, attrs, risky):
    class Attr:  # the attr value of a NodeDef: .s holds bytes
        def __init__(self, s):
            self.s = s.encode()

    assert (risky_op(op, {"output_stream": Attr(attrs)} if attrs else None) is not None) == risky  # "": Flex, attrs unknown


def test_savedmodel_with_python_callback_or_print_to_file_is_refused(tmp_path):
    tf = _tf.tf()

    class Callback(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, *SHAPE], tf.float32)])
        def __call__(self, x):
            tf.print(x[0, 0, 0, 0], output_stream=f"file://{tmp_path / 'log.txt'}")
            return tf.py_function(lambda t: t, [tf.reduce_mean(x, [1, 2])], tf.float32)

    m = Callback()
    tf.saved_model.save(m, str(tmp_path / "sm"), signatures=m.__call__)
    with pytest.raises(UnsafeModelError) as err:
        load_model(tmp_path / "sm")
    assert "op EagerPyFunc (calls back into Python)" in str(err.value)
    assert "op PrintV2 (prints to file://" in str(err.value)
    assert not (tmp_path / "log.txt").exists()


def test_keras_zip_without_config_is_a_load_error(tmp_path):
    p = tmp_path / "odd.keras"
    with zipfile.ZipFile(p, "w") as z:
        z.writestr("metadata.json", json.dumps({"keras_version": "3.15.1"}))
    with pytest.raises(ModelLoadError) as err:
        load_model(p)
    assert "config.json" in str(err.value)


# --------------------------------------------------------------------------- Flex ops in .tflite


def test_inspect_reports_flex_ops_and_does_not_run_a_file_writer(tmp_path, run_cli):
    tf = _tf.tf()
    marker = tmp_path / "PWNED"

    @tf.function(input_signature=[tf.TensorSpec([1, 4], tf.float32)])
    def f(x):
        write = tf.io.write_file(str(marker), tf.strings.as_string(x[0, 0]))
        with tf.control_dependencies([write]):
            return tf.identity(x) * 2.0

    converter = tf.lite.TFLiteConverter.from_concrete_functions([f.get_concrete_function()], f)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS, tf.lite.OpsSet.SELECT_TF_OPS]
    path = tmp_path / "flex.tflite"
    path.write_bytes(converter.convert())

    from edgeresnet.device.inspection import inspect_tflite

    report = inspect_tflite(path)
    assert report.flex["ops"] == ["AsString", "WriteFile"]
    assert list(report.flex["risky"]) == ["WriteFile"]
    assert report.verdicts["cpu"].ok is False and "Flex delegate" in report.verdicts["cpu"].summary
    assert report.interpreters["ai-edge-litert"].status == "not checked"
    code, out, _ = run_cli(["inspect", path])
    assert code == 0 and "flex        AsString, WriteFile" in out and "Flex can run any TensorFlow op" in out
    assert not marker.exists()


def test_inspect_without_flex_ops_says_nothing_about_flex(tmp_path):
    tf = _tf.tf()
    f = tf.function(lambda x: x * 2.0, input_signature=[tf.TensorSpec([1, 4], tf.float32)])
    data = tf.lite.TFLiteConverter.from_concrete_functions([f.get_concrete_function()], f).convert()
    from edgeresnet.device.inspection import inspect_tflite

    assert inspect_tflite(data).flex == {}


def test_tf_keras_savedmodel_with_lambda_is_refused_from_keras_metadata(evil, tmp_path):
    paths, marker = evil
    tfk = _tf.tf_keras()
    model = _classifier(tfk, _evil_lambda(tfk, marker))
    model.save(str(tmp_path / "lambda_savedmodel"))
    marker.unlink()
    with pytest.raises(UnsafeModelError) as err:
        load_model(tmp_path / "lambda_savedmodel")
    assert "layer 'evil_lambda' (Lambda): a Lambda layer with marshalled Python bytecode" in str(err.value)
    assert not marker.exists()


def test_traced_graph_backstop_refuses_file_ops_before_the_first_run(tmp_path):
    """Behind the config check: a safe-mode Keras model whose traced graph writes a file never runs."""
    tf, tfk = _tf.tf(), _tf.tf_keras()
    marker = tmp_path / "PWNED"

    class Writes(tfk.layers.Layer):
        def call(self, x):
            tf.io.write_file(str(marker), "pwned")
            return x

    inp = tfk.Input(SHAPE)
    x = tfk.layers.GlobalAveragePooling2D()(Writes()(inp))
    model = tfk.Model(inp, tfk.layers.Dense(CLASSES)(x))
    loaded = LoadedModel.from_keras(model, "writes")
    loaded.safe_mode = True  # as if it had passed the config check
    with pytest.raises(UnsafeModelError, match="op WriteFile"):
        loaded.predict(np.zeros((1, *SHAPE), np.float32))
    with pytest.raises(UnsafeModelError, match="op WriteFile"):
        loaded.tflite_converter()
    assert not marker.exists()
    loaded.safe_mode = None  # an in-memory model the caller built: not checked, it runs
    loaded.predict(np.zeros((1, *SHAPE), np.float32))
    assert marker.exists()


def test_html_report_says_whether_the_model_was_loaded_in_safe_mode(tmp_path):
    from edgeresnet.report.writers import write_formats

    report = {"model": {"source": "m.h5", "flavor": "tf_keras", "input_shape": [8, 8, 3], "classes": 3,
                        "safe_mode": False}, "preprocessing": {"preset": "raw"}, "float": {"count": 1},
              "evaluation": {"labelled": False}, "variants": []}
    write_formats(report, tmp_path, ("png", "html"))
    assert "loaded in safe mode: NO: --trust-model-code" in (tmp_path / "report.html").read_text()

"""Loading users' models in every format: predictions, TFLite round trips, and one-line errors."""

from __future__ import annotations

import zipfile

import numpy as np
import pytest

from edgeresnet._util import tf as _tf
from edgeresnet.errors import DataError, ModelLoadError
from edgeresnet.host.models.loading import LoadedModel, load_model
from edgeresnet.device.runtime import TFLiteModel

pytestmark = pytest.mark.filterwarnings("ignore:You are saving your model as an HDF5 file")

SHAPE = (16, 16, 3)
CLASSES = 4


def _tiny(lib):
    """Conv-BN-ReLU-pool-dense classifier in ``lib`` (tf_keras or Keras 3), with non-trivial BN statistics."""
    layers = lib.layers
    inp = lib.Input(SHAPE)
    x = layers.Conv2D(8, 3, strides=2, padding="same")(inp)
    x = layers.BatchNormalization()(x)
    x = layers.Activation("relu")(x)
    x = layers.DepthwiseConv2D(3, padding="same")(x)
    x = layers.GlobalAveragePooling2D()(x)
    out = layers.Dense(CLASSES, activation="softmax")(x)
    model = lib.Model(inp, out, name="tiny")
    rng = np.random.default_rng(0)
    model.set_weights([
        rng.uniform(0.5, 1.5, w.shape).astype(np.float32) if "variance" in w.name or "gamma" in w.name
        else rng.normal(0, 0.3, w.shape).astype(np.float32)
        for w in model.weights
    ])
    return model


def _keras3():
    _tf.tf()
    import keras

    return keras


@pytest.fixture(scope="module")
def samples():
    return np.random.default_rng(1).uniform(0, 1, (7,) + SHAPE).astype(np.float32)


@pytest.fixture(scope="module")
def saved(tmp_path_factory, samples):
    """Each format on disk, with the outputs of the model that wrote it: name -> (path, expected)."""
    root = tmp_path_factory.mktemp("models")
    out = {}
    tfk = _tiny(_tf.tf_keras())
    want = tfk(samples, training=False).numpy()
    for name in ("tfk.h5", "tfk.keras", "tfk_savedmodel"):
        tfk.save(str(root / name))
        out[name] = (root / name, want)
    k3 = _tiny(_keras3())
    want3 = np.asarray(k3(samples, training=False))
    for name in ("k3.keras", "k3.h5"):
        k3.save(str(root / name))
        out[name] = (root / name, want3)
    k3.export(str(root / "k3_export"), verbose=False)  # a plain SavedModel, no Keras metadata
    out["k3_export"] = (root / "k3_export", want3)
    return out


@pytest.mark.parametrize(
    "name, flavor",
    [
        ("tfk.h5", "tf_keras"),
        ("tfk.keras", "tf_keras"),
        ("tfk_savedmodel", "tf_keras"),  # tf_keras SavedModel (keras_metadata.pb): loaded as Keras
        ("k3.keras", "keras3"),
        ("k3.h5", "keras3"),
        ("k3_export", "saved_model"),
    ],
)
def test_each_format_loads_predicts_and_converts(saved, samples, name, flavor):
    path, want = saved[name]
    loaded = load_model(path)
    assert loaded.flavor == flavor
    assert loaded.input_shape == SHAPE and loaded.num_classes == CLASSES
    assert loaded.path == path and loaded.name == path.stem
    assert loaded.params == 8 * 27 + 8 + 4 * 8 + 9 * 8 + 8 + 8 * CLASSES + CLASSES

    got = loaded.predict(samples, batch_size=3)
    assert got.shape == (len(samples), CLASSES)
    assert np.allclose(got, want, atol=1e-5)

    tfl = TFLiteModel(loaded.tflite_converter().convert())
    detail = tfl.interpreter.get_input_details()[0]
    assert list(detail["shape"]) == [1, *SHAPE] and list(detail["shape_signature"]) == [1, *SHAPE]
    assert np.allclose(tfl.predict(samples), got, atol=1e-5)


def test_predict_reports_progress_per_batch(saved, samples):
    loaded = load_model(saved["tfk.h5"][0])
    calls = []
    loaded.predict(samples, batch_size=3, progress=lambda done, total: calls.append((done, total)))
    assert calls == [(3, 7), (6, 7), (7, 7)]
    with pytest.raises(DataError, match="resize"):
        loaded.predict(np.zeros((1, 8, 8, 3), np.float32))


@pytest.mark.parametrize("name, ok", [("tfk.h5", True), ("k3.keras", False), ("k3_export", False)])
def test_require_tf_keras(saved, name, ok):
    loaded = load_model(saved[name][0])
    if ok:
        loaded.require_tf_keras("pruning")
        return
    with pytest.raises(ModelLoadError) as err:
        loaded.require_tf_keras("pruning")
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith("pruning needs a tf_keras") and "save it as .h5" in msg


def test_from_keras_wraps_an_in_memory_model(samples):
    model = _tiny(_tf.tf_keras())
    loaded = LoadedModel.from_keras(model, "mine")
    assert (loaded.flavor, loaded.name, loaded.path, loaded.input_shape) == ("tf_keras", "mine", None, SHAPE)
    tfl = TFLiteModel(loaded.tflite_converter().convert())
    assert np.allclose(tfl.predict(samples), model(samples).numpy(), atol=1e-5)


# --------------------------------------------------------------------------- bad inputs


def _truncated_h5(tmp, saved):
    data = saved["tfk.h5"][0].read_bytes()
    p = tmp / "cut.h5"
    p.write_bytes(data[: len(data) // 2])
    return p


def _weights_only(tmp, saved):
    p = tmp / "weights.h5"
    _tiny(_tf.tf_keras()).save_weights(str(p))
    return p


def _zip_without_metadata(tmp, saved):
    p = tmp / "odd.keras"
    with zipfile.ZipFile(p, "w") as z:
        z.writestr("hello.txt", "hi")
    return p


def _saved_tfk(tmp, model, name):
    p = tmp / name
    model.save(str(p))
    return p


def _flat_input(tmp, saved):
    keras = _tf.tf_keras()
    inp = keras.Input((10,))
    return _saved_tfk(tmp, keras.Model(inp, keras.layers.Dense(3)(inp)), "flat.h5")


def _dynamic_size(tmp, saved):
    keras = _tf.tf_keras()
    inp = keras.Input((None, None, 3))
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(4, 3)(inp))
    return _saved_tfk(tmp, keras.Model(inp, keras.layers.Dense(3)(x)), "dynamic.h5")


def _feature_map_output(tmp, saved):
    keras = _tf.tf_keras()
    inp = keras.Input(SHAPE)
    return _saved_tfk(tmp, keras.Model(inp, keras.layers.Conv2D(4, 3)(inp)), "segmenter.h5")


def _two_outputs(tmp, saved):
    keras = _tf.tf_keras()
    inp = keras.Input(SHAPE)
    x = keras.layers.Flatten()(inp)
    return _saved_tfk(tmp, keras.Model(inp, [keras.layers.Dense(2)(x), keras.layers.Dense(3)(x)]), "two.h5")


def _custom_layer(tmp, saved):
    keras = _tf.tf_keras()

    class Twice(keras.layers.Layer):
        def call(self, x):
            return 2.0 * x

    inp = keras.Input(SHAPE)
    x = keras.layers.GlobalAveragePooling2D()(Twice()(inp))
    return _saved_tfk(tmp, keras.Model(inp, keras.layers.Dense(3)(x)), "custom.h5")


def _lambda_layer(tmp, saved):
    keras = _tf.tf_keras()
    inp = keras.Input(SHAPE)
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.Lambda(lambda t: 2.0 * t)(inp))
    return _saved_tfk(tmp, keras.Model(inp, keras.layers.Dense(3)(x)), "lambda.keras")


def _text(name, content="not a model"):
    def make(tmp, saved):
        p = tmp / name
        p.write_text(content)
        return p

    return make


def _folder(tmp, saved):
    p = tmp / "not_a_savedmodel"
    p.mkdir()
    (p / "variables").mkdir()
    return p


@pytest.mark.parametrize(
    "make, hint",
    [
        (lambda tmp, saved: tmp / "missing.h5", "no such file or folder; pass a Keras .h5"),
        (_folder, "without saved_model.pb; pass a SavedModel folder"),
        (_text("notes.keras"), "not a .keras archive"),
        (_zip_without_metadata, "no readable metadata.json"),
        (_text("plain.h5"), "not an HDF5 file"),
        (_truncated_h5, "truncated"),
        (_weights_only, "holds weights only"),
        (_text("model.onnx"), "unknown model format '.onnx'"),
        (_text("model"), "unknown model format '(no extension)'"),
        (_text("model.tflite"), "already a TFLite model"),
        (_flat_input, "needs a fixed 4-D image input"),
        (_dynamic_size, "needs a fixed 4-D image input"),
        (_feature_map_output, "end the model with a Dense layer"),
        (_two_outputs, "single-output classifiers"),
        (_custom_layer, "layer 'twice' (Twice): custom class 'Twice', not a built-in Keras class"),
        (_lambda_layer, "(Lambda): a Lambda layer with marshalled Python bytecode"),
    ],
    ids=["missing", "folder", "text-keras", "zip-no-metadata", "text-h5", "truncated-h5", "weights-only",
         "onnx", "no-extension", "tflite", "flat-input", "dynamic-size", "feature-map", "two-outputs",
         "custom-layer", "lambda-layer"],
)
def test_bad_models_give_one_line_errors(tmp_path, saved, make, hint):
    path = make(tmp_path, saved)
    with pytest.raises(ModelLoadError) as err:
        load_model(path)
    msg = str(err.value)
    assert hint in msg
    assert "\n" not in msg and "Traceback" not in msg and len(msg) < 450
    assert ";" in msg or ":" in msg  # what happened, then what to do


# --------------------------------------------------------------------------- the real MLPerf Tiny ResNet-8


@pytest.mark.slow  # 5-12 s: TF import, a real conversion
def test_mlperf_resnet8_h5_loads_and_matches_the_reference_tflite(resnet8_h5, shared_data):
    from PIL import Image

    loaded = load_model(resnet8_h5)
    assert (loaded.flavor, loaded.input_shape, loaded.num_classes, loaded.params) == ("tf_keras", (32, 32, 3), 10, 78666)
    classes = sorted(p.name for p in (shared_data / "cifar10" / "test").iterdir())
    files = [f for c in classes for f in sorted((shared_data / "cifar10" / "test" / c).glob("*.jpg"))[:10]]
    x = np.stack([np.asarray(Image.open(f).convert("RGB"), np.float32) for f in files])  # RGB 0..255
    labels = np.repeat(np.arange(10), 10)
    probs = loaded.predict(x)
    assert (probs.argmax(1) == labels).mean() >= 0.6  # 75 % on the full 1,000-image test set
    reference = TFLiteModel(resnet8_h5.with_name("pretrainedResnet.tflite"))
    assert np.allclose(reference.predict(x), probs, atol=1e-4)
    ours = TFLiteModel(loaded.tflite_converter().convert())
    assert np.allclose(ours.predict(x), probs, atol=1e-4)

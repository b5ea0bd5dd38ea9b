"""Pruning (edgeresnet.host.training.prune) and counting zeros in the emitted .tflite (edgeresnet.device.sparsity).

Fast tests use a tiny built-in ResNet-8 (16x16x3, 4 classes) and random data;
the slow test prunes the real pretrained MLPerf Tiny ResNet-8 on real CIFAR-10
images and checks zeros, zlib size and top-1 of the int8 .tflite.
"""

from __future__ import annotations

import math
import subprocess
import sys
import zlib

import numpy as np
import pytest

from edgeresnet._util import tf as _tf
from edgeresnet.errors import ConfigError, DataError, PruningError, TFLiteFileError
from edgeresnet.host.training.prune import (
    KERAS3_HINT,
    ONE_SHOT_WARNING,
    PruneConfig,
    PruneResult,
    prune_model,
    validate_train_classes,
)
from edgeresnet.device.sparsity import compressed_size, size_summary, tflite_weight_sparsity

NUM_CLASSES = 4
SHAPE = (16, 16, 3)


def _keras():
    return _tf.tf_keras()


def _tiny_resnet():
    from edgeresnet.host.models import build_model

    return build_model("resnet8", input_shape=SHAPE, classes=NUM_CLASSES)


def _random_data(n=96, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(0, 1, (n,) + SHAPE).astype(np.float32)
    y = rng.integers(0, NUM_CLASSES, n)
    return x, y


def _kernel(model, name):
    return model.get_layer(name).kernel.numpy()


def _int8(model, calib):
    from edgeresnet.host.converter import ConversionSpec, convert

    tf = _tf.tf()
    return convert(lambda: tf.lite.TFLiteConverter.from_keras_model(model), ConversionSpec("int8", "int8"), calib).model


@pytest.fixture(scope="module")
def tiny():
    return _tiny_resnet()


@pytest.fixture(scope="module")
def data():
    return _random_data()


@pytest.fixture(scope="module")
def fine_tuned(tiny, data):
    """The tiny ResNet pruned to 50 % while fine-tuning for 2 short epochs."""
    before = [w.copy() for w in tiny.get_weights()]
    calls = []
    cfg = PruneConfig(0.5, epochs=2, batch_size=32)
    result = prune_model(tiny, cfg, train=data, val=data, progress=lambda d, t: calls.append((d, t)))
    return {"result": result, "calls": calls, "before": before}


# --------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        ({"sparsity": 0}, "got 0"),
        ({"sparsity": 1.0}, "got 1.0"),
        ({"sparsity": -0.2}, "got -0.2"),
        ({"sparsity": 1.5}, "got 1.5"),
        ({"sparsity": float("nan")}, "got nan"),
        ({"sparsity": "0.5"}, "got '0.5'"),
        ({"sparsity": True}, "got True"),
        ({"sparsity": 0.5, "schedule": "linear"}, "'linear'"),
        ({"sparsity": 0.5, "structure": "4:8"}, "'4:8'"),
        ({"sparsity": 0.5, "block_size": (1, 4)}, "only applies to structure 'block'"),
        ({"sparsity": 0.5, "structure": "block", "block_size": (1, 1)}, "(1, 1)"),
        ({"sparsity": 0.5, "structure": "block", "block_size": (0, 4)}, "(0, 4)"),
        ({"sparsity": 0.7, "structure": "2:4"}, "got 0.7"),
        ({"sparsity": 0.5, "structure": "2:4", "stem_sparsity": 0.3}, "got 0.3"),
        ({"sparsity": 0.5, "stem_sparsity": 1.0}, "got 1.0"),
        ({"sparsity": 0.5, "classifier_sparsity": -0.1}, "got -0.1"),
        ({"sparsity": 0.5, "epochs": -1}, "got -1"),
        ({"sparsity": 0.5, "epochs": 1.5}, "got 1.5"),
        ({"sparsity": 0.5, "batch_size": 0}, "got 0"),
        ({"sparsity": 0.5, "learning_rate": 0.0}, "got 0.0"),
        ({"sparsity": 0.5, "policy": "gpu"}, "'gpu'"),
        ({"sparsity": 0.5, "policy": "xnnpack"}, "--prune 0.5"),
        ({"sparsity": 0.8, "policy": "xnnpack", "structure": "block"}, "'block'"),
    ],
)
def test_bad_config_is_rejected_naming_the_value(kwargs, fragment):
    with pytest.raises(ConfigError) as exc:
        PruneConfig(**kwargs)
    assert fragment in str(exc.value)
    assert "\n" not in str(exc.value)


def test_config_defaults_and_round_trip():
    cfg = PruneConfig(0.5)
    assert (cfg.schedule, cfg.structure, cfg.stem_sparsity, cfg.classifier_sparsity) == (
        "polynomial", "unstructured", 0.0, 0.0)
    assert cfg.epochs >= 1 and cfg.batch_size >= 1 and 0 < cfg.learning_rate < 1
    block = PruneConfig(0.6, structure="block")
    assert block.block_size == (1, 4)
    for c in (cfg, block, PruneConfig(0.5, structure="2:4", schedule="constant"), PruneConfig(0.8, policy="xnnpack")):
        assert PruneConfig.from_dict(c.to_dict()) == c
    with pytest.raises(ConfigError, match="unknown pruning settings"):
        PruneConfig.from_dict({"sparsity": 0.5, "sparsty": 0.2})


# --------------------------------------------------------------------------- fine-tuning


def test_fine_tuning_reaches_target_and_leaves_stem_and_classifier_dense(fine_tuned):
    result: PruneResult = fine_tuned["result"]
    by_role = {}
    for layer in result.layers:
        by_role.setdefault(layer.role, []).append(layer)
    assert [layer.name for layer in by_role["stem"]] == ["conv1_conv"]
    assert [layer.name for layer in by_role["classifier"]] == ["predictions"]
    for layer in by_role["stem"] + by_role["classifier"]:
        assert layer.target_sparsity == 0 and layer.structure == "dense" and layer.reason
        assert layer.achieved_sparsity < 0.01
    assert {layer.name for layer in result.left_dense} == {"conv1_conv", "predictions"}
    body = by_role["body"]
    assert len(body) >= 6  # every other convolution, shortcuts included
    for layer in body:
        assert layer.target_sparsity == 0.5
        assert abs(layer.achieved_sparsity - 0.5) <= 0.01, layer
    assert result.fine_tuned and result.train_samples == 96 and result.steps == 2 * 3
    assert result.warnings == ()


def test_fine_tuning_reports_progress_history_and_time(fine_tuned):
    result, calls = fine_tuned["result"], fine_tuned["calls"]
    assert calls[0] == (0, result.steps) and calls[-1] == (result.steps, result.steps)
    assert [d for d, _ in calls] == sorted(d for d, _ in calls)
    assert len(result.history["loss"]) == 2 and all(math.isfinite(v) for v in result.history["loss"])
    assert len(result.history["val_accuracy"]) == 2
    assert result.val_accuracy is not None and 0 <= result.val_accuracy <= 100
    assert result.train_seconds > 0 and result.bn_recalibration_batches == 3
    d = result.to_dict()
    assert d["layers"][0].keys() >= {"name", "kind", "target_sparsity", "achieved_sparsity", "weights"}
    assert {e["name"] for e in d["left_dense"]} == {"conv1_conv", "predictions"}
    assert d["fine_tuned"] is True and d["schedule"] == "polynomial"


def test_strip_removes_wrappers_and_keeps_the_input_model_untouched(fine_tuned, tiny):
    result = fine_tuned["result"]
    model = result.model
    assert not any(getattr(layer, "pruning_obj", None) is not None for layer in model.layers)
    assert not any("prune_low_magnitude" in layer.name for layer in model.layers)
    assert [layer.name for layer in model.layers] == [layer.name for layer in tiny.layers]
    assert model.count_params() == tiny.count_params()
    for a, b in zip(fine_tuned["before"], tiny.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert np.count_nonzero(_kernel(tiny, "conv2_block1_1_conv") == 0) == 0


@pytest.mark.slow
def test_int8_tflite_keeps_the_zeros_and_compresses_better(fine_tuned, tiny, data):
    result = fine_tuned["result"]
    calib = data[0][:32]
    dense_q = _int8(tiny, calib)
    sparse_q = _int8(result.model, calib)
    dense_s = tflite_weight_sparsity(dense_q)
    sparse_s = tflite_weight_sparsity(sparse_q)
    keras_total = sum(layer.weights for layer in result.layers)
    assert sparse_s["total_weights"] == dense_s["total_weights"] == keras_total
    prunable_share = sum(layer.weights for layer in result.pruned_layers) / keras_total
    assert sparse_s["fraction"] >= 0.5 * prunable_share - 0.005
    assert dense_s["fraction"] < 0.1
    assert set(sparse_s["by_op"]) == {"CONV_2D"}  # the int8 classifier is a 1x1 convolution before its pool
    assert all(op["dtype"] == "int8" for op in sparse_s["ops"])
    assert compressed_size(sparse_q) < 0.9 * compressed_size(dense_q)


# --------------------------------------------------------------------------- one-shot and structures


def test_one_shot_prunes_to_target_warns_and_leaves_batchnorm_alone(tiny):
    result = prune_model(tiny, PruneConfig(0.75))
    assert ONE_SHOT_WARNING in result.warnings
    assert not result.fine_tuned and result.steps == 0 and result.history == {}
    for layer in result.pruned_layers:
        assert abs(layer.achieved_sparsity - 0.75) <= 0.01
    bn = "conv2_block1_1_bn"
    np.testing.assert_array_equal(
        result.model.get_layer(bn).moving_mean.numpy(), tiny.get_layer(bn).moving_mean.numpy()
    )
    # magnitude pruning: every kept weight is at least as large as every removed one
    before, after = _kernel(tiny, "conv3_block1_2_conv"), _kernel(result.model, "conv3_block1_2_conv")
    kept = after != 0
    assert np.abs(before[kept]).min() >= np.abs(before[~kept]).max()
    np.testing.assert_array_equal(after[kept], before[kept])


def _groups_of_four_along_cin(kernel):
    cin = kernel.shape[-2]
    assert cin % 4 == 0
    rows = np.moveaxis(kernel, -1, 0).reshape(-1, cin)  # (Cout*H*W, Cin), as TFLite stores it
    return (rows.reshape(rows.shape[0], cin // 4, 4) == 0).sum(axis=-1)


@pytest.mark.parametrize("train", [False, pytest.param(True, marks=pytest.mark.slow)], ids=["one-shot", "fine-tuned"])
def test_two_four_gives_exactly_two_zeros_in_every_group_of_four(tiny, data, train):
    cfg = PruneConfig(0.5, structure="2:4", epochs=1, batch_size=48)
    result = prune_model(tiny, cfg, train=data if train else None)
    assert len(result.pruned_layers) >= 6
    for layer in result.pruned_layers:
        assert layer.structure == "2:4"
        zeros = _groups_of_four_along_cin(_kernel(result.model, layer.name))
        assert np.all(zeros == 2), layer.name


def _mlp(activation=None):
    keras = _keras()
    x = keras.Input((24,))
    h = keras.layers.Dense(32, activation="relu", name="hidden")(x)
    return keras.Model(x, keras.layers.Dense(NUM_CLASSES, activation=activation, name="out")(h))


def test_block_sparsity_zeroes_whole_blocks_of_dense_kernels():
    result = prune_model(_mlp(), PruneConfig(0.5, structure="block"))
    kernel = _kernel(result.model, "hidden")  # (24, 32) in blocks of 1 x 4
    blocks = (kernel.reshape(24, 8, 4) == 0).sum(axis=-1)
    assert set(np.unique(blocks)) <= {0, 4}
    assert abs((blocks == 4).mean() - 0.5) <= 0.02
    assert [layer.name for layer in result.left_dense] == ["out"]
    assert result.layers[0].structure == "block 1x4"


def test_block_sparsity_on_convolutions_is_refused(tiny):
    with pytest.raises(PruningError, match="only works on 2-D Dense kernels.*2:4"):
        prune_model(tiny, PruneConfig(0.5, structure="block"))


def test_logits_model_fine_tunes_with_the_logits_loss():
    model = _mlp(activation=None)
    rng = np.random.default_rng(2)
    x = rng.normal(size=(64, 24)).astype(np.float32)
    y = (x[:, 0] > 0).astype(int) + 2 * (x[:, 1] > 0).astype(int)
    result = prune_model(model, PruneConfig(0.5, epochs=2, batch_size=32, learning_rate=1e-2), train=(x, y))
    loss = result.history["loss"]
    # With from_logits=True the loss starts near log(4) = 1.4; read as probabilities,
    # negative logits would be clipped to 1e-7 and the loss would start above 5.
    assert all(math.isfinite(v) for v in loss) and loss[0] < 3.0


def test_roles_follow_the_graph_not_the_names():
    keras = _keras()
    x = keras.Input(SHAPE)
    h = keras.layers.Conv2D(8, 3, padding="same", name="predictions")(x)  # really the stem
    h = keras.layers.Conv2D(8, 3, padding="same", name="stem")(h)
    h = keras.layers.GlobalAveragePooling2D()(h)
    h = keras.layers.Dense(8, name="conv1_conv")(h)
    out = keras.layers.Dense(NUM_CLASSES, activation="softmax", name="head_dense")(h)
    model = keras.Model(x, out)
    result = prune_model(model, PruneConfig(0.5, stem_sparsity=0.25, classifier_sparsity=0.2))
    roles = {layer.name: (layer.role, layer.target_sparsity) for layer in result.layers}
    assert roles == {
        "predictions": ("stem", 0.25),
        "stem": ("body", 0.5),
        "conv1_conv": ("body", 0.5),
        "head_dense": ("classifier", 0.2),
    }
    assert result.left_dense == ()


def _xnnpack_friendly():
    keras = _keras()
    x = keras.Input(SHAPE)
    h = keras.layers.ZeroPadding2D(1)(x)
    h = keras.layers.Conv2D(8, 3, strides=2, padding="valid", name="stem_conv")(h)
    h = keras.layers.ReLU()(h)
    h = keras.layers.DepthwiseConv2D(3, padding="same", name="dw")(h)
    h = keras.layers.Conv2D(16, 1, name="pw1")(h)
    h = keras.layers.BatchNormalization()(h)
    h = keras.layers.ReLU()(h)
    h = keras.layers.Conv2D(16, 1, name="pw2")(h)
    h = keras.layers.GlobalAveragePooling2D(keepdims=True)(h)
    h = keras.layers.Flatten()(h)
    return keras.Model(x, keras.layers.Dense(NUM_CLASSES, activation="softmax", name="fc")(h))


def test_xnnpack_policy_prunes_only_1x1_convolutions_where_it_applies():
    result = prune_model(_xnnpack_friendly(), PruneConfig(0.8, policy="xnnpack"))
    assert {layer.name for layer in result.pruned_layers} == {"pw1", "pw2"}
    dense = {layer.name: layer.reason for layer in result.left_dense}
    assert set(dense) == {"stem_conv", "fc"} and "1x1" in dense["stem_conv"]
    assert any("smaller, not faster" in w for w in result.warnings)


def test_xnnpack_policy_refuses_a_standard_resnet(tiny):
    with pytest.raises(PruningError) as exc:
        prune_model(tiny, PruneConfig(0.8, policy="xnnpack"))
    assert "1x1" in str(exc.value) and "smaller, not faster" in str(exc.value)


# fine-tuning under a strategy is slow-marked: the quick loop keeps one-shot under it and fine-tuning without it
@pytest.mark.parametrize("train", [False, pytest.param(True, marks=pytest.mark.slow)], ids=["one-shot", "fine-tuned"])
def test_runs_under_the_current_distribution_strategy(tiny, data, train):
    tf = _tf.tf()
    strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
    with strategy.scope():
        result = prune_model(tiny, PruneConfig(0.5, epochs=1, batch_size=48), train=data if train else None)
    assert result.strategy == "MirroredStrategy" and result.replicas == 1
    for layer in result.pruned_layers:
        assert abs(layer.achieved_sparsity - 0.5) <= 0.01
    assert np.isfinite(result.model.predict(data[0][:4], verbose=0)).all()


# --------------------------------------------------------------------------- bad input


class _FakeLoaded:
    def __init__(self, model, flavor):
        self.model, self.flavor, self.name = model, flavor, "user_model"


def _keras3_model():
    keras3 = pytest.importorskip("keras")
    if not keras3.__version__.startswith("3"):
        pytest.skip("Keras 3 is not installed")
    x = keras3.Input((4,))
    return keras3.Model(x, keras3.layers.Dense(2)(x))


@pytest.mark.parametrize(
    "case, error, fragment",
    [
        ("labels beyond outputs", DataError, "labels 0..6 but the model has 4 outputs"),
        ("wrong image shape", DataError, "expects (16, 16, 3)"),
        ("label count mismatch", DataError, "labels of shape (5,)"),
        ("float labels", DataError, "integer class indices"),
        ("no images", DataError, "holds no images"),
        ("epochs 0 with train", ConfigError, "--epochs 0 with --train"),
        ("keras 3 model", PruningError, "tf_keras"),
        ("keras 3 LoadedModel", PruningError, "Keras 3 model"),
        ("saved model", PruningError, "SavedModel"),
        ("not a model", PruningError, "cannot prune a str"),
        ("subclassed model", PruningError, "subclassed"),
        ("config is a float", ConfigError, "PruneConfig"),
    ],
)
def test_bad_input_is_rejected(case, error, fragment, tiny):
    x, y = _random_data(8)
    model, cfg, train = tiny, PruneConfig(0.5, epochs=1), (x, y)
    if case == "labels beyond outputs":
        train = (x, np.arange(8) % 7)
    elif case == "wrong image shape":
        train = (np.zeros((8, 32, 32, 3), np.float32), y)
    elif case == "label count mismatch":
        train = (x, y[:5])
    elif case == "float labels":
        train = (x, y.astype(np.float32))
    elif case == "no images":
        train = (x[:0], y[:0])
    elif case == "epochs 0 with train":
        cfg = PruneConfig(0.5, epochs=0)
    elif case == "keras 3 model":
        model = _keras3_model()
    elif case == "keras 3 LoadedModel":
        model = _FakeLoaded(_keras3_model(), "keras3")
    elif case == "saved model":
        model = _FakeLoaded(object(), "saved_model")
    elif case == "not a model":
        model = "model.h5"
    elif case == "subclassed model":
        keras = _keras()

        class Sub(keras.Model):
            def __init__(self):
                super().__init__()
                self.d = keras.layers.Dense(NUM_CLASSES)

            def call(self, inputs):
                return self.d(inputs)

        model = Sub()
        model(np.zeros((1, 4), np.float32))
    elif case == "config is a float":
        cfg = 0.5
    with pytest.raises(error) as exc:
        prune_model(model, cfg, train=train)
    assert fragment in str(exc.value)
    assert "\n" not in str(exc.value)
    if case == "keras 3 model":
        assert KERAS3_HINT in str(exc.value)


def test_loaded_tf_keras_model_is_accepted(tiny):
    from edgeresnet.host.models import LoadedModel

    result = prune_model(LoadedModel.from_keras(tiny, "tiny"), PruneConfig(0.3))
    assert abs(result.pruned_layers[0].achieved_sparsity - 0.3) <= 0.01


def test_validate_train_classes():
    validate_train_classes(3, ["a", "b", "c"])
    with pytest.raises(DataError, match=r"--train has 2 class folders \(cat, dog\) but the model has 10 outputs"):
        validate_train_classes(10, ["cat", "dog"])


# --------------------------------------------------------------------------- sparsity counting


def _hand_made(tmp_path):
    """A float model with exactly known zeros: conv 3x3x2x4 (72 w, 30 zero), dense 4x3 (12 w, 5 zero)."""
    keras = _keras()
    x = keras.Input((6, 6, 2))
    h = keras.layers.Conv2D(4, 3, name="c")(x)
    h = keras.layers.GlobalAveragePooling2D()(h)
    model = keras.Model(x, keras.layers.Dense(3, name="d")(h))
    rng = np.random.default_rng(3)
    ck = rng.uniform(0.5, 1.0, (3, 3, 2, 4)) * rng.choice([-1, 1], (3, 3, 2, 4))
    ck.reshape(-1)[rng.permutation(72)[:30]] = 0
    dk = rng.uniform(0.5, 1.0, (4, 3))
    dk.reshape(-1)[rng.permutation(12)[:5]] = 0
    model.get_layer("c").set_weights([ck.astype(np.float32), np.zeros(4, np.float32)])
    model.get_layer("d").set_weights([dk.astype(np.float32), np.zeros(3, np.float32)])
    return model


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8", "dynamic"])
def test_tflite_weight_sparsity_counts_exact_zeros(tmp_path, precision):
    from edgeresnet.host.converter import ConversionSpec, convert

    tf = _tf.tf()
    model = _hand_made(tmp_path)
    calib = np.random.default_rng(4).normal(size=(16, 6, 6, 2)).astype(np.float32)
    spec = ConversionSpec(precision, "int8" if precision == "int8" else "float32")
    data = convert(lambda: tf.lite.TFLiteConverter.from_keras_model(model), spec,
                   calib if spec.needs_calibration else None).model
    path = tmp_path / "m.tflite"
    path.write_bytes(data)
    s = tflite_weight_sparsity(path)
    assert s["total_weights"] == 72 + 12
    assert s["zero_weights"] == 30 + 5
    if precision == "int8":  # the int8 methods move the classifier before the pool: a 1x1 convolution, zeros kept
        assert s["by_op"]["CONV_2D"] == {"weights": 72 + 12, "zeros": 30 + 5, "fraction": round(35 / 84, 6)}
        assert "FULLY_CONNECTED" not in s["by_op"]
    else:
        assert s["by_op"]["CONV_2D"] == {"weights": 72, "zeros": 30, "fraction": round(30 / 72, 6)}
        assert s["by_op"]["FULLY_CONNECTED"]["zeros"] == 5
    assert s == tflite_weight_sparsity(data)


def test_compressed_size_and_size_summary():
    rng = np.random.default_rng(5)
    dense = rng.integers(-127, 128, 20000).astype(np.int8)
    sparse = dense.copy()
    sparse[rng.permutation(20000)[:10000]] = 0
    assert compressed_size(dense.tobytes()) == len(zlib.compress(dense.tobytes(), 9))
    assert compressed_size(sparse.tobytes()) < 0.75 * compressed_size(dense.tobytes())
    s = size_summary(sparse.tobytes())
    assert s["bytes"] == 20000 and s["zlib_bytes"] == compressed_size(sparse.tobytes())
    assert s["zlib_ratio"] == round(s["zlib_bytes"] / 20000, 4)


def test_tflite_weight_sparsity_rejects_non_tflite(tmp_path):
    with pytest.raises(TFLiteFileError, match="not a TFLite flatbuffer"):
        tflite_weight_sparsity(b"\x00" * 64)
    with pytest.raises(TFLiteFileError, match="no such file"):
        tflite_weight_sparsity(tmp_path / "missing.tflite")


def test_sparsity_module_works_without_tensorflow(tmp_path, shared_data):
    model = shared_data / "mlperf-tiny-resnet8" / "pretrainedResnet_quant.tflite"
    code = (
        "import sys; from edgeresnet.device.sparsity import tflite_weight_sparsity as f; "
        f"s = f({str(model)!r}); "
        "assert 'tensorflow' not in sys.modules, 'TensorFlow was imported'; "
        "print(s['total_weights'], s['zero_weights'])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    total, zeros = map(int, out.stdout.split()[-2:])
    # the MLPerf Tiny ResNet-8: 9 convolutions and one 64x10 dense layer, ~1 % zeros after int8 rounding
    assert total == 77360 and 0 < zeros < 0.03 * total


# --------------------------------------------------------------------------- the real model


@pytest.mark.slow
def test_real_resnet8_pruned_to_half_keeps_zeros_shrinks_and_keeps_accuracy(resnet8_h5, shared_data):
    """--prune 0.5 --train cifar10/train on the pretrained ResNet-8: >= 45 % zeros in the int8 file, zlib <= 0.75x, top-1 within 2 pts."""
    from edgeresnet.device.images import load_images
    from edgeresnet.host.models import load_model
    from edgeresnet.device.runtime import TFLiteModel

    loaded = load_model(resnet8_h5)
    train = load_images(shared_data / "cifar10" / "train", (32, 32, 3))
    test = load_images(shared_data / "cifar10" / "test", (32, 32, 3))
    x_train, x_test = train.images.astype(np.float32), test.images.astype(np.float32)  # raw 0..255
    float_top1 = 100 * np.mean(np.argmax(loaded.model.predict(x_test, verbose=0), 1) == test.labels)

    result = prune_model(loaded, PruneConfig(0.5), train=(x_train, train.labels))
    calib = x_train[np.random.default_rng(0).permutation(len(x_train))[:200]]
    dense_q, sparse_q = _int8(loaded.model, calib), _int8(result.model, calib)
    zeros = tflite_weight_sparsity(sparse_q)["fraction"]
    ratio = compressed_size(sparse_q) / compressed_size(dense_q)
    int8_top1 = 100 * np.mean(np.argmax(TFLiteModel(sparse_q).predict(x_test), 1) == test.labels)
    print(
        f"\nResNet-8 --prune 0.5: float {float_top1:.1f} % -> pruned int8 {int8_top1:.1f} %, "
        f"int8 zeros {zeros:.3f}, zlib {compressed_size(sparse_q)} / {compressed_size(dense_q)} = {ratio:.3f}, "
        f"fine-tuning {result.train_seconds:.0f} s"
    )
    assert zeros >= 0.45
    assert ratio <= 0.75
    assert int8_top1 >= float_top1 - 2.0
    assert {layer.name for layer in result.left_dense} == {"conv2d", "dense"}

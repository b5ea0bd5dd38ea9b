"""ResNet builders, the registry and MAC counting, checked against tf_keras.applications and real weights."""

from __future__ import annotations

import functools
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgeresnet._util import tf as _tf
from edgeresnet.errors import ConfigError, ModelLoadError
from edgeresnet.host.models import ARCHITECTURES, architecture_table, build_model, count_macs, get_arch
from edgeresnet.host.models import resnet
REPO = Path(__file__).resolve().parents[1]


def _randomize(model, seed=0):
    """Random weights everywhere, BN statistics included (variances kept positive)."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        new = []
        for w in layer.weights:
            shape = tuple(w.shape)
            if "variance" in w.name or "gamma" in w.name:
                new.append(rng.uniform(0.5, 1.5, shape).astype(np.float32))
            elif len(shape) == 1:
                new.append(rng.normal(0.0, 0.1, shape).astype(np.float32))
            else:
                fan_in = int(np.prod(shape[:-1]))
                new.append(rng.normal(0.0, 1.0 / np.sqrt(fan_in), shape).astype(np.float32))
        if new:
            layer.set_weights(new)


def _weighted(model):
    return [(layer.name, [tuple(w.shape) for w in layer.weights]) for layer in model.layers if layer.weights]


# --------------------------------------------------------------------------- structure vs tf_keras.applications


@functools.lru_cache(maxsize=None)
def _default_build(name: str):
    """Each architecture built ONCE, at its default input shape and classes, for the tests that only read it."""
    return ARCHITECTURES[name].build()


@pytest.fixture(scope="module", autouse=True)
def _free_default_builds():
    yield
    _default_build.cache_clear()


@pytest.mark.slow
def test_resnet50_loads_keras_applications_weights_by_name(tmp_path):
    keras = _tf.tf_keras()
    ref = keras.applications.ResNet50(weights=None, input_shape=(64, 64, 3), classes=10, classifier_activation=None)
    _randomize(ref)
    path = tmp_path / "resnet50.h5"  # the classic format, with layer names (as keras.applications' files)
    ref.save_weights(str(path))

    ours = build_model("resnet50", input_shape=(64, 64, 3), classes=10, weights=path, classifier_activation=None)

    assert [layer.name for layer in ours.layers[1:]] == [layer.name for layer in ref.layers[1:]]
    assert _weighted(ours) == _weighted(ref)
    x = np.random.default_rng(1).normal(size=(2, 64, 64, 3)).astype(np.float32)
    want, got = ref(x, training=False).numpy(), ours(x, training=False).numpy()
    assert np.abs(want).max() > 1e-2  # the comparison is not between two zero vectors
    assert np.allclose(got, want, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("name, app", [("resnet101", "ResNet101"), ("resnet152", "ResNet152")])
def test_deep_bottleneck_resnets_have_keras_applications_layers(name, app):
    keras = _tf.tf_keras()
    spec = get_arch(name)
    ref = getattr(keras.applications, app)(weights=None, input_shape=spec.default_input_shape, classes=spec.default_classes)
    ours = _default_build(name)
    assert [layer.name for layer in ours.layers[1:]] == [layer.name for layer in ref.layers[1:]]
    assert _weighted(ours) == _weighted(ref)
    assert ours.count_params() == ref.count_params()


def test_basic_block_layer_names_follow_the_same_scheme():
    names = {layer.name for layer in build_model("resnet18", input_shape=(32, 32, 3), classes=5).layers}
    for expected in ("conv1_pad", "conv1_conv", "conv1_bn", "conv1_relu", "pool1_pad", "pool1_pool",
                     "conv2_block1_1_conv", "conv2_block1_2_bn", "conv2_block2_add", "conv3_block1_0_conv",
                     "conv3_block1_0_bn", "conv5_block2_out", "avg_pool", "predictions"):
        assert expected in names
    assert "conv2_block1_0_conv" not in names  # same shape in and out: identity shortcut
    assert "conv2_block1_3_conv" not in names  # basic blocks have two convolutions


# one CIFAR-style and two ImageNet-style (basic and bottleneck blocks) in the quick loop; the deeper ones only differ in depth
@pytest.mark.parametrize("name", ["resnet8", "resnet20", *(pytest.param(n, marks=pytest.mark.slow) for n in
                                  ("resnet32", "resnet44", "resnet56", "resnet34")), "resnet18", "resnet50"])
def test_depth_is_the_number_of_weight_layers_on_the_main_path(name):
    spec = get_arch(name)
    model = _default_build(name)
    kinds = {"Conv2D", "Dense"}
    main = [layer for layer in model.layers if type(layer).__name__ in kinds and not layer.name.endswith("_0_conv")]
    assert len(main) == spec.depth
    assert model.output_shape == (None, spec.default_classes)
    assert model.input_shape == (None,) + tuple(spec.default_input_shape)


def test_resnet8_is_the_mlperf_tiny_network(resnet8_h5, shared_data):
    """Same layers as the MLPerf Tiny reference: with its trained weights, the same predictions."""
    keras = _tf.tf_keras()
    ref = keras.models.load_model(str(resnet8_h5), compile=False)
    ours = build_model("resnet8")
    assert ours.count_params() == ref.count_params() == 78666

    def split(model):
        convs = [layer for layer in model.layers if type(layer).__name__ == "Conv2D"]
        short = [layer for layer in convs if tuple(layer.kernel_size) == (1, 1)]
        main = [layer for layer in convs if tuple(layer.kernel_size) != (1, 1)]
        bns = [layer for layer in model.layers if type(layer).__name__ == "BatchNormalization"]
        dense = [layer for layer in model.layers if type(layer).__name__ == "Dense"]
        return main + short + bns + dense

    for mine, theirs in zip(split(ours), split(ref), strict=True):
        mine.set_weights(theirs.get_weights())
    from PIL import Image

    files = sorted((shared_data / "cifar10" / "test").glob("*/*.jpg"))[::50]
    x = np.stack([np.asarray(Image.open(f).convert("RGB"), np.float32) for f in files])
    assert np.allclose(ours(x, training=False).numpy(), ref(x, training=False).numpy(), atol=1e-5)


def test_generic_builder_takes_a_custom_stack_and_no_bias():
    keras = _tf.tf_keras()
    stack_fn = resnet.stages_fn(resnet.basic_block, widths=(8, 16), blocks=(1, 1))
    model = resnet.ResNet(stack_fn, stem_fn=resnet.cifar_stem, use_bias=False, model_name="tiny",
                          input_shape=(16, 16, 3), classes=3)
    convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    assert sorted(layer.name for layer in convs) == ["conv1_conv", "conv2_block1_0_conv", "conv2_block1_1_conv", "conv2_block1_2_conv",
                                       "conv3_block1_0_conv", "conv3_block1_1_conv", "conv3_block1_2_conv"]
    assert all(not layer.use_bias for layer in convs)
    y = model(np.ones((2, 16, 16, 3), np.float32)).numpy()
    assert np.allclose(y.sum(axis=1), 1.0, atol=1e-5)  # softmax by default


# --------------------------------------------------------------------------- weights and bad arguments


@pytest.mark.parametrize("suffix, hint", [(".h5", "conv2_block2"), (".weights.h5", "weight arrays")])
def test_weights_from_another_architecture_are_refused(tmp_path, suffix, hint):
    """Classic .h5 loads by name, the newer .weights.h5 by order: both refuse another architecture."""
    path = tmp_path / ("r8" + suffix)
    src = build_model("resnet8")
    _randomize(src)
    src.save_weights(str(path))
    same = build_model("resnet8", weights=path)
    x = np.random.default_rng(2).uniform(0, 255, (2, 32, 32, 3)).astype(np.float32)
    assert np.allclose(same(x).numpy(), src(x).numpy(), atol=1e-6)
    with pytest.raises(ModelLoadError) as err:
        build_model("resnet20", weights=path)
    msg = str(err.value)
    assert "\n" not in msg and hint in msg and "same architecture" in msg


@pytest.mark.parametrize(
    "make, hint",
    [
        (lambda tmp: tmp / "missing.h5", "not found"),
        (lambda tmp: (tmp / "text.h5").write_text("not hdf5") and tmp / "text.h5", "model.save_weights"),
    ],
    ids=["missing", "not-hdf5"],
)
def test_bad_weights_files(tmp_path, make, hint):
    with pytest.raises(ModelLoadError) as err:
        build_model("resnet8", weights=make(tmp_path))
    assert "\n" not in str(err.value) and hint in str(err.value)


@pytest.mark.parametrize(
    "kwargs, hint",
    [
        ({"name": "resnt50"}, "did you mean resnet50?"),
        ({"name": "vgg16"}, "choose one of resnet18"),
        ({"name": "resnet20", "input_shape": (32, 32)}, "(height, width, channels)"),
        ({"name": "resnet20", "input_shape": (32, 32.5, 3)}, "positive ints"),
        ({"name": "resnet20", "input_shape": (0, 32, 3)}, "positive ints"),
        ({"name": "resnet20", "classes": 0}, "classes must be a positive int"),
        ({"name": "resnet20", "classes": 2.0}, "classes must be a positive int"),
        ({"name": "resnet18", "input_shape": (16, 16, 3)}, ">= 32"),
    ],
)
def test_bad_build_arguments_raise_config_error(kwargs, hint):
    with pytest.raises(ConfigError) as err:
        build_model(**kwargs)
    assert hint in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("depth", [7, 21, 0, "20"])
def test_cifar_depth_must_be_6n_plus_2(depth):
    with pytest.raises(ConfigError, match="6n\\+2"):
        resnet.cifar_stages(depth)


@pytest.mark.parametrize("alias, name", [("ResNet-20", "resnet20"), ("resnet20_cifar", "resnet20"),
                                          ("resnet8_mlperf", "resnet8"), (" RESNET152 ", "resnet152")])
def test_aliases(alias, name):
    assert get_arch(alias).name == name


# --------------------------------------------------------------------------- MACs and the table


def test_count_macs_by_hand():
    keras = _tf.tf_keras()
    inner_in = keras.Input((4, 4, 4))
    inner = keras.Model(inner_in, keras.layers.Conv2D(8, 1)(inner_in), name="inner")
    x_in = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, padding="same")(x_in)  # 8*8*4 * 3*3*3 = 6912
    x = keras.layers.DepthwiseConv2D(3, strides=2, padding="same")(x)  # 4*4*4 * 3*3 = 576
    x = inner(x)  # nested model: 4*4*8 * 4 = 512
    x = keras.layers.Reshape((16, 8))(x)
    x = keras.layers.Dense(2)(x)  # applied at 16 positions: 16 * 8*2 = 256
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(5)(x)  # 32*5 = 160
    model = keras.Model(x_in, x)
    assert count_macs(model) == 6912 + 576 + 512 + 256 + 160


@pytest.mark.parametrize(
    "name, shape, low, high",
    [
        # He et al. 2016, Table 1: 1.8 GFLOPs (multiply-adds) for ResNet-18. Keras's ResNet-50 is v1
        # (stride on the 1x1 convolution): 3.86 G, the paper's "3.8 x 10^9"; the often quoted 4.1 G
        # is v1.5 (stride on the 3x3), hence the range.
        ("resnet18", (224, 224, 3), 1.75e9, 1.86e9),
        ("resnet50", (224, 224, 3), 3.8e9, 4.15e9),
        ("resnet20", (32, 32, 3), 40e6, 42e6),  # ~41 M for the CIFAR ResNet-20
    ],
)
def test_count_macs_matches_cited_numbers(name, shape, low, high):
    assert tuple(get_arch(name).default_input_shape) == shape
    model = _default_build(name)
    macs = count_macs(model)
    assert low <= macs <= high
    assert (model.count_params(), macs) == get_arch(name).counts()


@pytest.mark.slow
@pytest.mark.parametrize("name", list(ARCHITECTURES))
def test_analytic_counts_equal_built_models(name):
    spec = ARCHITECTURES[name]
    model = _default_build(name)
    assert spec.counts() == (model.count_params(), count_macs(model))
    odd = (40, 56, 3) if spec.family == "imagenet" else (20, 28, 1)  # odd sizes exercise the rounding
    model = spec.build(input_shape=odd, classes=3)
    assert spec.counts(odd, 3) == (model.count_params(), count_macs(model))


def test_architecture_table_is_fast_and_needs_no_tensorflow():
    code = (
        "import sys, time, json; t = time.perf_counter()\n"
        "from edgeresnet.host.models import architecture_table\n"
        "rows = architecture_table()\n"
        "print(json.dumps([time.perf_counter() - t, 'tensorflow' in sys.modules, rows]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    import json

    seconds, tf_imported, rows = json.loads(out.stdout)
    assert not tf_imported
    assert seconds < 2.0
    assert [r["name"] for r in rows] == list(ARCHITECTURES)
    by_name = {r["name"]: r for r in rows}
    assert by_name["resnet50"]["params"] == 25_636_712  # tf_keras.applications.ResNet50().count_params()
    assert by_name["resnet152"]["params"] == 60_419_944
    assert by_name["resnet8"]["params"] == 78_666  # the MLPerf Tiny reference model
    assert by_name["resnet20"]["input_shape"] == [32, 32, 3] and by_name["resnet20"]["classes"] == 10
    assert set(rows[0]) >= {"name", "family", "depth", "input_shape", "classes", "params", "macs"}


def test_architecture_table_subset_and_unknown_name():
    assert [r["name"] for r in architecture_table(["resnet20_cifar", "ResNet-8"])] == ["resnet20", "resnet8"]
    with pytest.raises(ConfigError, match="did you mean"):
        architecture_table(["resnet21"])


def test_count_macs_sees_through_pruning_wrappers():
    model = build_model("resnet8")
    pruned = _tf.tfmot().sparsity.keras.prune_low_magnitude(model)
    assert count_macs(pruned) == count_macs(model) == get_arch("resnet8").counts()[1]

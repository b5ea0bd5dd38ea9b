"""ResNet builders (tf_keras): one generic :func:`ResNet`, blocks as plain functions.

Layer names are fixed and predictable, ``{stage}_block{i}_{n}_{conv|bn|relu}``,
so weight files load by name and rules can target layers by name:

- the stem is ``conv1_*`` (and ``pool1_*`` for the ImageNet stem), the stages are
  ``conv2`` .. ``conv5`` (ImageNet) or ``conv2`` .. ``conv4`` (CIFAR), the head
  is ``avg_pool`` + ``predictions``;
- in a block, ``_0_conv``/``_0_bn`` is the 1x1 projection shortcut (present only
  when the block changes stride or width), ``_add`` the residual sum and
  ``_out`` the closing ReLU.

ResNet-50/101/152 have exactly the layers and names of
``tf_keras.applications.ResNet50/101/152`` (ResNet v1, stride on the first 1x1
convolution of a bottleneck), so an ImageNet weights ``.h5`` loads into them.
The stage tables below are the single source of truth, also read by the
registry's analytic parameter/MAC counts.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

from edgeresnet._util import tf as _tf
from edgeresnet.errors import ConfigError, ModelLoadError

BN_EPSILON = 1.001e-5  # as tf_keras.applications.resnet, so outputs match bit for bit
CIFAR_BN_EPSILON = 1e-3  # Keras's default, as in the MLPerf Tiny ResNet-8

IMAGENET_WIDTHS = (64, 128, 256, 512)
IMAGENET_STAGES = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}
IMAGENET_BOTTLENECK = {18: False, 34: False, 50: True, 101: True, 152: True}
BOTTLENECK_EXPANSION = 4

CIFAR_WIDTHS = (16, 32, 64)
CIFAR_STEM_WIDTH = 16
IMAGENET_STEM_WIDTH = 64
IMAGENET_MIN_SIDE = 32  # five stride-2 steps; tf_keras.applications asks the same


def cifar_stages(depth: int) -> tuple[int, int, int]:
    """Blocks per stage of a CIFAR ResNet of ``depth`` = 6n + 2 layers (He et al. 2016)."""
    if not isinstance(depth, int) or depth < 8 or (depth - 2) % 6:
        raise ConfigError(f"a CIFAR ResNet depth must be 6n+2 (8, 20, 32, 44, 56, ...), got {depth!r}")
    n = (depth - 2) // 6
    return (n, n, n)


# --------------------------------------------------------------------------- blocks


@dataclass(frozen=True)
class LayerOptions:
    """What every block and stem shares: conv biases, BN epsilon, BN on projection shortcuts."""

    use_bias: bool = True
    bn_epsilon: float = BN_EPSILON
    shortcut_bn: bool = True

    def __post_init__(self):
        if not self.bn_epsilon > 0:
            raise ConfigError(f"bn_epsilon must be positive, got {self.bn_epsilon!r}")


def _bn(x, opts: LayerOptions, name: str):
    return _tf.tf_keras().layers.BatchNormalization(axis=3, epsilon=opts.bn_epsilon, name=name)(x)


def _conv_bn(x, filters, kernel, stride, opts, name, relu=True, padding="same"):
    layers = _tf.tf_keras().layers
    x = layers.Conv2D(filters, kernel, strides=stride, padding=padding, use_bias=opts.use_bias, name=name + "_conv")(x)
    x = _bn(x, opts, name + "_bn")
    if relu:
        x = layers.Activation("relu", name=name + "_relu")(x)
    return x


def _shortcut(x, out_filters, stride, opts, name):
    """Identity when shape is kept, else a 1x1 projection (``_0_conv`` [+ ``_0_bn``])."""
    if stride == 1 and x.shape[-1] == out_filters:
        return x
    layers = _tf.tf_keras().layers
    s = layers.Conv2D(out_filters, 1, strides=stride, use_bias=opts.use_bias, name=name + "_0_conv")(x)
    return _bn(s, opts, name + "_0_bn") if opts.shortcut_bn else s


def basic_block(x, filters, stride=1, opts=LayerOptions(), name="block"):
    """Two 3x3 convolutions (ResNet-18/34 and the CIFAR ResNets); stride on the first."""
    layers = _tf.tf_keras().layers
    shortcut = _shortcut(x, filters, stride, opts, name)
    x = _conv_bn(x, filters, 3, stride, opts, name + "_1")
    x = _conv_bn(x, filters, 3, 1, opts, name + "_2", relu=False)
    x = layers.Add(name=name + "_add")([shortcut, x])
    return layers.Activation("relu", name=name + "_out")(x)


def bottleneck_block(x, filters, stride=1, opts=LayerOptions(), name="block"):
    """1x1 (stride here, as in ResNet v1) -> 3x3 -> 1x1 to ``4 * filters`` channels."""
    layers = _tf.tf_keras().layers
    out = BOTTLENECK_EXPANSION * filters
    shortcut = _shortcut(x, out, stride, opts, name)
    x = _conv_bn(x, filters, 1, stride, opts, name + "_1", padding="valid")
    x = _conv_bn(x, filters, 3, 1, opts, name + "_2")
    x = _conv_bn(x, out, 1, 1, opts, name + "_3", relu=False)
    x = layers.Add(name=name + "_add")([shortcut, x])
    return layers.Activation("relu", name=name + "_out")(x)


def stack(x, block_fn, filters, blocks, stride1=2, opts=LayerOptions(), name="conv"):
    """``blocks`` blocks named ``{name}_block1..``; only the first one changes stride."""
    for i in range(1, blocks + 1):
        x = block_fn(x, filters, stride=stride1 if i == 1 else 1, opts=opts, name=f"{name}_block{i}")
    return x


def stages_fn(block_fn, widths: Sequence[int], blocks: Sequence[int]) -> Callable:
    """A ``stack_fn(x, opts)`` running stages ``conv2, conv3, ...``; the first keeps the stride."""

    def stack_fn(x, opts=LayerOptions()):
        for i, (w, n) in enumerate(zip(widths, blocks)):
            x = stack(x, block_fn, w, n, stride1=1 if i == 0 else 2, opts=opts, name=f"conv{i + 2}")
        return x

    return stack_fn


def imagenet_stem(x, opts=LayerOptions()):
    """7x7/2 convolution with 64 filters, then a 3x3/2 max pool (as tf_keras.applications)."""
    layers = _tf.tf_keras().layers
    x = layers.ZeroPadding2D(padding=3, name="conv1_pad")(x)
    x = _conv_bn(x, IMAGENET_STEM_WIDTH, 7, 2, opts, "conv1", padding="valid")
    x = layers.ZeroPadding2D(padding=1, name="pool1_pad")(x)
    return layers.MaxPooling2D(3, strides=2, name="pool1_pool")(x)


def cifar_stem(x, opts=LayerOptions()):
    """3x3/1 convolution with 16 filters (He et al. 2016, section 4.2)."""
    return _conv_bn(x, CIFAR_STEM_WIDTH, 3, 1, opts, "conv1")


# --------------------------------------------------------------------------- builder


def _check_shape(input_shape, min_side: int) -> tuple[int, int, int]:
    try:
        shape = tuple(operator.index(s) for s in input_shape)
        ok = len(shape) == 3 and all(s > 0 for s in shape)
    except TypeError:
        ok = False
    if not ok:
        raise ConfigError(f"input_shape must be (height, width, channels) of positive ints, got {input_shape!r}")
    if min(shape[:2]) < min_side:
        raise ConfigError(f"input_shape {shape} is too small: this ResNet needs height and width >= {min_side}")
    return shape


def load_weights_h5(model, path) -> None:
    """Load a weights (or full-model) ``.h5`` into ``model``, strictly.

    A classic Keras ``.h5`` (``save_weights('w.h5')``, the ImageNet files of
    ``keras.applications``) loads by layer name: every layer of ``model`` with
    weights must be in the file, with the same shapes. A ``.weights.h5`` (the
    newer format, which has no layer names) loads by layer order and must hold
    exactly as many arrays as the model. Otherwise a one-line ModelLoadError.
    """
    p = Path(path)
    if not p.is_file():
        raise ModelLoadError(f"weights file {p} not found; pass the path of a local .h5 weights file")
    import h5py

    if not h5py.is_hdf5(str(p)):
        raise ModelLoadError(f"{p} is not an HDF5 file; pass a .h5 written by model.save_weights('w.h5')")
    try:
        with h5py.File(str(p), "r") as f:
            group = f["model_weights"] if "model_weights" in f else f
            if "layer_names" in group.attrs:
                by_name = True
                saved = {n.decode() if isinstance(n, bytes) else str(n) for n in group.attrs["layer_names"]}
            elif "layers" in f:
                by_name = False
                arrays = []
                f["layers"].visititems(lambda _, obj: arrays.append(1) if isinstance(obj, h5py.Dataset) else None)
            else:
                raise ModelLoadError(f"{p} holds no Keras weights; pass a .h5 written by model.save_weights('w.h5')")
    except OSError as exc:
        raise ModelLoadError(f"{p} cannot be read ({_first_line(exc)}); the file may be truncated, save it again") from None
    fix = "pass weights saved from the same architecture"
    if by_name:
        missing = [layer.name for layer in model.layers if layer.weights and layer.name not in saved]
        if missing:
            shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
            raise ModelLoadError(f"{p} has no weights for layers {shown} of {model.name}; {fix}")
    elif len(arrays) != len(model.weights):
        raise ModelLoadError(f"{p} holds {len(arrays)} weight arrays but {model.name} has {len(model.weights)}; {fix}")
    try:
        if by_name:
            model.load_weights(str(p), by_name=True, skip_mismatch=False)
        else:
            model.load_weights(str(p))
    except (ValueError, OSError, KeyError) as exc:
        raise ModelLoadError(f"{p} does not fit {model.name} ({_first_line(exc)}); {fix}") from None


def _first_line(exc: BaseException, limit: int = 160) -> str:
    text = str(exc).strip()
    line = text.splitlines()[0] if text else type(exc).__name__
    return line if len(line) <= limit else line[: limit - 3] + "..."


def ResNet(
    stack_fn: Callable,
    stem_fn: Callable = imagenet_stem,
    use_bias: bool = True,
    bn_epsilon: float = BN_EPSILON,
    shortcut_bn: bool = True,
    model_name: str = "resnet",
    input_shape=(224, 224, 3),
    classes: int = 1000,
    weights: Optional[str] = None,
    classifier_activation: Optional[str] = "softmax",
    min_side: int = 1,
):
    """The one ResNet builder: stem, ``stack_fn``, global average pool, dense classifier.

    ``stem_fn(x, opts)`` and ``stack_fn(x, opts)`` add layers, ``opts`` being the
    :class:`LayerOptions` made of ``use_bias``, ``bn_epsilon`` and ``shortcut_bn``;
    ``weights`` is None (random init) or a local ``.h5`` (see :func:`load_weights_h5`).
    """
    keras = _tf.tf_keras()
    shape = _check_shape(input_shape, min_side)
    try:
        ok = not isinstance(classes, bool) and operator.index(classes) >= 1
    except TypeError:
        ok = False
    if not ok:
        raise ConfigError(f"classes must be a positive int, got {classes!r}")
    classes = operator.index(classes)
    opts = LayerOptions(use_bias=bool(use_bias), bn_epsilon=bn_epsilon, shortcut_bn=bool(shortcut_bn))
    inputs = keras.Input(shape=shape)
    x = stem_fn(inputs, opts)
    x = stack_fn(x, opts)
    x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    x = keras.layers.Dense(classes, activation=classifier_activation, name="predictions")(x)
    model = keras.Model(inputs, x, name=model_name)
    if weights is not None:
        load_weights_h5(model, weights)
    return model


def _imagenet(depth, input_shape, classes, weights, classifier_activation):
    block = bottleneck_block if IMAGENET_BOTTLENECK[depth] else basic_block
    return ResNet(
        stages_fn(block, IMAGENET_WIDTHS, IMAGENET_STAGES[depth]),
        stem_fn=imagenet_stem,
        model_name=f"resnet{depth}",
        input_shape=(224, 224, 3) if input_shape is None else input_shape,
        classes=classes,
        weights=weights,
        classifier_activation=classifier_activation,
        min_side=IMAGENET_MIN_SIDE,
    )


def cifar_resnet(depth, input_shape=None, classes=10, weights=None, classifier_activation="softmax",
                 shortcut_bn=True, model_name=None):
    """A CIFAR ResNet of depth 6n+2: 16-filter 3x3 stem, stages of n basic blocks (16/32/64)."""
    return ResNet(
        stages_fn(basic_block, CIFAR_WIDTHS, cifar_stages(depth)),
        stem_fn=cifar_stem,
        bn_epsilon=CIFAR_BN_EPSILON,
        shortcut_bn=shortcut_bn,
        model_name=model_name or f"resnet{depth}",
        input_shape=(32, 32, 3) if input_shape is None else input_shape,
        classes=classes,
        weights=weights,
        classifier_activation=classifier_activation,
    )


# --------------------------------------------------------------------------- variants


def resnet18(input_shape=None, classes=1000, weights=None, classifier_activation="softmax"):
    """ResNet-18: ImageNet stem, basic blocks 2-2-2-2."""
    return _imagenet(18, input_shape, classes, weights, classifier_activation)


def resnet34(input_shape=None, classes=1000, weights=None, classifier_activation="softmax"):
    """ResNet-34: ImageNet stem, basic blocks 3-4-6-3."""
    return _imagenet(34, input_shape, classes, weights, classifier_activation)


def resnet50(input_shape=None, classes=1000, weights=None, classifier_activation="softmax"):
    """ResNet-50: bottleneck blocks 3-4-6-3; same layers as tf_keras.applications.ResNet50."""
    return _imagenet(50, input_shape, classes, weights, classifier_activation)


def resnet101(input_shape=None, classes=1000, weights=None, classifier_activation="softmax"):
    """ResNet-101: bottleneck blocks 3-4-23-3; same layers as tf_keras.applications.ResNet101."""
    return _imagenet(101, input_shape, classes, weights, classifier_activation)


def resnet152(input_shape=None, classes=1000, weights=None, classifier_activation="softmax"):
    """ResNet-152: bottleneck blocks 3-8-36-3; same layers as tf_keras.applications.ResNet152."""
    return _imagenet(152, input_shape, classes, weights, classifier_activation)


def resnet8(input_shape=None, classes=10, weights=None, classifier_activation="softmax"):
    """ResNet-8 as in MLPerf Tiny: one basic block per stage, projection shortcuts without BN."""
    return cifar_resnet(8, input_shape, classes, weights, classifier_activation, shortcut_bn=False)


def resnet20(input_shape=None, classes=10, weights=None, classifier_activation="softmax"):
    """CIFAR ResNet-20 (n=3)."""
    return cifar_resnet(20, input_shape, classes, weights, classifier_activation)


def resnet32(input_shape=None, classes=10, weights=None, classifier_activation="softmax"):
    """CIFAR ResNet-32 (n=5)."""
    return cifar_resnet(32, input_shape, classes, weights, classifier_activation)


def resnet44(input_shape=None, classes=10, weights=None, classifier_activation="softmax"):
    """CIFAR ResNet-44 (n=7)."""
    return cifar_resnet(44, input_shape, classes, weights, classifier_activation)


def resnet56(input_shape=None, classes=10, weights=None, classifier_activation="softmax"):
    """CIFAR ResNet-56 (n=9)."""
    return cifar_resnet(56, input_shape, classes, weights, classifier_activation)

"""The table of built-in ResNets, building by name, and counting MACs.

:data:`ARCHITECTURES` is the one table the CLI (``edgeresnet models``), the
converter and the tests read. Parameters and MACs in :func:`architecture_table`
are computed from the stage tables in :mod:`.resnet` without TensorFlow, so the
table answers at once; a test checks them against the built models.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass, field
from typing import Callable, Iterable, Optional

from edgeresnet.errors import ConfigError
from edgeresnet.host.models import resnet

FAMILIES = ("imagenet", "cifar")
BLOCKS = ("basic", "bottleneck")


@dataclass(frozen=True)
class ArchSpec:
    """One built-in architecture; ``stages``/``widths`` are blocks and base filters per stage."""

    name: str
    family: str
    block: str
    depth: int
    default_input_shape: tuple
    default_classes: int
    builder: Callable = field(repr=False)
    stages: tuple = ()
    widths: tuple = ()
    shortcut_bn: bool = True
    aliases: tuple = ()

    def __post_init__(self):
        if self.family not in FAMILIES:
            raise ConfigError(f"family must be one of {', '.join(FAMILIES)}, got {self.family!r}")
        if self.block not in BLOCKS:
            raise ConfigError(f"block must be one of {', '.join(BLOCKS)}, got {self.block!r}")
        if len(self.stages) != len(self.widths) or not self.stages:
            raise ConfigError(f"{self.name}: stages {self.stages} and widths {self.widths} must pair up")

    def build(self, input_shape=None, classes=None, weights=None, **kwargs):
        """Build the tf_keras model (defaults: this architecture's input shape and classes)."""
        return self.builder(
            input_shape=self.default_input_shape if input_shape is None else input_shape,
            classes=self.default_classes if classes is None else classes,
            weights=weights,
            **kwargs,
        )

    def counts(self, input_shape=None, classes=None) -> tuple[int, int]:
        """(parameters, MACs) computed from the stage table, equal to the built model's."""
        return _analytic_counts(self, input_shape or self.default_input_shape, classes or self.default_classes)


def _imagenet_spec(depth: int, builder) -> ArchSpec:
    return ArchSpec(
        name=f"resnet{depth}", family="imagenet",
        block="bottleneck" if resnet.IMAGENET_BOTTLENECK[depth] else "basic", depth=depth,
        default_input_shape=(224, 224, 3), default_classes=1000, builder=builder,
        stages=resnet.IMAGENET_STAGES[depth], widths=resnet.IMAGENET_WIDTHS,
    )


def _cifar_spec(depth: int, builder, shortcut_bn=True, aliases=()) -> ArchSpec:
    return ArchSpec(
        name=f"resnet{depth}", family="cifar", block="basic", depth=depth,
        default_input_shape=(32, 32, 3), default_classes=10, builder=builder,
        stages=resnet.cifar_stages(depth), widths=resnet.CIFAR_WIDTHS, shortcut_bn=shortcut_bn,
        aliases=aliases or (f"resnet{depth}_cifar",),
    )


ARCHITECTURES: dict[str, ArchSpec] = {
    s.name: s
    for s in (
        _imagenet_spec(18, resnet.resnet18),
        _imagenet_spec(34, resnet.resnet34),
        _imagenet_spec(50, resnet.resnet50),
        _imagenet_spec(101, resnet.resnet101),
        _imagenet_spec(152, resnet.resnet152),
        _cifar_spec(8, resnet.resnet8, shortcut_bn=False, aliases=("resnet8_cifar", "resnet8_mlperf")),
        _cifar_spec(20, resnet.resnet20),
        _cifar_spec(32, resnet.resnet32),
        _cifar_spec(44, resnet.resnet44),
        _cifar_spec(56, resnet.resnet56),
    )
}

ALIASES: dict[str, str] = {a: s.name for s in ARCHITECTURES.values() for a in s.aliases}


def get_arch(name: str) -> ArchSpec:
    """The spec for ``name`` (case, '-' and '_cifar' style aliases accepted)."""
    key = str(name).strip().lower().replace("-", "")
    key = ALIASES.get(key, key)
    if key in ARCHITECTURES:
        return ARCHITECTURES[key]
    known = list(ARCHITECTURES) + list(ALIASES)
    close = difflib.get_close_matches(key, known, n=1)
    hint = f"did you mean {close[0]}? " if close else ""
    raise ConfigError(
        f"unknown architecture {name!r}; {hint}choose one of {', '.join(ARCHITECTURES)} (see: edgeresnet models)"
    )


def build_model(name: str, input_shape=None, classes: Optional[int] = None, weights=None, **kwargs):
    """Build a built-in ResNet by name as a tf_keras model; ``weights``: None or a local .h5."""
    return get_arch(name).build(input_shape=input_shape, classes=classes, weights=weights, **kwargs)


# --------------------------------------------------------------------------- counting


def _shapes(layer, attr: str) -> list:
    """Shapes of ``layer.output``/``.input`` for every call of the layer."""
    try:
        return [tuple(getattr(layer, attr).shape)]
    except (AttributeError, ValueError, RuntimeError):
        pass
    out = []
    for node in getattr(layer, "_inbound_nodes", []):
        tensors = getattr(node, attr + "s", None)
        if tensors is None:
            tensors = getattr(node, attr + "_tensors", None)
        if isinstance(tensors, (list, tuple)):
            tensors = tensors[0]
        if tensors is not None:
            out.append(tuple(tensors.shape))
    return out


def _positions(shape) -> int:
    """Product of the dimensions between batch and channels (1 for a 2-D tensor)."""
    dims = shape[1:-1]
    if any(d is None for d in dims):
        raise ConfigError(f"cannot count MACs with an unknown spatial size {shape}; build the model with a fixed input shape")
    return math.prod(int(d) for d in dims)


def _size(var) -> int:
    return math.prod(int(d) for d in var.shape)


def _layer_macs(layer) -> int:
    inner = getattr(layer, "layer", None)  # wrappers (e.g. tfmot PruneLowMagnitude) keep the real layer here
    kind_layer = inner if inner is not None and not hasattr(layer, "kernel") else layer
    kind = type(kind_layer).__name__
    if kind in ("Conv1D", "Conv2D", "Conv3D", "Dense"):
        return sum(_positions(s) * _size(kind_layer.kernel) for s in _shapes(layer, "output"))
    if kind == "DepthwiseConv2D":
        return sum(_positions(s) * _size(kind_layer.depthwise_kernel) for s in _shapes(layer, "output"))
    if kind == "SeparableConv2D":
        per = _size(kind_layer.depthwise_kernel) + _size(kind_layer.pointwise_kernel)
        return sum(_positions(s) * per for s in _shapes(layer, "output"))
    if kind == "Conv2DTranspose":
        return sum(_positions(s) * _size(kind_layer.kernel) for s in _shapes(layer, "input"))
    return 0


def count_macs(model) -> int:
    """Multiply-accumulates of one sample through Conv, DepthwiseConv, SeparableConv and Dense layers.

    Counted from each layer's output shape and kernel size, recursing into nested
    models; biases, batch norm, pooling and activations are not counted.
    """
    total = 0
    for layer in model.layers:
        if hasattr(layer, "layers") and not hasattr(layer, "kernel"):
            total += count_macs(layer)
        else:
            total += _layer_macs(layer)
    return total


def _analytic_counts(spec: ArchSpec, input_shape, classes) -> tuple[int, int]:
    h, w, c = (int(s) for s in input_shape)
    params = macs = 0

    def conv(cin, cout, k, stride, bn=True):
        nonlocal params, macs, h, w
        h, w = -(-h // stride), -(-w // stride)  # 'same' or 1x1 'valid': ceil(size / stride)
        params += k * k * cin * cout + cout + (4 * cout if bn else 0)
        macs += h * w * k * k * cin * cout

    def shortcut(cin, cout, stride):
        nonlocal h, w
        if stride != 1 or cin != cout:
            saved = (h, w)
            conv(cin, cout, 1, stride, bn=spec.shortcut_bn)
            h, w = saved

    if spec.family == "imagenet":
        conv(c, resnet.IMAGENET_STEM_WIDTH, 7, 2)
        h, w = -(-h // 2), -(-w // 2)  # 3x3/2 max pool after 1-pixel padding
        c = resnet.IMAGENET_STEM_WIDTH
    else:
        conv(c, resnet.CIFAR_STEM_WIDTH, 3, 1)
        c = resnet.CIFAR_STEM_WIDTH
    for i, (width, blocks) in enumerate(zip(spec.widths, spec.stages)):
        for b in range(blocks):
            stride = 2 if (i > 0 and b == 0) else 1
            if spec.block == "basic":
                shortcut(c, width, stride)
                conv(c, width, 3, stride)
                conv(width, width, 3, 1)
                c = width
            else:
                out = resnet.BOTTLENECK_EXPANSION * width
                shortcut(c, out, stride)
                conv(c, width, 1, stride)
                conv(width, width, 3, 1)
                conv(width, out, 1, 1)
                c = out
    params += c * classes + classes
    macs += c * classes
    return params, macs


def architecture_table(names: Optional[Iterable[str]] = None) -> list[dict]:
    """One row per architecture: name, family, block, depth, input_shape, classes, params, macs.

    Computed without building (no TensorFlow import), at the default input shape
    and number of classes.
    """
    specs = list(ARCHITECTURES.values()) if names is None else [get_arch(n) for n in names]
    rows = []
    for s in specs:
        params, macs = s.counts()
        rows.append({
            "name": s.name, "family": s.family, "block": s.block, "depth": s.depth,
            "input_shape": list(s.default_input_shape), "classes": s.default_classes,
            "params": params, "macs": macs,
        })
    return rows

"""Which layers pruning touches, and how much: each Conv2D/Dense layer's role and its target sparsity.

Two layers are found by their place in the graph, not by name: the *stem* (a
Conv2D with no other Conv2D/Dense layer between it and the input) and the
*classifier* (a Dense layer with no Conv2D/Dense layer after it). They get
``stem_sparsity`` and ``classifier_sparsity`` (0 by default: they are small and
sensitive); every other Conv2D/Dense layer gets ``sparsity``. Depthwise and
transposed convolutions are never pruned; frozen layers are left as they are.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional

import numpy as np

from edgeresnet.errors import PruningError

if TYPE_CHECKING:
    from edgeresnet.host.training.prune import PruneConfig


def _kind(layer, keras) -> Optional[str]:
    if isinstance(layer, keras.layers.Conv2DTranspose):
        return None
    if isinstance(layer, keras.layers.Conv2D):
        return "conv"
    if isinstance(layer, keras.layers.Dense):
        return "dense"
    return None


def _parents(layer) -> list:
    out = []
    for node in getattr(layer, "_inbound_nodes", ()):
        inbound = node.inbound_layers
        out.extend(inbound if isinstance(inbound, (list, tuple)) else [inbound])
    return out


def _roles(model, keras) -> dict:
    """name -> "stem" | "classifier" | "body" for Conv2D/Dense layers, by graph position."""
    layers = list(model.layers)
    members = {id(layer) for layer in layers}
    weighted = {
        id(layer)
        for layer in layers
        if _kind(layer, keras) is not None or isinstance(layer, (keras.layers.DepthwiseConv2D, keras.layers.Conv2DTranspose))
    }
    parents = {id(layer): [p for p in _parents(layer) if id(p) in members] for layer in layers}
    children = {id(layer): [] for layer in layers}
    for layer in layers:
        for p in parents[id(layer)]:
            children[id(p)].append(layer)

    # model.layers is in topological order for functional and Sequential models
    upstream = {}
    for layer in layers:
        upstream[id(layer)] = any(id(p) in weighted or upstream[id(p)] for p in parents[id(layer)])
    downstream = {}
    for layer in reversed(layers):
        downstream[id(layer)] = any(id(c) in weighted or downstream[id(c)] for c in children[id(layer)])

    roles = {}
    for layer in layers:
        kind = _kind(layer, keras)
        if kind is None:
            continue
        if kind == "conv" and not upstream[id(layer)]:
            roles[layer.name] = "stem"
        elif kind == "dense" and not downstream[id(layer)]:
            roles[layer.name] = "classifier"
        else:
            roles[layer.name] = "body"
    return roles


def layer_roles(model, keras) -> dict:
    """name -> "stem" | "classifier" | "body" for every Conv2D/Dense layer of ``model``, by graph position."""
    return _roles(model, keras)


@dataclass(frozen=True)
class _Plan:
    name: str
    kind: str
    role: str
    target: float
    weights: int
    reason: Optional[str]


def _xnnpack_policy(model, config: PruneConfig, mot):
    """tfmot's XNNPACK pruning policy with the xnnpack policy (PruningError when ``model`` does not fit it), else None."""
    if config.policy != "xnnpack":
        return None
    policy = mot.sparsity.keras.PruneForLatencyOnXNNPack()
    try:
        policy.ensure_model_supports_pruning(model)
    except ValueError as exc:
        raise PruningError(
            f"the xnnpack pruning policy does not apply to {model.name}: XNNPACK's sparse kernels only cover "
            "1x1 convolutions in a graph that starts with ZeroPadding2D + a 3x3 stride-2 convolution on 3 "
            "channels and ends in GlobalAveragePooling2D(keepdims=True) (MobileNet-like); a standard ResNet with "
            f"3x3 convolutions gets smaller, not faster. tfmot: {str(exc).strip()}. Drop the xnnpack policy to "
            "prune for size"
        ) from None
    return policy


def plan_layers(model, config: PruneConfig, keras, mot) -> list:
    """One plan per Conv2D/Dense layer of ``model``: its role, the sparsity it gets and, when left dense, why.

    :class:`PruningError` when no layer is left to prune, when ``config``'s xnnpack policy does not apply to
    the model, or when block sparsity meets a convolution kernel.
    """
    roles = _roles(model, keras)
    policy = _xnnpack_policy(model, config, mot)
    overrides = dict(config.layer_sparsity)
    unknown = sorted(set(overrides) - set(roles))
    if unknown:
        raise PruningError(
            f"per-layer sparsity names {', '.join(unknown)}, which {model.name} has no Conv2D/Dense layer of; "
            f"its prunable layers are {', '.join(roles)}"
        )
    plans = []
    for layer in model.layers:
        kind = _kind(layer, keras)
        if kind is None:
            continue
        role = roles[layer.name]
        n = int(np.prod(layer.kernel.shape))
        reason = None
        if policy is not None and not policy.allow_pruning(layer):
            target, reason = 0.0, "xnnpack policy: only 1x1 convolutions run sparse in XNNPACK"
        elif not layer.trainable:
            target, reason = 0.0, "frozen (trainable=False): left as it is; make it trainable in the model to prune it"
        elif role == "stem":
            target = config.stem_sparsity
            if target == 0:
                reason = "stem convolution (first from the input): few weights, sensitive; set stem_sparsity to prune it"
        elif role == "classifier":
            target = config.classifier_sparsity
            if target == 0:
                reason = "classifier (last Dense): few weights, sensitive; set classifier_sparsity to prune it"
        else:
            target = config.sparsity
        blocked = (policy is not None and not policy.allow_pruning(layer)) or not layer.trainable
        if layer.name in overrides and not blocked:
            target = overrides[layer.name]
            reason = None if target > 0 else "per-layer sparsity 0: left dense"
        plans.append(_Plan(layer.name, kind, role, float(target), n, reason))
    if not any(p.target > 0 for p in plans):
        raise PruningError(
            f"{model.name} has no Conv2D or Dense layer left to prune ("
            + (", ".join(f"{p.name}: {p.reason}" for p in plans) or "none found")
            + ")"
        )
    if config.structure == "block":
        bad = [p.name for p in plans if p.target > 0 and len(model.get_layer(p.name).kernel.shape) != 2]
        if bad:
            raise PruningError(
                f"block sparsity (tfmot) only works on 2-D Dense kernels, but {len(bad)} layers to prune have 4-D "
                f"convolution kernels ({', '.join(bad[:4])}{', ...' if len(bad) > 4 else ''}); use structure "
                "'2:4' (works on convolutions) or 'unstructured'"
            )
    return plans

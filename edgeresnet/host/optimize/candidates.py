"""What the search knows about each layer, and the candidates it builds from that knowledge.

A :class:`LayerInfo` holds one Conv2D/Dense layer's weight count, MACs and *pruning sensitivity*: the
top-1 points the float model loses on held-out --train images when that layer alone loses 75 % of its
weights (smallest magnitudes first). A :class:`Candidate` is one model to build and measure: which
layers are pruned how much (nothing for the plain int8 model).

:func:`allocate` spreads a sparsity *level* over the layers. ``skew`` 0 is the uniform variant of
``report --sparsity`` (every body layer at the level, stem and classifier dense); ``skew`` > 0 gives
layer *i* the sparsity ``min(cap, lam * (w_i / (d_i + floor)) ** skew)``, with ``w_i`` its weights,
``d_i`` its sensitivity and ``lam`` chosen so the model loses as many weights as the uniform variant at
the same level: big, insensitive layers are pruned harder, small or sensitive ones less.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, replace
from typing import Optional

import numpy as np

SENSITIVITY_PROBE = 0.75  # sparsity each layer is pruned to alone when its sensitivity is measured
SENSITIVITY_FLOOR = 0.5  # top-1 points: below this a layer counts as equally insensitive (measurement noise)
MAX_LAYER_SPARSITY = 0.95


@dataclass(frozen=True)
class LayerInfo:
    name: str
    role: str  # stem, body or classifier (edgeresnet.host.training.prune_plan)
    weights: int
    macs: int
    sensitivity: float  # top-1 points lost when pruned alone to SENSITIVITY_PROBE

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Candidate:
    """One model of the search: a family (int8, uniform, allocated, clustered, mixed, input), its level and
    per-layer settings."""

    family: str
    level: float = 0.0  # share of the body's weights pruned (the uniform sparsity with as many zeros)
    skew: float = 0.0
    layer_sparsity: tuple = ()  # ((layer name, sparsity), ...)
    clusters: int = 0  # > 0: every layer but the stem clustered to this many values (zeros kept apart)
    clustered: tuple = ()  # the layers clustered
    float_nodes: tuple = ()  # mixed family: node names kept in float (Int8Session.mixed), the rest int8
    float_layers: tuple = ()  # mixed family: the Keras layers of float_nodes (short labels)
    worst: tuple = ()  # mixed family: the worst int8 layers chosen (labels); their int8 readers went float with them
    input_size: int = 0  # input family: the square input side the built-in architecture is rebuilt at (0: the model's)
    base_family: str = ""  # mixed on top of a fine-tuned candidate: its family (the fields above are its settings)

    @property
    def key(self) -> str:
        """A stable name for files and the resume state: the family, the level (or input size) and a digest of the
        settings."""
        digest = hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:8]
        size = f"-{self.input_size}px" if self.input_size else ""
        return f"{self.family}-{int(round(self.level * 1000)):03d}{size}-{digest}"

    @property
    def base(self) -> Optional["Candidate"]:
        """The fine-tuned candidate a mixed one keeps float layers on top of (None: on the plain int8 model)."""
        if not self.base_family:
            return None
        return replace(self, family=self.base_family, base_family="", float_nodes=(), float_layers=(), worst=())

    def on(self, base: "Candidate") -> "Candidate":
        """This mixed candidate's float layers on top of the fine-tuned ``base`` instead of the plain int8 model."""
        return replace(base, family="mixed", base_family=base.family, float_nodes=self.float_nodes,
                       float_layers=self.float_layers, worst=self.worst)

    @property
    def label(self) -> str:
        if self.base is not None:
            return f"{self.base.label}, {len(self.worst)} worst in float ({', '.join(self.worst)})"
        if self.family == "int8":
            return "int8 (no pruning)"
        if self.family == "uniform":
            return f"uniform {self.level:.2f}"
        if self.family == "input":
            pruned = f" + uniform {self.level:.2f}" if self.level else ""
            return f"input {self.input_size}x{self.input_size}{pruned}"
        if self.family == "mixed":
            return f"int8, {len(self.worst)} worst in float ({', '.join(self.worst)})"
        if self.family == "clustered":
            return f"{self.clusters} clusters + uniform {self.level:.2f}"
        return f"allocated {self.level:.2f} (skew {self.skew:g})"

    def to_json(self) -> str:
        """Every field, as JSON (:meth:`from_json` gives the same candidate back): a cluster's chief sends it."""
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "Candidate":
        def frozen(value):
            return tuple(frozen(v) for v in value) if isinstance(value, list) else value

        return cls(**{name: frozen(value) for name, value in json.loads(text).items()})

    def to_dict(self) -> dict:
        out = {"family": self.family, "level": round(self.level, 4), "skew": self.skew,
               "layer_sparsity": {name: round(s, 4) for name, s in self.layer_sparsity}}
        if self.clusters:
            out.update(clusters=self.clusters, clustered=list(self.clustered))
        if self.float_nodes:
            out.update(worst=list(self.worst), float_layers=list(self.float_layers), float_nodes=list(self.float_nodes))
        if self.input_size:
            out.update(input_size=self.input_size)
        if self.base_family:
            out.update(base=self.base.key)
        return out


def allocate(layers: list[LayerInfo], level: float, skew: float, cap: float = MAX_LAYER_SPARSITY) -> dict:
    """layer name -> sparsity for ``level`` (see the module docstring); as many zeros as uniform at ``level``."""
    body = [layer for layer in layers if layer.role == "body"]
    if skew == 0:
        return {layer.name: (level if layer.role == "body" else 0.0) for layer in layers}
    zeros = level * sum(layer.weights for layer in body)
    total = sum(layer.weights for layer in layers)
    zeros = min(zeros, cap * total)
    ratio = {layer.name: (layer.weights / (max(layer.sensitivity, 0.0) + SENSITIVITY_FLOOR)) ** skew for layer in layers}

    def pruned(lam: float) -> float:
        return sum(min(cap, lam * ratio[layer.name]) * layer.weights for layer in layers)

    lo, hi = 0.0, 1.0
    while pruned(hi) < zeros and hi < 1e30:
        hi *= 2.0
    for _ in range(100):
        mid = (lo + hi) / 2.0
        lo, hi = (mid, hi) if pruned(mid) < zeros else (lo, mid)
    return {layer.name: float(min(cap, hi * ratio[layer.name])) for layer in layers}


def candidate(family: str, layers: list[LayerInfo], level: float, skew: float = 0.0, clusters: int = 0,
              input_size: int = 0) -> Candidate:
    if family == "int8":
        return Candidate("int8")
    shares = allocate(layers, level, skew)
    clustered = tuple(layer.name for layer in layers if layer.role != "stem") if clusters else ()
    return Candidate(family, round(level, 4), skew, tuple((n, round(s, 4)) for n, s in shares.items()), clusters,
                     clustered, input_size=input_size)


def one_shot(model, layer_sparsity: dict):
    """A copy of the tf_keras ``model`` with each named layer's smallest-magnitude weights set to zero."""
    from edgeresnet._util import tf as _tf

    keras = _tf.tf_keras()
    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    for name, share in layer_sparsity.items():
        if share > 0:
            layer = copy.get_layer(name)
            kernel = layer.kernel.numpy()
            k = int(round(share * kernel.size))
            if k:
                cut = np.argsort(np.abs(kernel), axis=None)[:k]
                flat = kernel.reshape(-1).copy()
                flat[cut] = 0.0
                layer.kernel.assign(flat.reshape(kernel.shape))
    return copy


def _top1(model, x: np.ndarray, y: np.ndarray) -> float:
    pred = model.predict(x, batch_size=64, verbose=0)
    return 100.0 * float(np.mean(np.argmax(pred, axis=-1) == y))


def profile_layers(model, x: np.ndarray, y: Optional[np.ndarray], progress=None) -> list[LayerInfo]:
    """Weights, MACs and pruning sensitivity of every Conv2D/Dense layer of the tf_keras ``model``.

    ``x`` are held-out model inputs; ``y`` their labels, or None (then the float model's own predictions,
    so sensitivity is the disagreement it causes)."""
    from edgeresnet._util import tf as _tf
    from edgeresnet.host.training.prune_plan import layer_roles

    keras = _tf.tf_keras()
    roles = layer_roles(model, keras)
    if y is None:
        y = np.argmax(model.predict(x, batch_size=64, verbose=0), axis=-1)
    base = _top1(model, x, y)
    out = []
    for k, name in enumerate(roles):
        layer = model.get_layer(name)
        weights = int(np.prod(layer.kernel.shape))
        spatial = int(np.prod(layer.output_shape[1:-1])) if len(layer.output_shape) == 4 else 1
        drop = base - _top1(one_shot(model, {name: SENSITIVITY_PROBE}), x, y)
        out.append(LayerInfo(name, roles[name], weights, weights * spatial, round(drop, 3)))
        if progress is not None:
            progress(k + 1, len(roles))
    return out


def probe_model(plain: bytes, layer_sparsity: dict, clusters: int = 0, clustered: tuple = ()) -> bytes:
    """The int8 .tflite ``plain`` with each named layer's smallest-magnitude int8 weights set to zero.

    What a model pruned to ``layer_sparsity`` looks like on disk, made in milliseconds: magnitude pruning
    keeps each layer's largest weights, which also set its per-channel scales, so the surviving int8
    values are nearly those of the plain model. Weight tensors are found by their Keras layer's name in
    the tensor name (``model/conv2d_7/Conv2D``)."""
    from edgeresnet.device.tflite_graph import parse_tflite

    graph = parse_tflite(plain)
    out = bytearray(plain)
    for _, tensor in graph.filter_tensors():
        parts = set(tensor.name.split("/"))
        share = next((s for name, s in layer_sparsity.items() if name in parts), 0.0)
        values = graph.const_array(tensor.index)
        if (share <= 0 and not clusters) or values is None or values.dtype != np.int8:
            continue
        flat = values.reshape(-1).copy()
        flat[np.argsort(np.abs(flat.astype(np.int16)), kind="stable")[: int(round(share * flat.size))]] = 0
        layer = next((name for name in clustered if name in parts), None)
        if clusters and layer is not None and tensor.quantization is not None:
            flat = _clustered_int8(flat.reshape(values.shape), np.asarray(tensor.quantization.scale), clusters)
        start, length = graph._buffer_spans[tensor.buffer]
        out[start:start + length] = flat.tobytes()
    return bytes(out)


def _clustered_int8(q: np.ndarray, scale: np.ndarray, clusters: int) -> np.ndarray:
    """Per-channel int8 weights ``q`` (output channel first) clustered as floats and quantized again."""
    from edgeresnet.host.training.clustering import assignments, snap

    shape = (-1,) + (1,) * (q.ndim - 1)
    w = q.astype(np.float64) * scale.reshape(shape)
    w = snap(w, assignments(w, clusters))
    top = np.abs(w).reshape(q.shape[0], -1).max(axis=1).reshape(shape) / 127.0
    return np.clip(np.round(w / np.where(top > 0, top, 1.0)), -127, 127).astype(np.int8).reshape(-1)

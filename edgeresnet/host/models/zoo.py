"""A built-in architecture name as the MODEL of ``convert``/``report``: build it, load weights by layer name.

``edgeresnet convert resnet50 --weights FILE.h5`` builds the zoo ResNet and
fills it from a local Keras ``.h5`` (nothing is downloaded). With a new class
count (``--classes N``) the classifier (``predictions``) is new and left out of
the weights; the rest must match layer for layer, or the first layer that does
not is named.
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Optional

from edgeresnet._util.validate import whole_number
from edgeresnet.errors import ConfigError, ModelLoadError
from edgeresnet.host.models.registry import ALIASES, ARCHITECTURES, ArchSpec, get_arch

HEAD = "predictions"  # the classifier layer every zoo ResNet ends with

#: The largest --input-size. A ResNet's activations grow with the square of the side: ResNet-50 trains with
#: about 100 MB of them per 224 px image, 2 GB at 1024 px; edge classifiers take 224 to 512 px.
MAX_INPUT_SIZE = 1024


def check_input_size(value) -> int:
    """``--input-size`` as an int from 1 to :data:`MAX_INPUT_SIZE`, else a ConfigError saying why."""
    size = whole_number("--input-size", value, 1)
    if size > MAX_INPUT_SIZE:
        raise ConfigError(
            f"--input-size {size} is over the limit of {MAX_INPUT_SIZE} px: a ResNet's memory grows with the "
            f"square of the side (at {MAX_INPUT_SIZE} px one training image already takes gigabytes) and edge "
            f"classifiers take 224 to 512 px; use {MAX_INPUT_SIZE} or less"
        )
    return size


def zoo_spec(model: Optional[str]) -> Optional[ArchSpec]:
    """The architecture ``model`` names, or None when it is (or looks like) a file path.

    A name that is neither an existing path nor a known architecture raises a
    one-line ConfigError suggesting the closest architecture name.
    """
    if model is None or Path(model).expanduser().exists():
        return None
    text = str(model)
    if os.sep in text or "/" in text or Path(text).suffix:
        return None  # a path: the loader says "no such file"
    try:
        return get_arch(text)
    except ConfigError:
        known = list(ARCHITECTURES) + list(ALIASES)
        close = difflib.get_close_matches(text.lower(), known, n=2)
        hint = f"did you mean {' or '.join(close)}? " if close else ""
        raise ConfigError(
            f"{text}: no such model file and no built-in architecture of that name; {hint}"
            "pass a .h5/.keras file, a SavedModel folder or a name from `edgeresnet models`"
        ) from None


def build_zoo_model(spec: ArchSpec, weights: Optional[str] = None, classes: Optional[int] = None,
                    input_size: Optional[int] = None, seed: int = 0):
    """The zoo model as a tf_keras Model: ``classes`` outputs (a new head), weights by layer name from ``weights``.

    The initial weights (of a new head, or of everything without ``weights``) are drawn with ``seed``, so the
    same command gives the same model.
    """
    from edgeresnet._util import tf as _tf

    _tf.tf_keras().utils.set_random_seed(int(seed))
    shape = None
    if input_size is not None:
        shape = (int(input_size), int(input_size), spec.default_input_shape[-1])
    head = (HEAD,) if classes is not None else ()
    if classes is None and weights is not None:
        classes = _head_classes(weights)  # the file's classifier: its class count
    model = spec.build(input_shape=shape, classes=classes)
    if weights is not None:
        load_weights_by_name(model, weights, skip=head)
    return model


def _head_classes(path) -> Optional[int]:
    """The output count of the ``predictions`` layer stored in a weights file, or None when it has none."""
    import h5py

    try:
        with h5py.File(str(path), "r") as f:
            group = f["model_weights"] if "model_weights" in f else f
            if HEAD not in group:
                return None
            g = group[HEAD]
            names = [n.decode() if isinstance(n, bytes) else str(n) for n in g.attrs.get("weight_names", [])]
            shapes = [g[n].shape for n in names]
    except OSError:
        return None  # load_weights_by_name says what is wrong with the file
    return int(shapes[-1][-1]) if shapes else None


def load_weights_by_name(model, path, skip=()) -> int:
    """Fill ``model`` from a Keras ``.h5`` (``save_weights`` or a full model) by layer name; returns layers loaded.

    Every layer with weights (except those in ``skip``) must be in the file
    with the same shapes; the first that is missing or differs raises a
    one-line ModelLoadError naming it. Nothing is changed in ``model`` unless
    every layer fits.
    """
    p = Path(path)
    if not p.is_file():
        raise ModelLoadError(f"weights file {p} not found; pass the path of a local .h5 weights file")
    import h5py

    if not h5py.is_hdf5(str(p)):
        raise ModelLoadError(f"{p} is not an HDF5 file; pass a .h5 written by model.save_weights('w.h5')")
    fix = f"pass weights saved from {model.name}"
    planned = []
    try:
        with h5py.File(str(p), "r") as f:
            group = f["model_weights"] if "model_weights" in f else f
            if "layer_names" not in group.attrs:
                raise ModelLoadError(f"{p} has no Keras layer names; pass a .h5 written by model.save_weights('w.h5')")
            for layer in model.layers:
                if not layer.weights or layer.name in skip:
                    continue
                if layer.name not in group:
                    raise ModelLoadError(f"{p} has no weights for layer {layer.name} of {model.name}; {fix}")
                g = group[layer.name]
                names = [n.decode() if isinstance(n, bytes) else str(n) for n in g.attrs.get("weight_names", [])]
                arrays = [g[n][()] for n in names]
                want = [tuple(w.shape) for w in layer.weights]
                got = [tuple(a.shape) for a in arrays]
                if want != got:
                    raise ModelLoadError(
                        f"{p}: layer {layer.name} has weights {got} in the file but {want} in {model.name}; {fix}"
                    )
                planned.append((layer, arrays))
    except OSError as exc:
        raise ModelLoadError(f"{p} cannot be read ({str(exc).splitlines()[0]}); the file may be truncated") from None
    for layer, arrays in planned:
        layer.set_weights(arrays)
    return len(planned)

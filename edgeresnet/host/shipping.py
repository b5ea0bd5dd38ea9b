"""Ship-ready models: the metadata an emitted model carries, and which runtimes take it.

Phone runtimes read a classifier's contract from its TFLite metadata
(:mod:`edgeresnet.device.metadata`); this module decides what that contract is for
one conversion run and judges each emitted model against the runtimes that
matter:

- **LiteRT interpreter** (ai-edge-litert, tflite-runtime): runs anything
  edgeresnet emits; the pipeline has already loaded and run every model.
- **MediaPipe Tasks ImageClassifier / TFLite Task Library** (what Android and
  iOS apps use): the input must be one 1xHxWx3 ``uint8`` or ``float32``
  tensor; ``float32`` needs NormalizationOptions with *one* mean and std for
  all channels (per-channel values are refused); ``uint8`` is fed the raw
  0..255 pixels, so the input's quantization must be exactly the inverse of
  the normalization; colour space RGB; category names come from the
  ``TENSOR_AXIS_LABELS`` file.
- **Coral Edge TPU**: fully int8 models through ``edgetpu_compiler`` (the
  ``edgetpu`` target's check says whether every op maps).

Normalization is stated on raw 0..255 pixels, ``(pixel - mean) / std``: the
preset's ``(pixel * scale - m) / s`` is ``mean = m / scale``, ``std = s /
scale``. A folded preset leaves ``mean 0, std 1``. A BGR preset (``caffe``)
cannot be stated (the schema knows RGB and greyscale only), so its models
need ``--fold-preprocessing`` to be usable by MediaPipe.
"""

from __future__ import annotations

import math
import struct
from dataclasses import replace
from typing import Optional, Sequence

import numpy as np

from edgeresnet.device.presets import Preset
from edgeresnet.errors import ConfigError, DataError
from edgeresnet.device.metadata import LABELS_FILE, ModelInfo, add_metadata, check_label_count, parse_labels
from edgeresnet.device.tflite_graph import _Reader, read_graph

# Tables of the TFLite schema used to reach the input tensor's quantization.
_SUBGRAPHS, _SG_TENSORS, _SG_INPUTS, _TENSOR_QUANT, _Q_SCALE, _Q_ZERO_POINT = 2, 0, 1, 4, 2, 3

RUNTIMES = ("litert", "mediapipe", "edgetpu")
RUNTIME_NAMES = {
    "litert": "LiteRT interpreter",
    "mediapipe": "MediaPipe Tasks / TFLite Task Library",
    "edgetpu": "Coral Edge TPU",
}


# ---------------------------------------------------------------------- labels


def resolve_labels(named_sets: Sequence[tuple[str, object]], num_classes: int) -> tuple[Optional[tuple[str, ...]], Optional[str]]:
    """(class names, where they came from) when no ``--labels`` is given: the labelled data folders' class names.

    ``named_sets`` are (flag, ImageSet, class-name tuple or None), e.g. ("--eval", eval_set). Two
    labelled folders with different class names are refused. (None, None) when
    nothing names the classes.
    """
    found: Optional[tuple[str, ...]] = None
    source = None
    for flag, images in named_sets:
        names = images if isinstance(images, tuple) else _class_names(images)  # a tuple: straight from a folder scan
        if not names:
            continue
        names = tuple(str(n) for n in names)
        if found is None:
            found, source = names, flag
        elif names != found:
            raise ConfigError(
                f"{source} and {flag} have different class folders ({len(found)} vs {len(names)} classes, "
                f"e.g. {_first_difference(found, names)}); use the same class sub-folders or pass --labels FILE"
            )
    if found is None:
        return None, None
    return check_label_count(parse_labels("\n".join(found), f"class folders of {source}"), f"{source}", num_classes), f"class folders of {source}"


def _class_names(images) -> Optional[tuple[str, ...]]:
    """The class names of a labelled ImageSet/ImageStream, else None."""
    return getattr(images, "class_names", None) if getattr(images, "labelled", True) else None


def class_mapping(folders: Sequence[str], names: Sequence[str], flag: str, labels_from: str) -> np.ndarray:
    """Folder index -> output index: each class folder goes to the line of ``names`` that bears its name.

    :class:`DataError` unless the folders are ``names`` as a set (any order).
    """
    index = {name: i for i, name in enumerate(names)}
    unnamed = [f for f in folders if f not in index]
    missing = [n for n in names if n not in set(folders)]
    if unnamed or missing:
        said = (f"classes {_shown(unnamed)} that {labels_from} does not name" if unnamed
                else f"no class folder for {_shown(missing)} of {labels_from}")
        raise DataError(
            f"{flag} has {said}; name each class folder exactly as its line in the labels file "
            "(folders are matched to labels by name), or drop --labels"
        )
    return np.array([index[f] for f in folders], dtype=np.int64)


def order_note(names: Sequence[str], labels_from: str, folder_sets: Sequence[tuple[str, Sequence[str]]]) -> Optional[str]:
    """The warning when class folders (``(flag, sorted folder names)``) list the classes in another order than
    ``names``, saying which mapping is used; None when they agree. :class:`DataError` when their names differ."""
    differ = []
    for flag, folders in folder_sets:
        class_mapping(folders, names, flag, labels_from)  # other names: refused
        if tuple(folders) != tuple(names):
            differ.append((flag, tuple(folders)))
    if not differ:
        return None
    folders = differ[0][1]
    i = next(i for i, f in enumerate(folders) if names[i] != f)
    return (
        f"{labels_from} lists the classes in another order than the class folders of "
        f"{', '.join(flag for flag, _ in differ)} (folder {folders[i]!r} is number {i + 1} in folder order but "
        f"line {list(names).index(folders[i]) + 1} of the labels file); each folder is matched to its label by name: "
        "accuracy, training and the models' metadata all use the labels file's order"
    )


def match_classes(images, names: Optional[Sequence[str]], flag: str, labels_from: str):
    """``images`` (an ImageSet or ImageStream) with labels as output indices of ``names``, each class
    folder matched by name; unchanged without ``names``, without labels or without class names."""
    folders = _class_names(images) if images is not None else None
    if names is None or not folders or tuple(folders) == tuple(names):
        return images
    mapping = class_mapping(folders, names, flag, labels_from)
    return replace(images, labels=mapping[images.labels], class_names=tuple(names))


def _shown(names: Sequence[str]) -> str:
    return ", ".join(repr(n) for n in names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")


def _first_difference(a, b) -> str:
    for x, y in zip(a, b):
        if x != y:
            return f"{x!r} vs {y!r}"
    return f"{len(a)} vs {len(b)} names"


# ---------------------------------------------------------------------- metadata


def normalization(preset: Preset, folded: bool, channels: int) -> tuple[Optional[tuple[float, ...]], Optional[tuple[float, ...]]]:
    """(mean, std) on raw 0..255 pixels for the model input, or (None, None) when not expressible."""
    if folded:
        return (0.0,), (1.0,)
    if preset.flips(channels):
        return None, None  # BGR: the metadata schema has no way to say so
    mean, std = preset.channel_stats(channels)
    mean_px = tuple(_clean(float(m) / preset.scale) for m in mean)
    std_px = tuple(_clean(float(s) / preset.scale) for s in std)
    if len(set(mean_px)) == 1 and len(set(std_px)) == 1:
        return mean_px[:1], std_px[:1]
    return mean_px, std_px


def _clean(v: float) -> float:
    """Round away float noise of the division (255.00000000000003 -> 255.0)."""
    r = round(v, 6)
    return float(r) if math.isclose(v, r, rel_tol=1e-9, abs_tol=1e-9) else v


def model_info(name: str, preset: Preset, folded: bool, channels: int, labels, version: str, source: str) -> ModelInfo:
    """The metadata every variant of one run carries (the same model, several precisions)."""
    mean, std = normalization(preset, folded, channels)
    how = "raw 0..255 pixels (preprocessing inside the model)" if folded else f"preset {preset.name}: {preset.description}"
    if mean is None:
        how += "; BGR channel order, which the metadata schema cannot state: use --fold-preprocessing"
    color = "RGB" if channels == 3 and mean is not None else ("GRAYSCALE" if channels == 1 else "UNKNOWN")
    return ModelInfo(
        name=name,
        description=f"Image classifier converted by edgeresnet from {source}. Input: {how}.",
        version=version,
        author="edgeresnet",
        color_space=color,
        mean=mean,
        std=std,
        labels=None if labels is None else tuple(labels),
        labels_file=LABELS_FILE,
    )


def _input_quant_positions(model: bytes) -> Optional[tuple[int, int, int]]:
    """(scale position, zero-point position, zero-point byte size) of the first input's quantization."""
    r = _Reader(model, "model")
    sg = r.tables(r.root(), _SUBGRAPHS)[0]
    tensors = r.tables(sg, _SG_TENSORS)
    index = r.scalars(sg, _SG_INPUTS, "i")[0]
    quant = r.table(tensors[index], _TENSOR_QUANT)
    if quant is None:
        return None
    scale, zero = r.vector(quant, _Q_SCALE), r.vector(quant, _Q_ZERO_POINT)
    if scale is None or zero is None or scale[1] != 1 or zero[1] != 1:
        return None
    return scale[0], zero[0], 8


def exact_uint8_input(model: bytes, info: ModelInfo) -> tuple[bytes, Optional[str]]:
    """Make a uint8 input take raw pixels exactly: its quantization = the inverse of the normalization.

    A uint8 input is fed raw 0..255 pixels by MediaPipe and the Task Library.
    The converter derives its scale and zero point from the calibrated range,
    which equals ``(pixel - mean) / std`` only when the calibration images
    spanned 0..255. When the uint8 input only feeds the converter's QUANTIZE op
    (which re-quantizes to the int8 scale inside), its parameters are set to
    ``scale = 1/std``, ``zero point = mean`` in place: the model then computes
    the same function for every pixel value, by definition of QUANTIZE.
    Returns (model, note); the note says what was done or why it was not.
    """
    graph = read_graph(model)
    tensor = graph.tensors[graph.inputs[0]]
    if tensor.dtype != "uint8" or info.mean is None:
        return model, None
    if not info.uniform_normalization:
        return model, "per-channel normalization cannot be a uint8 input's quantization"
    mean, std = info.mean[0], info.std[0]
    want_scale, want_zero = 1.0 / std, mean
    q = tensor.quantization
    if q is not None and len(q.scale) == 1 and q.zero_point[0] == want_zero and math.isclose(q.scale[0], want_scale, rel_tol=1e-6):
        return model, None
    if not (float(want_zero).is_integer() and 0 <= want_zero <= 255):
        return model, f"mean {mean:g} is not a whole pixel value, so no uint8 zero point makes raw pixels exact"
    consumers = graph.consumers(tensor.index)
    if not consumers or any(op.name != "QUANTIZE" for op in consumers):
        return model, "the uint8 input does not feed a QUANTIZE op, so its parameters cannot be changed safely"
    positions = _input_quant_positions(model)
    if positions is None:
        return model, "the uint8 input has no single scale/zero point"
    scale_pos, zero_pos, _ = positions
    out = bytearray(model)
    struct.pack_into("<f", out, scale_pos, want_scale)
    struct.pack_into("<q", out, zero_pos, int(want_zero))
    before = f"scale {q.scale[0]:.6g}, zero point {q.zero_point[0]}" if q is not None else "none"
    return bytes(out), f"uint8 input set to take raw pixels: scale {want_scale:.6g}, zero point {int(want_zero)} (was {before})"


def prepare(model: bytes, info: ModelInfo) -> tuple[bytes, Optional[str]]:
    """The model as shipped: exact uint8 input where possible, then the metadata. (model, note)."""
    model, note = exact_uint8_input(model, info)
    return add_metadata(model, info), note


# ---------------------------------------------------------------------- runtimes


def _verdict(ok: Optional[bool], why: str) -> dict:
    return {"ok": ok, "why": why}


def mediapipe_verdict(model: bytes, info: Optional[ModelInfo]) -> dict:
    """Would MediaPipe's ImageClassifier (and the TFLite Task Library) load this model, with names?"""
    graph = read_graph(model)
    if len(graph.inputs) != 1:
        return _verdict(False, f"{len(graph.inputs)} inputs; image classifiers take one image")
    t = graph.tensors[graph.inputs[0]]
    out = graph.tensors[graph.outputs[0]]
    if len(t.shape) != 4 or t.shape[0] != 1 or t.shape[3] not in (3, 4):
        return _verdict(False, f"input shape {list(t.shape)}; MediaPipe takes 1 x H x W x 3 (RGB) images")
    if t.dtype not in ("uint8", "float32"):
        return _verdict(False, f"{t.dtype} input; MediaPipe and the Task Library take uint8 or float32 images (use --io uint8)")
    if out.dtype not in ("uint8", "float32"):
        return _verdict(False, f"{out.dtype} output; MediaPipe reads uint8 or float32 scores (use --io uint8)")
    if info is None:
        if t.dtype == "float32":
            return _verdict(False, "float32 input without NormalizationOptions metadata")
        return _verdict(True, "loads, but without metadata the category names are empty")
    if info.color_space != "RGB":
        return _verdict(False, f"metadata colour space {info.color_space}; MediaPipe takes RGB only (a BGR preset needs --fold-preprocessing)")
    if t.dtype == "float32":
        if info.mean is None:
            return _verdict(False, "float32 input without NormalizationOptions (a BGR preset needs --fold-preprocessing)")
        if not info.uniform_normalization:
            return _verdict(False, "per-channel normalization, which MediaPipe refuses; use --fold-preprocessing")
    else:
        q = t.quantization
        exact = (
            info.uniform_normalization and q is not None and len(q.scale) == 1
            and q.zero_point[0] == info.mean[0] and math.isclose(q.scale[0], 1.0 / info.std[0], rel_tol=1e-6)
        )
        if not exact:
            return _verdict(False, "uint8 input is fed raw pixels but this model's input quantization expects other values; "
                                   "use --fold-preprocessing or --io float32")
    names = f"{len(info.labels)} category names from {info.labels_file}" if info.labels else "no labels: category names are empty (pass --labels FILE)"
    feed = "raw 0..255 pixels" if t.dtype == "uint8" else f"(pixel - {info.mean[0]:g}) / {info.std[0]:g}"
    return _verdict(True, f"{t.dtype} input fed {feed}; {names}")


def edgetpu_verdict(model: bytes, checks: dict) -> dict:
    """From the Edge TPU check when the target ran it, else from the tensor types."""
    check = checks.get("edgetpu") if checks else None
    if check is not None:
        return _verdict(check.get("ok"), check.get("summary", ""))
    graph = read_graph(model)
    io = set(graph.inputs) | set(graph.outputs)
    floats = [t for t in graph.tensors if t.dtype in ("float32", "float16") and not t.is_constant]
    if floats and all(t.index in io for t in floats):
        return _verdict(None, "int8 inside with float input/output: edgetpu_compiler leaves the (de)quantization "
                              "at the edges on the CPU; --target edgetpu gives uint8 io and checks the op mapping")
    if floats:
        return _verdict(False, "float tensors: the Edge TPU runs fully int8 models only (use --target edgetpu)")
    int16 = [t for t in graph.tensors if t.dtype == "int16"]
    if int16:
        return _verdict(False, "16-bit activations: the Edge TPU runs 8-bit models only")
    return _verdict(None, "fully integer; compile with edgetpu_compiler (--target edgetpu checks the op mapping)")


def runtimes(model: bytes, info: Optional[ModelInfo], interpreter: str, checks: dict) -> dict:
    """Per runtime: {"ok": True/False/None, "why": one line}."""
    return {
        "litert": _verdict(True, f"loaded and ran in {interpreter}"),
        "mediapipe": mediapipe_verdict(model, info),
        "edgetpu": edgetpu_verdict(model, checks),
    }

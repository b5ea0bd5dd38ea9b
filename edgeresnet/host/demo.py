"""The built-in default: a small reference ResNet and real data to check it on.

``edgeresnet convert --int8`` with no model converts :data:`REFERENCE_NAME`, a
ResNet-8 trained on scikit-learn's handwritten digits (1,797 real 8x8 scans
that ship inside the scikit-learn package, so nothing is downloaded), and
verifies it on the held-out digits. The weights in ``edgeresnet/assets`` are
made by ``scripts/train_reference.py``; the JSON beside them records how.

The split is fixed: a seeded, stratified draw of :data:`EVAL_SIZE` images is the
``"eval"`` split, the other 1,297 are the ``"calib"`` split (the training data
of the reference model, and the pool calibration images are drawn from).

Images are raw ``uint8`` pixels, like images read from disk: digit intensities
0..16 are scaled to 0..255 and the 8x8 scans upsampled to 32x32 with PIL's
bilinear filter. The model expects them divided by 255 (preset ``"unit"``).

No TensorFlow here: only the data, the paths and the metadata.
"""

from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path

import numpy as np

from edgeresnet.device.imageset import ImageSet
from edgeresnet.errors import DataError, MissingDependencyError, ModelLoadError

REFERENCE_NAME = "digits-resnet8"
ARCHITECTURE = "resnet8"
INPUT_SHAPE = (32, 32, 1)
CLASS_NAMES = tuple(str(d) for d in range(10))
PRESET = "unit"

SPLITS = ("calib", "eval")
EVAL_SIZE = 500
SPLIT_SEED = 0  # numpy RandomState: its stream is frozen across numpy versions

DIGITS_MAX = 16  # sklearn digits pixel values are counts 0..16 of a 4x4 block

_ASSETS = Path(__file__).resolve().parents[1] / "assets"
MODEL_FILE = "reference_digits_resnet8.h5"
METADATA_FILE = "reference_digits_resnet8.json"


def reference_model_path() -> Path:
    """Path of the committed reference ``.h5`` (a full tf_keras model)."""
    path = _ASSETS / MODEL_FILE
    if not path.is_file():
        raise ModelLoadError(
            f"the built-in reference model {path} is missing from this installation; "
            "reinstall edgeresnet or run scripts/train_reference.py"
        )
    return path


def reference_metadata() -> dict:
    """What the reference model expects and how it was trained (the JSON beside the ``.h5``)."""
    path = _ASSETS / METADATA_FILE
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelLoadError(
            f"the reference model metadata {path} is missing; reinstall edgeresnet or run scripts/train_reference.py"
        ) from None
    except json.JSONDecodeError as exc:
        raise ModelLoadError(f"{path} is not valid JSON ({exc}); rerun scripts/train_reference.py") from None
    return meta


def digits_images(split: str, channels: int = 1) -> ImageSet:
    """The ``"calib"`` (1,297 training images) or ``"eval"`` (500 held-out) split of the digits.

    ``channels=3`` gives them as RGB (the grey value in all three channels), the
    way a camera or an image file hands them to the RGB-input model that
    edgeresnet ships (see :func:`edgeresnet.host.calibration.grey_from_rgb`).
    """
    if split not in SPLITS:
        raise DataError(f"unknown digits split {split!r}; choose one of {', '.join(SPLITS)}")
    if channels not in (1, 3):
        raise DataError(f"digits come with 1 or 3 channels, got {channels!r}")
    images, labels = _digits_32()
    calib_idx, eval_idx = split_indices(labels)
    idx = calib_idx if split == "calib" else eval_idx
    return ImageSet(
        images=np.repeat(images[idx], channels, axis=-1),  # copies: callers cannot touch the cache
        labels=labels[idx].astype(np.int64),
        class_names=CLASS_NAMES,
        source=f"built-in: scikit-learn digits ({split})",
    )


def split_indices(labels: np.ndarray, eval_size: int = EVAL_SIZE, seed: int = SPLIT_SEED) -> tuple[np.ndarray, np.ndarray]:
    """Sorted (calib, eval) indices: a seeded draw of ``eval_size`` with every class in proportion.

    Each class gets ``eval_size * class_count / total`` eval images, rounded by
    largest remainder so the counts add up exactly.
    """
    labels = np.asarray(labels)
    n = len(labels)
    if not 0 < eval_size < n:
        raise DataError(f"eval_size must be between 1 and {n - 1}, got {eval_size!r}")
    classes, counts = np.unique(labels, return_counts=True)
    share = counts * eval_size / n
    take = np.floor(share).astype(int)
    short = eval_size - int(take.sum())
    # Largest remainders first; ties go to the lower class index (stable sort).
    order = np.argsort(-(share - take), kind="stable")
    take[order[:short]] += 1

    rng = np.random.RandomState(seed)
    eval_parts = []
    for cls, k in zip(classes, take):
        members = np.flatnonzero(labels == cls)
        eval_parts.append(members[rng.permutation(len(members))[:k]])
    eval_idx = np.sort(np.concatenate(eval_parts))
    mask = np.ones(n, dtype=bool)
    mask[eval_idx] = False
    return np.flatnonzero(mask), eval_idx


def split_fingerprint() -> str:
    """SHA-256 of the eval indices (int64, little-endian): recorded by the training script.

    If this ever differs from ``reference_metadata()["training"]["split"]["eval_sha256"]``,
    the "held-out" images are no longer the ones the reference model never saw.
    """
    _, labels = _digits_32()
    _, eval_idx = split_indices(labels)
    return hashlib.sha256(eval_idx.astype("<i8").tobytes()).hexdigest()


def to_uint8_32(digits_8x8: np.ndarray) -> np.ndarray:
    """(N, 8, 8) digit intensities 0..16 -> (N, 32, 32, 1) uint8 pixels, bilinear upsampling."""
    from PIL import Image

    arr = np.asarray(digits_8x8, dtype=np.float64)
    if arr.ndim != 3 or arr.shape[1:] != (8, 8):
        raise DataError(f"expected digits of shape (N, 8, 8), got {arr.shape}")
    pixels = np.clip(np.rint(arr * (255.0 / DIGITS_MAX)), 0, 255).astype(np.uint8)
    out = np.empty((len(pixels), INPUT_SHAPE[0], INPUT_SHAPE[1], 1), dtype=np.uint8)
    size = (INPUT_SHAPE[1], INPUT_SHAPE[0])  # PIL takes (width, height)
    for i, img in enumerate(pixels):
        out[i, :, :, 0] = np.asarray(Image.fromarray(img).resize(size, Image.BILINEAR))
    return out


@functools.lru_cache(maxsize=1)
def _digits_32() -> tuple[np.ndarray, np.ndarray]:
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:
        raise MissingDependencyError(
            f"the built-in digits need scikit-learn ({exc}); install the host extras: pip install 'edgeresnet[host]'"
        ) from None
    digits = load_digits()
    images = to_uint8_32(digits.images)
    labels = np.asarray(digits.target, dtype=np.int64)
    images.setflags(write=False)
    labels.setflags(write=False)
    return images, labels

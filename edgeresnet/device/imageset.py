"""Images in memory: :class:`ImageSet`, and the ``.npy``/``.npz`` arrays read into one.

Array policy (also in ``calibration/README.md``): ``uint8`` (or integer arrays
within 0..255) are raw pixels; float arrays are kept as float32 with
``raw_is_pixels=False``: presets still apply to them as if they were 0..255
pixels, so an array that is already preprocessed goes with ``--preset raw``
(which passes values through). Arrays are never resized: their H, W, C must
match the model. A damaged or truncated file is a :class:`DataError` naming it.
"""

from __future__ import annotations

import os
import zipfile
import zlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from edgeresnet.device.image_files import check_special, pick
from edgeresnet.errors import ConfigError, DataError


@dataclass(frozen=True, eq=False)
class ImageSet:
    """Raw images (N, H, W, C), optional labels, and where they came from.

    ``images`` is ``uint8`` pixels for anything decoded from image files. Arrays
    read from ``.npy``/``.npz`` keep their values: ``uint8`` stays ``uint8``,
    float arrays become ``float32`` and ``raw_is_pixels`` is False (nobody can
    tell whether they are 0..255 pixels or already preprocessed).

    ``paths`` names each image (absolute file path, or ``"<array file>#<row>"``)
    so a second load from the same source can ``exclude`` them; it is empty for
    sets built in memory.
    """

    images: np.ndarray
    labels: Optional[np.ndarray] = None
    class_names: Optional[tuple[str, ...]] = None
    source: str = ""
    paths: tuple[str, ...] = ()
    raw_is_pixels: bool = True
    balanced: bool = False  # picked class by class, round-robin
    requested: Optional[int] = None  # samples asked for (None: all)
    available: Optional[int] = None  # images the source offered after exclusions
    resized: Optional[int] = 0  # images resized to the model's H x W (None: unknown, after subset)

    def __post_init__(self):
        images = self.images
        if not isinstance(images, np.ndarray) or images.ndim != 4:
            got = getattr(images, "shape", type(images).__name__)
            raise DataError(f"an ImageSet needs an (N, H, W, C) array, got {got}")
        if images.dtype != np.uint8:
            if not np.issubdtype(images.dtype, np.floating):
                raise DataError(f"images must be uint8 pixels or floats, got dtype {images.dtype}")
            if images.dtype != np.float32:
                object.__setattr__(self, "images", images.astype(np.float32))
        if self.labels is not None:
            labels = np.asarray(self.labels)
            if labels.shape != (len(images),):
                raise DataError(f"{len(images)} images but labels have shape {labels.shape}; give one label per image")
            if labels.dtype != np.int64:
                labels = labels.astype(np.int64)
            if labels.size and labels.min() < 0:
                raise DataError(f"labels must be class indices 0..K-1, found {int(labels.min())}")
            object.__setattr__(self, "labels", labels)
        if self.class_names is not None:
            object.__setattr__(self, "class_names", tuple(str(c) for c in self.class_names))
        object.__setattr__(self, "paths", tuple(self.paths))
        if self.paths and len(self.paths) != len(images):
            raise DataError(f"{len(images)} images but {len(self.paths)} paths; give one path per image or none")

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def labelled(self) -> bool:
        return self.labels is not None

    @property
    def shape(self) -> tuple[int, int, int]:
        """(H, W, C) of each image."""
        return tuple(int(d) for d in self.images.shape[1:])

    def per_class(self) -> Optional[dict[str, int]]:
        """Images per class name (every class listed, zeros included), or None when unlabelled."""
        if self.labels is None:
            return None
        counts = np.bincount(self.labels, minlength=len(self.class_names or ()))
        names = self.class_names or tuple(str(i) for i in range(len(counts)))
        if len(names) < len(counts):  # labels beyond the names given
            names = names + tuple(str(i) for i in range(len(names), len(counts)))
        return {names[i]: int(counts[i]) for i in range(len(counts))}

    def subset(self, indices: Sequence[int]) -> "ImageSet":
        """The images at ``indices`` (in that order), same source and class names."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if len(idx) and (idx.min() < -len(self) or idx.max() >= len(self)):
            raise DataError(f"subset index out of range for {len(self)} images")
        return ImageSet(
            images=self.images[idx],
            labels=None if self.labels is None else self.labels[idx],
            class_names=self.class_names,
            source=self.source,
            paths=tuple(self.paths[i] for i in idx) if self.paths else (),
            raw_is_pixels=self.raw_is_pixels,
            balanced=False,
            requested=len(idx),
            available=len(self),
            resized=0 if self.resized == 0 else None,  # which of them were resized is not tracked
        )

    def sample(self, samples: Optional[int], seed: int = 0) -> "ImageSet":
        """``samples`` of the images picked as ``load_images`` picks them: seeded, class-balanced when labelled."""
        chosen = pick(len(self), self.labels, samples, int(seed), np.ones(len(self), dtype=bool))
        return replace(self.subset(chosen), balanced=self.labelled, requested=samples)

    def split(self, fraction: float, seed: int = 0) -> tuple["ImageSet", "ImageSet"]:
        """Seeded split into (``fraction`` of the images, the rest); per class when labelled.

        Each class gives ``round(fraction * class count)`` images to the first part,
        so both parts keep the class mix.
        """
        if not 0.0 < fraction < 1.0:
            raise ConfigError(f"split fraction must be between 0 and 1 (exclusive), got {fraction!r}")
        rng = np.random.default_rng(seed)
        if self.labels is None:
            order = rng.permutation(len(self))
            k = int(round(fraction * len(self)))
            first, rest = np.sort(order[:k]), np.sort(order[k:])
        else:
            first_parts, rest_parts = [], []
            for c in np.unique(self.labels):
                members = np.flatnonzero(self.labels == c)
                members = members[rng.permutation(len(members))]
                k = int(round(fraction * len(members)))
                first_parts.append(members[:k])
                rest_parts.append(members[k:])
            first = np.sort(np.concatenate(first_parts))
            rest = np.sort(np.concatenate(rest_parts))
        if len(first) == 0 or len(rest) == 0:
            raise DataError(
                f"splitting {len(self)} images at {fraction} leaves one part empty; use more images or another fraction"
            )
        return self.subset(first), self.subset(rest)


def load_array(p: Path, shape, samples, seed, excluded, progress) -> ImageSet:
    """The chosen rows of a ``.npy``/``.npz`` file for a model taking ``shape`` (H, W, C), as an ImageSet.

    Rows are picked as image files are (:func:`~edgeresnet.device.image_files.pick`), leaving out the
    ``excluded`` paths (``<file>#<row>``); ``progress(done, total)`` is called once, when they are read.
    """
    check_special(p)  # np.load on a FIFO would wait forever
    x, labels, class_names = _read_array_file(p)
    _check_array_images(p, x, shape)
    if x.ndim == 3:
        x = x[..., None]
    n = int(x.shape[0])
    if labels is not None:
        labels = _check_labels(p, np.asarray(labels), n, class_names)

    paths = [f"{os.path.abspath(p)}#{i}" for i in range(n)]
    allowed = np.array([q not in excluded for q in paths], dtype=bool)
    if not allowed.any():
        raise DataError(f"all {n} images in {p} are excluded (already used, e.g. for calibration); pass a separate file")
    chosen = pick(n, labels, samples, seed, allowed)
    picked = np.asarray(x[np.sort(chosen)])[np.argsort(np.argsort(chosen))]  # read rows in file order
    picked, raw_is_pixels = _as_pixels_or_floats(p, picked)
    if progress is not None:
        progress(len(chosen), len(chosen))
    return ImageSet(
        images=np.ascontiguousarray(picked),
        labels=None if labels is None else labels[chosen],
        class_names=class_names,
        source=str(p),
        paths=tuple(paths[i] for i in chosen),
        raw_is_pixels=raw_is_pixels,
        balanced=labels is not None,
        requested=samples,
        available=int(allowed.sum()),
        resized=0,
    )


def _read_array_file(p: Path) -> tuple:
    """(images, labels or None, class names or None) of a .npy (memory-mapped) or .npz; DataError when damaged."""
    labels = class_names = None
    try:
        if p.suffix.lower() == ".npy":
            x = np.load(p, mmap_mode="r", allow_pickle=False)
        else:
            with np.load(p, allow_pickle=False) as npz:
                keys = list(npz.files)
                x_key = next((k for k in ("x", "images") if k in keys), None)
                if x_key is None:
                    raise DataError(
                        f"{p} has no 'x' or 'images' array (keys: {', '.join(keys) or 'none'}); "
                        "save the images under x= and the labels under y="
                    )
                x = npz[x_key]
                y_key = next((k for k in ("y", "labels") if k in keys), None)
                labels = None if y_key is None else npz[y_key]
                if "class_names" in keys:
                    class_names = tuple(str(s) for s in npz["class_names"].reshape(-1))
    except DataError:
        raise
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error, KeyError) as exc:
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise DataError(
            f"{p}: cannot read this array file ({reason}); it is damaged or truncated: "
            "save it again with numpy.save / numpy.savez"
        ) from None
    return x, labels, class_names


def _check_array_images(p: Path, x, shape) -> None:
    """The array holds (N, H, W, C) images of the model's size, at least one, of a numeric type."""
    if x.ndim == 3 and shape[2] == 1:
        x = x[..., None]
    if x.ndim != 4:
        raise DataError(f"{p} holds an array of shape {tuple(x.shape)}; images must be (N, H, W, C)")
    if x.shape[-1] not in (1, 3, 4):
        raise DataError(f"{p} holds images with {x.shape[-1]} channels (shape {tuple(x.shape)}); use 1, 3 or 4 channels")
    if tuple(x.shape[1:]) != shape:
        raise DataError(
            f"wrong image shape: {p} holds {tuple(int(d) for d in x.shape[1:])} images but the model takes {shape}; "
            "resize them before saving, or pass an image folder (which is resized for you)"
        )
    n = int(x.shape[0])
    if n == 0:
        raise DataError(f"{p} holds no images (shape {tuple(x.shape)}); save at least one image")
    if not (np.issubdtype(x.dtype, np.integer) or np.issubdtype(x.dtype, np.floating)) or x.dtype == np.bool_:
        raise DataError(f"{p} holds {x.dtype} values; images must be uint8 pixels or floats")


def _as_pixels_or_floats(p: Path, picked: np.ndarray) -> tuple:
    """(uint8 pixels, True) or (float32 values, False): integers must be 0..255, floats finite."""
    raw_is_pixels = True
    if picked.dtype != np.uint8:
        if np.issubdtype(picked.dtype, np.integer):
            if picked.size and (picked.min() < 0 or picked.max() > 255):
                raise DataError(
                    f"{p} holds integers outside 0..255 ({int(picked.min())}..{int(picked.max())}); "
                    "save uint8 pixels or floats"
                )
            picked = picked.astype(np.uint8)
        else:
            picked = picked.astype(np.float32)
            if not np.isfinite(picked).all():
                raise DataError(f"{p} contains NaN or infinite values; fix the array")
            raw_is_pixels = False
    return picked, raw_is_pixels


def _check_labels(p: Path, y: np.ndarray, n: int, class_names) -> np.ndarray:
    if y.ndim == 2 and y.shape[0] == n and y.shape[1] > 1:  # one-hot
        y = np.argmax(y, axis=1)
    if y.shape != (n,):
        raise DataError(f"{p}: {n} images but labels have shape {tuple(y.shape)}; save one integer label per image")
    if np.issubdtype(y.dtype, np.floating):
        if not np.all(np.isfinite(y)) or not np.all(y == np.round(y)):
            raise DataError(f"{p}: labels must be whole numbers (class indices), got {y.dtype} values")
    elif not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"{p}: labels must be class indices, got {y.dtype}")
    y = y.astype(np.int64)
    if y.size and y.min() < 0:
        raise DataError(f"{p}: labels must be class indices 0..K-1, found {int(y.min())}")
    if class_names is not None and y.size and y.max() >= len(class_names):
        raise DataError(
            f"{p}: label {int(y.max())} but only {len(class_names)} class_names; give one name per class"
        )
    return y

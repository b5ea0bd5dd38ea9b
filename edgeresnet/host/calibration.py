"""Representative data: image folders and arrays in, preprocessing presets on top.

Three steps, kept apart on purpose:

1. :func:`load_images` reads raw pixels (an :class:`ImageSet`) from an image
   folder, a single image, a ``.npy`` or a ``.npz`` file. It picks *which*
   images to use before decoding any of them (seeded, class-balanced when the
   folder has one sub-folder per class), so ``samples=300`` on a folder of
   50,000 photos decodes 300 files.
2. A :class:`Preset` (data in ``calibration/presets.toml``) turns raw pixels into
   what the model was trained on: ``preset.apply(imageset.images)``.
3. :func:`representative_dataset` feeds those floats to the TFLite converter,
   or :func:`fold_preprocessing` moves the preset inside the model so the
   deployed model takes raw 0..255 pixels.

:func:`calibration_record` says what was used (source, count, seed, preset,
resize, per-class counts, warnings) for the run report.

Policies (also in ``calibration/README.md``):

- Folder layout: only images (unlabelled), or only sub-folders (one per class,
  labelled; the label is the index of the folder name in sorted order; only
  images directly inside a class folder count). A folder that mixes loose images
  with sub-folders is refused rather than guessed at. Hidden files and folders
  (name starts with ``.``) are ignored, and so are files that are not
  JPEG/PNG/BMP (by extension, case-insensitive).
- Colour: greyscale becomes RGB by repeating the channel; transparency (RGBA,
  LA, palette with alpha) is composited on black; a 1-channel model gets PIL's
  luminance ("L", ITU-R 601-2). 16-bit images are scaled to 8 bits.
- Resize: ``"crop"`` scales the image (PIL bilinear, antialiased when
  shrinking) so it covers HxW -- for a square target, the shorter side becomes
  the target size -- then cuts the centre HxW; ``"stretch"`` resizes straight
  to HxW (bilinear), ignoring the aspect ratio. Images already HxW are not
  touched. Arrays (``.npy``/``.npz``) are never resized: their H, W, C must
  match the model.
- A file that cannot be decoded stops the load with a :class:`DataError` naming
  it (no silent skipping: the count you asked for is the count you get).
- Arrays: ``uint8`` (or integer arrays within 0..255) are raw pixels; float
  arrays are kept as float32 with ``raw_is_pixels=False``: presets still apply
  to them as if they were 0..255 pixels, so an array that is already
  preprocessed goes with ``--preset raw`` (which passes values through).
"""

from __future__ import annotations

import errno
import math
import os
import re
import stat
import struct
import warnings
import zipfile
import zlib
from edgeresnet._util.toml import tomllib
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import Callable, Iterable, Iterator, Optional, Sequence, Union

import numpy as np

from edgeresnet._util.validate import whole_number
from edgeresnet.errors import ConfigError, DataError, EdgeResNetWarning

DEFAULT_SAMPLES = 300
MIN_RECOMMENDED_SAMPLES = 100

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")
ARRAY_EXTENSIONS = (".npy", ".npz")
RESIZE_POLICIES = ("crop", "stretch")
CHANNEL_ORDERS = ("rgb", "bgr")
PRESETS_FILE = "presets.toml"

ProgressFn = Callable[[int, int], None]
PathLike = Union[str, os.PathLike]

_KINDS = "JPEG/PNG/BMP"
_WHAT_TO_PASS = "pass a folder of JPEG/PNG/BMP images (one sub-folder per class for labels) or a .npy/.npz array"


# ---------------------------------------------------------------------- ImageSet


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
        chosen = _pick(len(self), self.labels, samples, int(seed), np.ones(len(self), dtype=bool))
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


# ---------------------------------------------------------------------- presets


@dataclass(frozen=True)
class Preset:
    """Raw 0..255 pixels -> model input: optional RGB->BGR flip, then ``(x * scale - mean) / std``.

    ``mean`` and ``std`` hold one value (all channels) or three (per channel,
    in the order *after* the flip). A 1-channel (greyscale) image uses the first
    value of each.
    """

    name: str
    description: str
    scale: float = 1.0
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    channel_order: str = "rgb"
    matches: tuple[str, ...] = ()  # training pipelines this preset reproduces

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name.isidentifier():
            raise ConfigError(f"preset name must be a plain word like 'torch', got {self.name!r}")
        label = f"preset {self.name!r}"
        if not isinstance(self.description, str) or not self.description.strip():
            raise ConfigError(f"{label} needs a description, got {self.description!r}")
        if isinstance(self.scale, bool) or not isinstance(self.scale, (int, float)) or not (
            math.isfinite(self.scale) and self.scale > 0
        ):
            raise ConfigError(f"{label}: scale must be a positive number, got {self.scale!r}")
        object.__setattr__(self, "scale", float(self.scale))
        for key in ("mean", "std"):
            value = getattr(self, key)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                value = (value,)
            if not isinstance(value, (list, tuple)) or len(value) not in (1, 3) or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value
            ):
                raise ConfigError(f"{label}: {key} must be 1 or 3 finite numbers, got {value!r}")
            object.__setattr__(self, key, tuple(float(v) for v in value))
        if any(s <= 0 for s in self.std):
            raise ConfigError(f"{label}: std values must be positive, got {self.std!r}")
        if self.channel_order not in CHANNEL_ORDERS:
            raise ConfigError(f"{label}: channel_order must be rgb or bgr, got {self.channel_order!r}")
        if isinstance(self.matches, str) or not all(isinstance(m, str) for m in self.matches):
            raise ConfigError(f"{label}: matches must be a list of strings, got {self.matches!r}")
        object.__setattr__(self, "matches", tuple(self.matches))

    @property
    def is_identity(self) -> bool:
        """True when ``apply`` only converts to float32 (the ``raw`` preset)."""
        return (
            self.channel_order == "rgb"
            and self.scale == 1.0
            and all(m == 0.0 for m in self.mean)
            and all(s == 1.0 for s in self.std)
        )

    def channel_stats(self, channels: int) -> tuple[np.ndarray, np.ndarray]:
        """(mean, std) as float32 arrays of length ``channels`` (1 channel: the first values)."""
        if channels == 1:
            mean, std = self.mean[:1], self.std[:1]
        elif channels == 3 or len(self.mean) == len(self.std) == 1:
            mean = self.mean if len(self.mean) == channels else self.mean * channels
            std = self.std if len(self.std) == channels else self.std * channels
        else:
            raise DataError(
                f"preset {self.name!r} has per-channel values for 3 channels but the images have {channels}; "
                "use 1- or 3-channel images"
            )
        return np.asarray(mean, dtype=np.float32), np.asarray(std, dtype=np.float32)

    def flips(self, channels: int) -> bool:
        """Whether the channel axis is reversed (RGB -> BGR); only for 3 channels."""
        return channels == 3 and self.channel_order == "bgr"

    def apply(self, images: np.ndarray) -> np.ndarray:
        """Raw pixels (..., C) in 0..255 -> float32 model input, a new array.

        Float input outside 0..255 is refused (unless this preset passes values
        through), because applying a preset twice fails silently otherwise.
        """
        x = np.asarray(images)
        if x.ndim < 1 or x.shape[-1] == 0:
            raise DataError(f"images need a channel axis, got shape {x.shape}")
        if self.is_identity:
            return np.array(x, dtype=np.float32, copy=True)
        if x.dtype != np.uint8 and x.size:
            lo, hi = float(np.min(x)), float(np.max(x))
            if not (math.isfinite(lo) and math.isfinite(hi)) or lo < 0.0 or hi > 255.0:
                raise DataError(
                    f"preset {self.name!r} expects raw 0..255 pixels but the values span [{lo:g}, {hi:g}]; "
                    "for data that is already preprocessed use --preset raw"
                )
        channels = int(x.shape[-1])
        mean, std = self.channel_stats(channels)
        out = np.array(x[..., ::-1] if self.flips(channels) else x, dtype=np.float32, copy=True)
        out *= np.float32(self.scale)
        out -= mean
        out /= std
        return out

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "description": self.description,
            "scale": self.scale,
            "mean": list(self.mean),
            "std": list(self.std),
            "channel_order": self.channel_order,
            "matches": list(self.matches),
        }


def presets_path() -> Path:
    """``calibration/presets.toml`` in a checkout, or its copy inside an installed wheel."""
    from edgeresnet._util.resources import resource_dir

    return resource_dir("calibration") / PRESETS_FILE


@lru_cache(maxsize=8)
def _read_presets(path: str) -> tuple[Preset, ...]:
    try:
        with open(path, "rb") as fh:
            doc = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"preset file {path} is missing; reinstall edgeresnet") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML ({exc}); fix the file") from None
    table = doc.get("presets")
    if not isinstance(table, dict) or not table:
        raise ConfigError(f"{path} has no [presets.<name>] tables; add at least one preset")
    known = {"description", "scale", "mean", "std", "channel_order", "matches"}
    presets = []
    for name, entry in table.items():
        if not isinstance(entry, dict):
            raise ConfigError(f"{path}: presets.{name} must be a table, got {entry!r}")
        unknown = sorted(set(entry) - known)
        if unknown:
            raise ConfigError(
                f"{path}: preset {name!r} has unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(known))}"
            )
        if "description" not in entry:
            raise ConfigError(f"{path}: preset {name!r} needs a description")
        try:
            presets.append(Preset(name=name, **entry))
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from None
    return tuple(presets)


def load_presets(path: Optional[PathLike] = None) -> dict[str, Preset]:
    """All presets by name, from ``path`` or the bundled ``calibration/presets.toml``."""
    p = Path(path) if path is not None else presets_path()
    return {preset.name: preset for preset in _read_presets(str(p.resolve()))}


def get_preset(name: str) -> Preset:
    """The preset called ``name``; :class:`ConfigError` listing the choices otherwise."""
    presets = load_presets()
    key = name.strip().lower() if isinstance(name, str) else name
    if key not in presets:
        raise ConfigError(f"unknown preset {name!r}; choose one of {', '.join(presets)}")
    return presets[key]


# ---------------------------------------------------------------------- loading


def load_images(
    path: PathLike,
    input_shape: tuple[int, int, int],
    samples: Optional[int] = None,
    seed: int = 0,
    resize: str = "crop",
    exclude: Optional[Iterable[str]] = None,
    progress: Optional[ProgressFn] = None,
) -> ImageSet:
    """Read up to ``samples`` images for a model taking ``input_shape`` (H, W, C).

    ``path`` is an image folder (flat: unlabelled; one sub-folder per class:
    labelled by sorted folder name), one image file, a ``.npy`` (N, H, W, C)
    array, or a ``.npz`` with ``x``/``images`` and optional ``y``/``labels``
    (and ``class_names``). ``samples=None`` takes everything.

    Which images are used is decided before anything is decoded: a seeded
    shuffle, or for labelled data a seeded round-robin over the classes (so 50
    samples from 10 classes give 5 of each; a class that runs out drops out).
    ``exclude`` holds ``paths`` of an earlier load to leave out (for an
    evaluation set disjoint from calibration). Resize policy: see the module
    docstring (``"crop"`` or ``"stretch"``; arrays are never resized).

    ``progress(done, total)`` is called after each decoded image.
    """
    source = _open_source(path, input_shape, samples, seed, resize, exclude, progress)
    return source if isinstance(source, ImageSet) else source.load(progress)


def stream_images(
    path: PathLike,
    input_shape: tuple[int, int, int],
    samples: Optional[int] = None,
    seed: int = 0,
    resize: str = "crop",
    exclude: Optional[Iterable[str]] = None,
) -> "ImageStream":
    """The images :func:`load_images` would read, as an :class:`ImageStream` decoded a batch at a time.

    Same arguments, same seeded choice and order of files, same class order and
    the same pixels; only the memory differs: nothing is decoded until a batch
    is asked for. ``.npy``/``.npz`` arrays are read into memory as
    :func:`load_images` reads them (the chosen rows only).
    """
    source = _open_source(path, input_shape, samples, seed, resize, exclude, None)
    return ImageStream.from_imageset(source) if isinstance(source, ImageSet) else source


def _open_source(path, input_shape, samples, seed, resize, exclude, progress) -> Union[ImageSet, "ImageStream"]:
    """Checked arguments -> the chosen rows of an array file (loaded) or the chosen image files (not decoded)."""
    shape = _check_shape(input_shape)
    _check_load_args(samples, seed, resize)
    p = Path(path)
    if not p.exists():
        raise DataError(f"{p}: no such file or folder; {_WHAT_TO_PASS}")
    _check_special(p)
    excluded = {os.path.abspath(e) for e in (exclude or ())}
    if p.suffix.lower() in ARRAY_EXTENSIONS:
        return _load_array(p, shape, samples, int(seed), excluded, progress)
    return _select_files(p, shape, samples, int(seed), resize, excluded)


def _check_load_args(samples, seed, resize) -> None:
    if samples is not None and (isinstance(samples, bool) or not isinstance(samples, (int, np.integer)) or samples <= 0):
        raise ConfigError(f"samples must be a positive number of images (or None for all), got {samples!r}")
    if resize not in RESIZE_POLICIES:
        raise ConfigError(f"resize must be crop or stretch, got {resize!r}")
    whole_number("seed", seed, 0)


def _select_files(p: Path, shape, samples, seed: int, resize: str, excluded) -> "ImageStream":
    """The seeded choice of image files of a folder (or one image file), not decoded yet."""
    _check_special(p)
    suffix = p.suffix.lower()
    if p.is_dir():
        files, labels, class_names = _scan_folder(p)
    elif suffix in IMAGE_EXTENSIONS:
        files, labels, class_names = [os.path.abspath(p)], None, None
    else:
        kind = f"a {suffix} file" if suffix else "a file without an extension"
        raise DataError(f"{p} is {kind}; {_WHAT_TO_PASS}")
    label_arr = None if labels is None else np.asarray(labels, dtype=np.int64)
    allowed = np.array([f not in excluded for f in files], dtype=bool)
    if not allowed.any():
        raise DataError(
            f"all {len(files)} images in {p} are excluded (already used, e.g. for calibration); "
            "pass a separate folder"
        )
    if shape[2] not in (1, 3):
        raise ConfigError(
            f"image files give 1 or 3 channels but the model takes {shape[2]}; pass a .npy/.npz array instead"
        )
    chosen = _pick(len(files), label_arr, samples, seed, allowed)
    return ImageStream(
        shape=shape,
        files=tuple(files[i] for i in chosen),
        labels=None if label_arr is None else label_arr[chosen],
        class_names=class_names,
        source=str(p),
        resize=resize,
        requested=samples,
        available=int(allowed.sum()),
    )


# How many images are decoded ahead of the consumer, in batches (bounded memory).
PREFETCH_BATCHES = 2
DEFAULT_BATCH = 64


def _decode_workers() -> int:
    return max(1, min(8, os.cpu_count() or 1))


@dataclass(frozen=True, eq=False)
class ImageStream:
    """The chosen images of a source, decoded (in threads) and preprocessed one batch at a time.

    ``files`` (absolute paths, in the seeded order of :func:`list_images`) are
    decoded with the same :func:`read_image` code the device side uses, so host
    and device see identical pixels. A stream made from an in-memory
    :class:`ImageSet` (arrays, the built-in digits) slices its rows instead.
    ``preset`` (None: raw pixels as float32) turns pixels into model inputs;
    :meth:`with_preset` gives a copy with another one. At most
    ``PREFETCH_BATCHES`` batches are decoded ahead, so memory does not grow with
    the number of images.
    """

    shape: tuple[int, int, int]
    files: tuple[str, ...] = ()
    labels: Optional[np.ndarray] = None
    class_names: Optional[tuple[str, ...]] = None
    source: str = ""
    resize: str = "crop"
    requested: Optional[int] = None
    available: Optional[int] = None
    rows: Optional[np.ndarray] = None  # in memory instead of files (arrays, the built-in digits)
    row_paths: tuple[str, ...] = ()
    preset: Optional["Preset"] = None

    @classmethod
    def from_imageset(cls, images: ImageSet) -> "ImageStream":
        return cls(
            shape=images.shape, labels=images.labels, class_names=images.class_names, source=images.source,
            requested=images.requested, available=images.available, rows=images.images, row_paths=images.paths,
        )

    @classmethod
    def from_arrays(cls, x: np.ndarray, labels: Optional[np.ndarray] = None) -> "ImageStream":
        """Model inputs already in memory (any (N, ...) float array), e.g. the ``(x, y)`` pairs of the Python API."""
        x = np.asarray(x)
        return cls(shape=tuple(int(d) for d in x.shape[1:]), rows=x,
                   labels=None if labels is None else np.asarray(labels, dtype=np.int64))

    def with_preset(self, preset: Optional["Preset"]) -> "ImageStream":
        from dataclasses import replace

        return replace(self, preset=preset)

    def __len__(self) -> int:
        return len(self.rows) if self.rows is not None else len(self.files)

    @property
    def labelled(self) -> bool:
        return self.labels is not None

    @property
    def paths(self) -> tuple[str, ...]:
        return self.row_paths if self.rows is not None else self.files

    def pixels(self, indices: Sequence[int]) -> np.ndarray:
        """Raw pixels (uint8, or float32 for float arrays) of the images at ``indices``, decoded in threads."""
        idx = [int(i) for i in indices]
        if self.rows is not None:
            return self.rows[np.asarray(idx, dtype=np.int64)]
        out = np.empty((len(idx),) + tuple(self.shape), dtype=np.uint8)
        if len(idx) == 1:
            out[0] = _decode(self.files[idx[0]], self.shape, self.resize)[0]
            return out
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=min(_decode_workers(), len(idx))) as pool:
            for j, (pixels, _) in enumerate(pool.map(lambda i: _decode(self.files[i], self.shape, self.resize), idx)):
                out[j] = pixels
        return out

    def inputs(self, indices: Sequence[int]) -> np.ndarray:
        """Model inputs (float32) of the images at ``indices``: pixels with the preset applied."""
        x = self.pixels(indices)
        return self.preset.apply(x) if self.preset is not None else np.asarray(x, dtype=np.float32)

    def batches(self, batch_size: int = DEFAULT_BATCH, order: Optional[Sequence[int]] = None,
                prefetch: int = PREFETCH_BATCHES,
                chunks: Optional[Sequence[Sequence[int]]] = None) -> Iterator[tuple[np.ndarray, Optional[np.ndarray]]]:
        """(model inputs, labels or None) ``batch_size`` images at a time, in ``order`` (default: stream order),
        or exactly the batches of indices in ``chunks`` (a cluster worker's shard).

        The next ``prefetch`` batches are decoded in a background thread while
        the caller works on the current one.
        """
        if chunks is not None:
            chunks = [np.asarray(c, dtype=np.int64) for c in chunks]
        else:
            if batch_size < 1:
                raise ConfigError(f"batch_size must be positive, got {batch_size}")
            order = np.arange(len(self)) if order is None else np.asarray(order, dtype=np.int64)
            chunks = [order[s : s + batch_size] for s in range(0, len(order), batch_size)]
        label = (lambda c: self.labels[c]) if self.labels is not None else (lambda c: None)
        if prefetch < 1 or len(chunks) < 2:
            for c in chunks:
                yield self.inputs(c), label(c)
            return
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=1) as pool:
            pending = [pool.submit(self.inputs, c) for c in chunks[:prefetch]]
            for k, c in enumerate(chunks):
                x = pending.pop(0).result()
                if k + prefetch < len(chunks):
                    pending.append(pool.submit(self.inputs, chunks[k + prefetch]))
                yield x, label(c)

    def predict(self, fn: Callable[[np.ndarray], np.ndarray], batch_size: int = DEFAULT_BATCH,
                progress: Optional[ProgressFn] = None) -> np.ndarray:
        """``fn`` (a batch of model inputs -> outputs) over the whole stream; only the outputs are kept."""
        out, done, total = [], 0, len(self)
        for x, _ in self.batches(batch_size):
            y = np.asarray(fn(x), dtype=np.float32)
            out.append(y.reshape(len(x), -1))
            done += len(x)
            if progress is not None:
                progress(done, total)
        return np.concatenate(out) if out else np.zeros((0, 0), np.float32)

    def load(self, progress: Optional[ProgressFn] = None) -> ImageSet:
        """All images in memory as an :class:`ImageSet` (for small sets: calibration, accuracy recovery)."""
        if self.rows is not None:
            return ImageSet(images=self.rows, labels=self.labels, class_names=self.class_names, source=self.source,
                            paths=self.row_paths, requested=self.requested, available=self.available)
        out = np.empty((len(self.files),) + tuple(self.shape), dtype=np.uint8)
        resized = 0
        for i, f in enumerate(self.files):
            out[i], was_resized = _decode(f, self.shape, self.resize)
            resized += was_resized
            if progress is not None:
                progress(i + 1, len(self.files))
        return ImageSet(
            images=out,
            labels=self.labels,
            class_names=self.class_names,
            source=self.source,
            paths=self.files,
            raw_is_pixels=True,
            balanced=self.labels is not None,
            requested=self.requested,
            available=self.available,
            resized=resized,
        )


def list_images(
    path: PathLike, samples: Optional[int] = None, seed: int = 0
) -> tuple[list[str], Optional[np.ndarray], Optional[tuple[str, ...]]]:
    """The image files ``load_images(path, ..., samples=samples, seed=seed)`` decodes, without decoding them.

    Returns (absolute paths, labels or None, class names or None), in the order
    :func:`load_images` would read them, so a device can decode and run them a
    batch at a time (:func:`read_image`) and still use exactly the images the
    host evaluated. ``path`` is an image folder or one image file.
    """
    if samples is not None and (isinstance(samples, bool) or not isinstance(samples, (int, np.integer)) or samples <= 0):
        raise ConfigError(f"samples must be a positive number of images (or None for all), got {samples!r}")
    p = Path(path)
    if not p.exists():
        raise DataError(f"{p}: no such file or folder; pass a folder of {_KINDS} images")
    _check_special(p)
    if p.is_dir():
        files, labels, class_names = _scan_folder(p)
    elif p.suffix.lower() in IMAGE_EXTENSIONS:
        files, labels, class_names = [os.path.abspath(p)], None, None
    else:
        raise DataError(f"{p} is not an image folder; pass a folder of {_KINDS} images (one sub-folder per class)")
    label_arr = None if labels is None else np.asarray(labels, dtype=np.int64)
    chosen = _pick(len(files), label_arr, samples, int(seed), np.ones(len(files), dtype=bool))
    return [files[i] for i in chosen], None if label_arr is None else label_arr[chosen], class_names


def training_folder(path: PathLike, flag: str = "--train") -> tuple[list[str], tuple[str, ...]]:
    """An image folder to fine-tune on, scanned (nothing is read): (its image files, its class names, sorted:
    the label order). DataError unless it has at least 2 class folders and none of them is without images.

    Its files are checked with :func:`check_image_files`; a file cut short inside its pixel data is found only
    when it is decoded, as any image is (the DataError naming it).
    """
    files, labels, class_names = list_images(path)
    if class_names is None:
        raise DataError(f"{path} has no class sub-folders; {flag} needs one sub-folder of images per class")
    counts = np.bincount(labels, minlength=len(class_names))
    empty = [name for name, n in zip(class_names, counts) if n == 0]
    if empty:
        more = f" (and {len(empty) - 1} other class folder(s))" if len(empty) > 1 else ""
        raise DataError(
            f"{flag} class folder {Path(path) / empty[0]}{more} holds no {_KINDS} images, so its class cannot be "
            "learned; put that class's images in it or remove the folder"
        )
    if len(class_names) < 2:
        raise DataError(
            f"{flag} has a single class folder ({class_names[0]}); a classifier learns to tell classes apart: "
            "give one sub-folder of images for each of at least 2 classes"
        )
    return files, class_names


def check_image_files(paths: Sequence[str]) -> None:
    """Every file opens as an image (its header is read, not its pixels; about 0.2 ms a file), else the
    DataError naming the first that does not: a PDF renamed .jpg, an empty file, an unreadable one."""
    for path in paths:
        _check_header(path)


def _check_header(path: str) -> None:
    from PIL import Image

    with _image_errors(path):
        with Image.open(path):
            pass


def read_image(path: PathLike, input_shape: tuple[int, int, int], resize: str = "crop") -> np.ndarray:
    """One image file -> (H, W, C) uint8 pixels, decoded and resized exactly as :func:`load_images` does."""
    if resize not in RESIZE_POLICIES:
        raise ConfigError(f"resize must be crop or stretch, got {resize!r}")
    shape = _check_shape(input_shape)
    if shape[2] not in (1, 3):
        raise ConfigError(f"image files give 1 or 3 channels but the model takes {shape[2]}")
    if Path(path).exists():
        _check_special(Path(path))
    if not Path(path).is_file():
        raise DataError(f"{path}: no such image file; pass the path of a {_KINDS} image")
    return _decode(str(path), shape, resize)[0]


def _check_shape(input_shape) -> tuple[int, int, int]:
    try:
        shape = tuple(int(d) for d in input_shape)
    except (TypeError, ValueError):
        raise ConfigError(f"input_shape must be (H, W, C) integers, got {input_shape!r}") from None
    if len(shape) != 3 or min(shape) <= 0:
        raise ConfigError(f"input_shape must be three positive sizes (H, W, C), got {input_shape!r}")
    return shape


def _is_hidden(name: str) -> bool:
    return name.startswith(".")


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def _check_special(p: Path, what: str = "an image", fix: str = "remove it or pass a regular file") -> None:
    """A FIFO, device or socket would block or never end when read: refuse it by name, before opening it."""
    try:
        mode = p.stat().st_mode
    except OSError as exc:
        _unreadable_entry(str(p), exc)
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        raise DataError(f"{p} is not a regular file (a FIFO, device or socket), so it cannot be read as {what}; {fix}")


def _unreadable_entry(path: str, exc: OSError):
    if exc.errno == errno.ELOOP:
        raise DataError(f"{path} is a symbolic link loop; remove it or point it at an image") from None
    if exc.errno in (errno.EACCES, errno.EPERM):
        raise DataError(f"{path}: permission denied; make it readable") from None
    raise DataError(f"{path}: cannot read it ({exc.strerror or exc}); remove or replace it") from None


def _entries(folder: str) -> list:
    """Visible entries of ``folder``, sorted by name; special files and link loops refused by name."""
    try:
        entries = sorted((e for e in os.scandir(folder) if not _is_hidden(e.name)), key=lambda e: e.name)
    except PermissionError:
        raise DataError(f"{folder}: permission denied; make the folder readable") from None
    for e in entries:
        try:
            mode = e.stat().st_mode
        except FileNotFoundError:
            continue  # a dangling symbolic link: ignored, like any other non-image
        except OSError as exc:
            _unreadable_entry(e.path, exc)
        if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
            _check_special(Path(e.path))
    return entries


def _scan_folder(root: Path) -> tuple[list[str], Optional[list[int]], Optional[tuple[str, ...]]]:
    """Sorted absolute image paths, their labels and the class names (None, None when flat)."""
    root_abs = os.path.abspath(root)
    entries = _entries(root_abs)
    dirs = [e for e in entries if e.is_dir()]
    files = [e for e in entries if e.is_file()]
    loose = [e.path for e in files if _is_image(e.name)]
    if not entries:
        raise DataError(f"{root} is empty; put {_KINDS} images in it (one sub-folder per class for labelled data)")
    if dirs and loose:
        shown = ", ".join(d.name for d in dirs[:3]) + (", ..." if len(dirs) > 3 else "")
        raise DataError(
            f"{root} mixes {len(loose)} loose image(s) with {len(dirs)} sub-folder(s) ({shown}); "
            "put every image in a class sub-folder (labelled) or remove the sub-folders (unlabelled)"
        )
    if loose:
        return loose, None, None
    if not dirs:
        raise DataError(f"{root} holds {len(files)} file(s), none {_KINDS} ({_extension_summary(files)}); {_WHAT_TO_PASS}")

    class_names = tuple(d.name for d in dirs)
    paths: list[str] = []
    labels: list[int] = []
    nested = []
    for label, d in enumerate(dirs):
        inner = _entries(d.path)
        images = [e.path for e in inner if e.is_file() and _is_image(e.name)]
        if not images and any(e.is_dir() for e in inner):
            nested.append(d.name)
        paths.extend(images)
        labels.extend([label] * len(images))
    if not paths:
        if nested:
            raise DataError(
                f"{root}/{nested[0]} holds folders, not images; point at {Path(root) / nested[0]} "
                "(its sub-folders are the classes)"
            )
        raise DataError(
            f"{root} has {len(dirs)} class folder(s) but no {_KINDS} images in them; "
            "put the images of each class directly inside its folder"
        )
    return paths, labels, class_names


def _extension_summary(files) -> str:
    counts = Counter(Path(e.name).suffix.lower() or "no extension" for e in files)
    return ", ".join(f"{n} {ext}" for ext, n in counts.most_common(4)) + (", ..." if len(counts) > 4 else "")


def _pick(n: int, labels: Optional[np.ndarray], samples: Optional[int], seed: int, allowed: np.ndarray) -> np.ndarray:
    """Indices into 0..n-1 (only where ``allowed``): seeded shuffle, or round-robin over classes."""
    rng = np.random.default_rng(seed)
    candidates = np.flatnonzero(allowed)
    want = len(candidates) if samples is None else min(samples, len(candidates))
    if labels is None:
        return candidates[rng.permutation(len(candidates))[:want]]
    classes = np.unique(labels[candidates])
    class_order = classes[rng.permutation(len(classes))]
    pools = []
    for c in class_order:
        members = candidates[labels[candidates] == c]
        pools.append(members[rng.permutation(len(members))])
    # Round-robin: one from each class (in the seeded class order) per round.
    longest = max(len(pool) for pool in pools)
    grid = np.full((longest, len(pools)), -1, dtype=np.int64)
    for j, pool in enumerate(pools):
        grid[: len(pool), j] = pool
    order = grid.reshape(-1)
    return order[order >= 0][:want]


@contextmanager
def _image_errors(path: str):
    """What Pillow raises on a file that is not a whole, readable image, as the DataError naming ``path``."""
    from PIL import Image, UnidentifiedImageError

    try:
        yield
    except Image.DecompressionBombError as exc:
        pixels = re.search(r"\((\d+) pixels\)", str(exc))
        size = f"{int(pixels.group(1)):,} pixels" if pixels else "too many pixels"
        raise DataError(
            f"{path}: the image has {size}, over Pillow's decompression-bomb limit; "
            "resize or remove it"
        ) from None
    except (UnidentifiedImageError, OSError, EOFError, SyntaxError, ValueError, struct.error) as exc:
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise DataError(f"{path}: cannot read this image ({reason}); replace or remove the file") from None


def _decode(path: str, shape: tuple[int, int, int], resize: str) -> tuple[np.ndarray, bool]:
    """One image file -> (H, W, C) uint8, and whether it was resized."""
    from PIL import Image

    h, w, c = shape
    with _image_errors(path):
        with Image.open(path) as im:
            _warn_if_huge(path, im.size, Image.MAX_IMAGE_PIXELS)
            im.load()
            im = _to_mode(im, "L" if c == 1 else "RGB")
    was_resized = im.size != (w, h)
    if was_resized:
        im = _resize(im, w, h, resize)
    arr = np.asarray(im, dtype=np.uint8)
    return (arr[..., None] if arr.ndim == 2 else arr), was_resized


def _warn_if_huge(path: str, size: tuple[int, int], limit: Optional[int]) -> None:
    """edgeresnet's own warning, naming the file, where Pillow warns of a possible decompression bomb.

    (Pillow's own warning names no file; the CLI hides it. No ``catch_warnings``
    here: images are decoded in threads, and that is not thread-safe.)
    """
    if limit and size[0] * size[1] > limit:
        warnings.warn(
            f"{path}: the image is {size[0]}x{size[1]} pixels, large enough to be a decompression bomb; "
            "it was read, but check that the file is what you meant to use", EdgeResNetWarning, stacklevel=3,
        )


def _to_mode(im, mode: str):
    """Any PIL image -> "RGB" or "L"; alpha composited on black, 16-bit scaled to 8 bits."""
    from PIL import Image

    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(im).astype(np.float64)
        peak = 65535.0 if im.mode.startswith("I;16") or arr.max(initial=0) > 255 else 255.0
        im = Image.fromarray(np.clip(np.rint(arr * (255.0 / peak)), 0, 255).astype(np.uint8), "L")
    elif im.mode == "F":
        raise ValueError("32-bit float pixels are not supported; save 8-bit images or a .npy array")
    has_alpha = im.mode in ("RGBA", "LA", "RGBa", "La", "PA") or (im.mode == "P" and "transparency" in im.info)
    if has_alpha:
        rgba = im.convert("RGBA")
        black = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        im = Image.alpha_composite(black, rgba).convert("RGB")
    if im.mode != mode:
        im = im.convert(mode)  # L -> RGB repeats the channel; RGB -> L is ITU-R 601-2 luminance
    return im


def _resize(im, w: int, h: int, policy: str):
    from PIL import Image

    bilinear = Image.Resampling.BILINEAR
    if policy == "stretch":
        return im.resize((w, h), bilinear)
    src_w, src_h = im.size
    factor = max(w / src_w, h / src_h)
    new_w = max(w, int(round(src_w * factor)))
    new_h = max(h, int(round(src_h * factor)))
    if (new_w, new_h) != (src_w, src_h):
        im = im.resize((new_w, new_h), bilinear)
    left = (new_w - w) // 2
    top = (new_h - h) // 2
    return im.crop((left, top, left + w, top + h))


def _load_array(p: Path, shape, samples, seed, excluded, progress) -> ImageSet:
    _check_special(p)  # np.load on a FIFO would wait forever
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
    chosen = _pick(n, labels, samples, seed, allowed)
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


# ---------------------------------------------------------------------- record


@dataclass(frozen=True)
class CalibrationRecord:
    """What calibration used, for the run report."""

    source: str
    count: int
    seed: int
    preset: str
    resize: str
    balanced: bool
    per_class: Optional[dict[str, int]]
    warnings: tuple[str, ...] = ()
    requested: Optional[int] = None
    available: Optional[int] = None
    resized: Optional[int] = 0
    raw_is_pixels: bool = True

    def to_dict(self) -> dict:
        return {
            "source": self.source,
            "count": self.count,
            "requested": self.requested,
            "available": self.available,
            "seed": self.seed,
            "preset": self.preset,
            "resize": self.resize,
            "resized": self.resized,
            "balanced": self.balanced,
            "per_class": None if self.per_class is None else dict(self.per_class),
            "raw_is_pixels": self.raw_is_pixels,
            "warnings": list(self.warnings),
        }


def calibration_record(imageset: ImageSet, preset: Union[str, Preset], seed: int, resize: str) -> CalibrationRecord:
    """Describe ``imageset`` as calibration data, with warnings about its size and class mix."""
    preset_name = preset.name if isinstance(preset, Preset) else str(preset)
    n = len(imageset)
    warnings = []
    if n < MIN_RECOMMENDED_SAMPLES:
        warnings.append(f"only {n} samples; at least {MIN_RECOMMENDED_SAMPLES} recommended")
    if imageset.requested is not None and imageset.requested > n:
        warnings.append(f"asked for {imageset.requested} samples but the source has only {n}")
    per_class = imageset.per_class()
    if per_class:
        missing = [name for name, k in per_class.items() if k == 0]
        if missing:
            shown = ", ".join(missing[:5]) + (", ..." if len(missing) > 5 else "")
            warnings.append(f"no samples of {len(missing)} class(es): {shown}")
        present = [k for k in per_class.values() if k > 0]
        if present and max(present) > 2 * min(present):
            warnings.append(
                f"uneven classes: {min(present)} to {max(present)} samples per class "
                "(some classes have fewer images)"
            )
    if not imageset.raw_is_pixels and n:
        hi = float(np.max(imageset.images))
        preset_obj = preset if isinstance(preset, Preset) else None
        identity = preset_obj.is_identity if preset_obj is not None else preset_name == "raw"
        if hi <= 1.0 and not identity:
            warnings.append(
                f"array values are at most {hi:g}, not 0..255 pixels; "
                f"preset {preset_name!r} assumes raw pixels (use --preset raw if the array is already preprocessed)"
            )
    return CalibrationRecord(
        source=imageset.source,
        count=n,
        seed=int(seed),
        preset=preset_name,
        resize=resize,
        balanced=bool(imageset.balanced and imageset.labelled),
        per_class=per_class,
        warnings=tuple(warnings),
        requested=imageset.requested,
        available=imageset.available,
        resized=imageset.resized,
        raw_is_pixels=imageset.raw_is_pixels,
    )


# ---------------------------------------------------------------------- converter side


def representative_dataset(samples: np.ndarray, progress: Optional[ProgressFn] = None) -> Callable[[], Iterator]:
    """What ``TFLiteConverter.representative_dataset`` takes: a callable yielding ``[x[i:i+1]]`` float32.

    ``samples`` are preprocessed model inputs (N, H, W, C); ``progress(done, total)``
    counts the samples the converter has consumed.
    """
    data = np.asarray(samples, dtype=np.float32)
    if data.ndim < 2 or len(data) == 0:
        raise DataError(f"calibration needs a batch of samples (N, H, W, C), got shape {data.shape}")

    def gen():
        total = len(data)
        for i in range(total):
            yield [data[i : i + 1]]
            if progress is not None:
                progress(i + 1, total)

    return gen


# ITU-R 601-2 luma, the weights PIL's convert("L") uses: a colour image becomes the
# same grey through grey_from_rgb as through edgeresnet's loader for 1-channel models.
LUMA_WEIGHTS = (0.299, 0.587, 0.114)


def grey_from_rgb(model):
    """A new tf_keras model taking RGB images in front of a 1-channel (greyscale) ``model``.

    Phone runtimes hand classifiers RGB frames (MediaPipe's ImageClassifier
    refuses inputs that are not 3 channels), so a greyscale model ships with its
    grey conversion inside: a frozen 1x1 ``Conv2D`` named ``rgb_to_grey`` with
    the luma weights (they sum to 1, so an image whose channels are equal
    passes through unchanged). It converts to one ``CONV_2D`` op that every
    target runs.
    """
    from edgeresnet._util import tf as _tf

    keras = _tf.tf_keras()
    if not isinstance(model, keras.Model):
        raise ConfigError(f"an RGB front needs a tf_keras model, got {type(model).__name__}")
    in_shape = tuple(model.input_shape[1:]) if not isinstance(model.input_shape, list) else None
    if in_shape is None or len(in_shape) != 3 or in_shape[2] != 1 or None in in_shape[:2]:
        raise ConfigError(f"an RGB front is for one fixed (H, W, 1) greyscale input, got {model.input_shape}")
    inputs = keras.Input(shape=in_shape[:2] + (3,), name="rgb")
    conv = keras.layers.Conv2D(1, 1, use_bias=False, trainable=False, name="rgb_to_grey", dtype="float32")
    x = conv(inputs)
    conv.set_weights([np.asarray(LUMA_WEIGHTS, dtype=np.float32).reshape(1, 1, 3, 1)])
    return keras.Model(inputs, model(x), name=f"{model.name}_rgb")


def fold_preprocessing(model, preset: Union[str, Preset]):
    """A new tf_keras model taking raw 0..255 pixels: ``preset`` as a fixed 1x1 conv, then ``model``.

    The flip, scale, mean and std of the preset are one affine map per channel,
    so they become a single frozen ``Conv2D`` (kernel 1x1, weights =
    permutation x ``scale/std``, bias = ``-mean/std``) named
    ``preprocess_<preset>``. It converts to one ``CONV_2D`` op, which every
    target (XNNPACK, Edge TPU, GPU delegate) runs, and quantizes exactly
    (one non-zero weight per output channel). The ``raw`` preset adds nothing.
    """
    from edgeresnet._util import tf as _tf

    keras = _tf.tf_keras()
    preset = get_preset(preset) if isinstance(preset, str) else preset
    if not isinstance(model, keras.Model):
        raise ConfigError(
            f"folding preprocessing needs a tf_keras model, got {type(model).__name__}; load the model with tf_keras"
        )
    in_shape = tuple(model.input_shape[1:]) if not isinstance(model.input_shape, list) else None
    if in_shape is None or len(in_shape) != 3 or any(d is None for d in in_shape):
        raise ConfigError(
            f"folding preprocessing needs one fixed (H, W, C) image input, got {model.input_shape}"
        )
    channels = int(in_shape[2])
    mean, std = preset.channel_stats(channels)
    gain = (np.float64(preset.scale) / std.astype(np.float64)).astype(np.float32)
    offset = (-mean.astype(np.float64) / std.astype(np.float64)).astype(np.float32)
    flip = preset.flips(channels)
    inputs = keras.Input(shape=in_shape, name="pixels")
    x = inputs
    if not preset.is_identity:
        kernel = np.zeros((1, 1, channels, channels), dtype=np.float32)
        for out_c in range(channels):
            in_c = channels - 1 - out_c if flip else out_c
            kernel[0, 0, in_c, out_c] = gain[out_c]
        conv = keras.layers.Conv2D(
            channels, 1, use_bias=True, trainable=False, name=f"preprocess_{preset.name}", dtype="float32"
        )
        x = conv(x)
        conv.set_weights([kernel, offset])
    outputs = model(x)
    return keras.Model(inputs, outputs, name=f"{model.name}_{preset.name}_folded")

"""Image files and arrays in, raw pixels out: decoded, resized and streamed a batch at a time.

:func:`load_images` reads raw pixels (an :class:`~edgeresnet.device.imageset.ImageSet`)
from an image folder, a single image, a ``.npy`` or a ``.npz`` file. It picks
*which* images to use before decoding any of them
(:mod:`edgeresnet.device.image_files`: seeded, class-balanced when the folder
has one sub-folder per class), so ``samples=300`` on a folder of 50,000 photos
decodes 300 files. :func:`stream_images` gives the same images as an
:class:`ImageStream`, decoded a batch at a time; :func:`read_image` decodes one
file the same way (the device side's ``predict`` and ``eval``). A
:class:`~edgeresnet.device.presets.Preset` then turns the pixels into what the
model was trained on.

Policies (also in ``calibration/README.md``):

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
  it (no silent skipping: the count you asked for is the count you get); an
  image over Pillow's decompression-bomb limit is refused, one near it warned of.
"""

from __future__ import annotations

import os
import re
import struct
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Optional, Sequence, Union

import numpy as np

from edgeresnet._util.validate import whole_number
from edgeresnet.defaults import RESIZE_POLICIES
from edgeresnet.device.image_files import (
    ARRAY_EXTENSIONS,
    IMAGE_EXTENSIONS,
    KINDS,
    WHAT_TO_PASS,
    PathLike,
    check_samples,
    check_shape,
    check_special,
    list_images,
    pick,
    scan_folder,
)
from edgeresnet.device.imageset import ImageSet, load_array
from edgeresnet.device.presets import Preset
from edgeresnet.errors import ConfigError, DataError, EdgeResNetWarning


ProgressFn = Callable[[int, int], None]


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
    shape = check_shape(input_shape)
    _check_load_args(samples, seed, resize)
    p = Path(path)
    if not p.exists():
        raise DataError(f"{p}: no such file or folder; {WHAT_TO_PASS}")
    check_special(p)
    excluded = {os.path.abspath(e) for e in (exclude or ())}
    if p.suffix.lower() in ARRAY_EXTENSIONS:
        return load_array(p, shape, samples, int(seed), excluded, progress)
    return _select_files(p, shape, samples, int(seed), resize, excluded)


def _check_load_args(samples, seed, resize) -> None:
    check_samples(samples)
    if resize not in RESIZE_POLICIES:
        raise ConfigError(f"resize must be crop or stretch, got {resize!r}")
    whole_number("seed", seed, 0)


def _select_files(p: Path, shape, samples, seed: int, resize: str, excluded) -> "ImageStream":
    """The seeded choice of image files of a folder (or one image file), not decoded yet."""
    check_special(p)
    suffix = p.suffix.lower()
    if p.is_dir():
        files, labels, class_names = scan_folder(p)
    elif suffix in IMAGE_EXTENSIONS:
        files, labels, class_names = [os.path.abspath(p)], None, None
    else:
        kind = f"a {suffix} file" if suffix else "a file without an extension"
        raise DataError(f"{p} is {kind}; {WHAT_TO_PASS}")
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
    chosen = pick(len(files), label_arr, samples, seed, allowed)
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

    ``files`` (absolute paths, in the seeded order of
    :func:`~edgeresnet.device.image_files.list_images`) are
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
            f"{flag} class folder {Path(path) / empty[0]}{more} holds no {KINDS} images, so its class cannot be "
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
    from PIL import Image

    for path in paths:
        with _image_errors(path):
            with Image.open(path):
                pass


def read_image(path: PathLike, input_shape: tuple[int, int, int], resize: str = "crop") -> np.ndarray:
    """One image file -> (H, W, C) uint8 pixels, decoded and resized exactly as :func:`load_images` does."""
    if resize not in RESIZE_POLICIES:
        raise ConfigError(f"resize must be crop or stretch, got {resize!r}")
    shape = check_shape(input_shape)
    if shape[2] not in (1, 3):
        raise ConfigError(f"image files give 1 or 3 channels but the model takes {shape[2]}")
    if Path(path).exists():
        check_special(Path(path))
    if not Path(path).is_file():
        raise DataError(f"{path}: no such image file; pass the path of a {KINDS} image")
    return _decode(str(path), shape, resize)[0]


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

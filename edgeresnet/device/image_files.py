"""Which image files a source holds, which of them are used, and whether they are safe to open.

The listing and choosing half of reading images (decoding is
:mod:`edgeresnet.device.images`); no TensorFlow, so a device picks exactly the
files the host picked.

Policies (also in ``calibration/README.md``):

- Folder layout: only images (unlabelled), or only sub-folders (one per class,
  labelled; the label is the index of the folder name in sorted order; only
  images directly inside a class folder count). A folder that mixes loose images
  with sub-folders is refused rather than guessed at. Hidden files and folders
  (name starts with ``.``) are ignored, and so are files that are not
  JPEG/PNG/BMP (by extension, case-insensitive).
- A FIFO, device or socket is refused by name before it is opened (reading it
  would block or never end); so are symbolic link loops and unreadable entries.
- Choice: a seeded shuffle, or for labelled data a seeded round-robin over the
  classes (:func:`pick`), decided before anything is decoded.
"""

from __future__ import annotations

import errno
import os
import stat
from collections import Counter
from pathlib import Path
from typing import Optional, Union

import numpy as np

from edgeresnet.errors import ConfigError, DataError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")
ARRAY_EXTENSIONS = (".npy", ".npz")

PathLike = Union[str, os.PathLike]

KINDS = "JPEG/PNG/BMP"  # the image files edgeresnet reads, as error messages name them
WHAT_TO_PASS = "pass a folder of JPEG/PNG/BMP images (one sub-folder per class for labels) or a .npy/.npz array"


def list_images(
    path: PathLike, samples: Optional[int] = None, seed: int = 0
) -> tuple[list[str], Optional[np.ndarray], Optional[tuple[str, ...]]]:
    """The image files ``load_images(path, ..., samples=samples, seed=seed)`` decodes, without decoding them.

    Returns (absolute paths, labels or None, class names or None), in the order
    :func:`~edgeresnet.device.images.load_images` would read them, so a device can decode and run them a
    batch at a time (:func:`~edgeresnet.device.images.read_image`) and still use exactly the images the
    host evaluated. ``path`` is an image folder or one image file.
    """
    check_samples(samples)
    p = Path(path)
    if not p.exists():
        raise DataError(f"{p}: no such file or folder; pass a folder of {KINDS} images")
    check_special(p)
    if p.is_dir():
        files, labels, class_names = scan_folder(p)
    elif p.suffix.lower() in IMAGE_EXTENSIONS:
        files, labels, class_names = [os.path.abspath(p)], None, None
    else:
        raise DataError(f"{p} is not an image folder; pass a folder of {KINDS} images (one sub-folder per class)")
    label_arr = None if labels is None else np.asarray(labels, dtype=np.int64)
    chosen = pick(len(files), label_arr, samples, int(seed), np.ones(len(files), dtype=bool))
    return [files[i] for i in chosen], None if label_arr is None else label_arr[chosen], class_names


def check_samples(samples) -> None:
    """``samples`` is a positive number of images, or None (all of them); :class:`ConfigError` otherwise."""
    if samples is not None and (isinstance(samples, bool) or not isinstance(samples, (int, np.integer)) or samples <= 0):
        raise ConfigError(f"samples must be a positive number of images (or None for all), got {samples!r}")


def check_shape(input_shape) -> tuple[int, int, int]:
    """``input_shape`` as three positive ints (H, W, C); :class:`ConfigError` otherwise."""
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


def check_special(p: Path, what: str = "an image", fix: str = "remove it or pass a regular file") -> None:
    """A FIFO, device or socket would block or never end when read: refuse it by name, before opening it.

    ``what`` and ``fix`` complete the :class:`DataError`: what the file was to be read as, and what to do.
    """
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
            check_special(Path(e.path))
    return entries


def scan_folder(root: Path) -> tuple[list[str], Optional[list[int]], Optional[tuple[str, ...]]]:
    """Sorted absolute image paths, their labels and the class names (None, None when flat).

    The folder layout policy of the module docstring: only images, or only class sub-folders.
    """
    root_abs = os.path.abspath(root)
    entries = _entries(root_abs)
    dirs = [e for e in entries if e.is_dir()]
    files = [e for e in entries if e.is_file()]
    loose = [e.path for e in files if _is_image(e.name)]
    if not entries:
        raise DataError(f"{root} is empty; put {KINDS} images in it (one sub-folder per class for labelled data)")
    if dirs and loose:
        shown = ", ".join(d.name for d in dirs[:3]) + (", ..." if len(dirs) > 3 else "")
        raise DataError(
            f"{root} mixes {len(loose)} loose image(s) with {len(dirs)} sub-folder(s) ({shown}); "
            "put every image in a class sub-folder (labelled) or remove the sub-folders (unlabelled)"
        )
    if loose:
        return loose, None, None
    if not dirs:
        raise DataError(f"{root} holds {len(files)} file(s), none {KINDS} ({_extension_summary(files)}); {WHAT_TO_PASS}")

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
            f"{root} has {len(dirs)} class folder(s) but no {KINDS} images in them; "
            "put the images of each class directly inside its folder"
        )
    return paths, labels, class_names


def _extension_summary(files) -> str:
    counts = Counter(Path(e.name).suffix.lower() or "no extension" for e in files)
    return ", ".join(f"{n} {ext}" for ext, n in counts.most_common(4)) + (", ..." if len(counts) > 4 else "")


def pick(n: int, labels: Optional[np.ndarray], samples: Optional[int], seed: int, allowed: np.ndarray) -> np.ndarray:
    """Indices into 0..n-1 (only where ``allowed``): seeded shuffle, or round-robin over classes.

    ``samples=None`` takes every allowed index. The choice edgeresnet makes everywhere, so host and
    device pick the same images for the same ``samples`` and ``seed``.
    """
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


def image_set_sha256(paths) -> Optional[str]:
    """One digest of the files ``paths`` name, whatever their order, names or folders: the sha256 of their contents'
    sorted sha256s. Two evaluations saw the same images exactly when their digests match. None when a path is not a
    readable regular file (rows of an array, a file gone since)."""
    import hashlib

    digests = []
    for path in paths:
        try:
            with open(path, "rb") as f:
                digests.append(hashlib.sha256(f.read()).hexdigest())
        except (OSError, TypeError):
            return None
    return hashlib.sha256("\n".join(sorted(digests)).encode()).hexdigest() if digests else None

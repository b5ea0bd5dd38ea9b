"""Atomic output: nothing half-written is ever left where the user looks.

A run writes into a hidden temporary folder beside ``--out`` and renames it
into place only at the end; a failure removes the temporary folder. Single
files are written to a temporary name and renamed.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Union

from .errors import OutputExistsError

PathLike = Union[str, Path]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def check_output_free(out: PathLike, overwrite: bool) -> Path:
    """Fail early (before any work) when ``out`` exists and ``overwrite`` is off."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise OutputExistsError(f"{out} exists and is a file; pass a folder path to --out")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise OutputExistsError(f"{out} already exists; pass --overwrite to replace it or choose another --out")
    parent = out.resolve().parent
    if not parent.exists():
        raise OutputExistsError(f"the parent folder {parent} of --out does not exist; create it first")
    return out


class StagedDir:
    """A temporary folder that becomes ``out`` on :meth:`commit`.

    Use as a context manager: leaving the block without committing (an
    exception) removes everything that was staged.
    """

    def __init__(self, out: PathLike, overwrite: bool = False):
        self.out = check_output_free(out, overwrite)
        self.overwrite = overwrite
        parent = self.out.resolve().parent
        self.path = Path(tempfile.mkdtemp(prefix=f".{self.out.name}.partial-", dir=parent))
        os.chmod(self.path, 0o777 & ~_umask())  # mkdtemp makes it private; the result is not
        self.committed = False

    def __enter__(self) -> "StagedDir":
        return self

    def __exit__(self, exc_type, exc, tb):
        if not self.committed:
            shutil.rmtree(self.path, ignore_errors=True)
        return False

    def commit(self) -> Path:
        """Move the staged folder into place (replacing ``out`` if allowed)."""
        check_output_free(self.out, self.overwrite)
        old = None
        if self.out.exists():
            old = self.out.with_name(f".{self.out.name}.old-{os.getpid()}")
            os.replace(self.out, old)
        os.replace(self.path, self.out)
        self.committed = True
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return self.out


def atomic_write_bytes(path: PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file and a rename."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it private; the result is not
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))

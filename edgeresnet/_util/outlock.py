"""One run per ``--out``: an advisory lock on ``.NAME.lock`` beside the output folder.

The kernel drops an ``flock`` when its process ends, even on SIGKILL, so a lock
file a killed run left behind is taken over, not obeyed. Only a file carrying
edgeresnet's owner record is ever taken over or removed.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path
from typing import Optional

from edgeresnet._util.files import PathLike, owner_record, write_error
from edgeresnet.errors import OutputError

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: runs are not locked
    fcntl = None


def lock_path(out: PathLike) -> Path:
    """The lock file of ``out``: ``.NAME.lock`` beside it."""
    r = Path(out).resolve()
    return r.with_name(f".{r.name}.lock")


@contextlib.contextmanager
def output_lock(out: PathLike):
    """Hold ``out``'s lock for a whole run; a run that finds it held is refused at once (OutputError).

    The lock is an advisory ``flock``: the kernel drops it when its process
    ends (even on SIGKILL), so a lock file a killed run left is taken over,
    not obeyed. Only a file carrying edgeresnet's owner record is ever taken
    over or removed; it is removed on the way out.
    """
    path = lock_path(out)
    fd = _take_lock(out, path)
    try:
        yield path
    finally:
        if fd is not None:
            with contextlib.suppress(OSError):
                if _is_open_file(fd, path):
                    path.unlink()
            os.close(fd)


def _take_lock(out: PathLike, path: Path) -> Optional[int]:
    """The locked file descriptor of ``path``, or None where the system or file system has no locks."""
    if fcntl is None:
        return None
    for _ in range(50):
        fd, created = _open_lock(path)
        if fd is None:
            continue  # removed by its owner between our two opens: try again
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = _lock_owner(fd)
            os.close(fd)
            pid = f" (pid {owner['pid']})" if owner else ""
            raise OutputError(
                f"another edgeresnet run{pid} is writing {out}; wait for it to finish or choose another --out"
            ) from None
        except OSError:  # no locks here (some network file systems): run as before, unlocked
            os.close(fd)
            if created:
                path.unlink(missing_ok=True)
            return None
        if not _is_open_file(fd, path) or (not created and _lock_owner(fd) is None):
            os.close(fd)  # its owner removed it, or it is being made: look again
            time.sleep(0.02)
            continue
        _write_owner(fd)
        return fd
    raise OutputError(
        f"{path} exists and is not an edgeresnet lock file; remove it if no edgeresnet run is writing {out}, "
        "or choose another --out"
    )


def _open_lock(path: Path) -> tuple[Optional[int], bool]:
    """(fd, created): a new lock file carrying our owner record, else the existing one; (None, False) when it vanished."""
    flags = os.O_RDWR | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags | os.O_CREAT | os.O_EXCL, 0o644)
        _write_owner(fd)  # before the lock: whoever opens it next sees whose it is
        return fd, True
    except FileExistsError:
        pass
    except OSError as exc:
        raise write_error(exc, path.parent, name_where=True) or exc
    try:
        return os.open(path, flags), False
    except FileNotFoundError:
        return None, False
    except OSError as exc:  # a symbolic link, a folder: not ours
        raise OutputError(f"{path} exists and is not an edgeresnet lock file ({exc.strerror}); move it away "
                          "or choose another --out") from None


def _write_owner(fd: int) -> None:
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps({"tool": "edgeresnet", **owner_record()}).encode(), 0)


def _lock_owner(fd: int) -> Optional[dict]:
    """The owner record in a lock file, or None when it holds none (empty, or not edgeresnet's)."""
    try:
        data = json.loads(os.pread(fd, 4096, 0))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("tool") == "edgeresnet" else None


def _is_open_file(fd: int, path: Path) -> bool:
    """Whether ``path`` is still the file open as ``fd`` (not removed or replaced meanwhile)."""
    try:
        st, fst = os.stat(path, follow_symlinks=False), os.fstat(fd)
    except OSError:
        return False
    return (st.st_dev, st.st_ino) == (fst.st_dev, fst.st_ino)

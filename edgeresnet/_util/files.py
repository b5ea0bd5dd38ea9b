"""Safe output: edgeresnet only ever replaces what it wrote itself.

* ``--out`` is checked before any work (:func:`check_output`): it may not be,
  contain or lie inside an input (model, --calib, --eval, --train), nor be the
  current folder, the home folder, a filesystem root or a repository root. An
  existing folder is replaced only with ``--overwrite`` and only when it is
  empty or carries edgeresnet's manifest (:data:`MANIFEST`) and nothing else.
* A run writes into a hidden folder beside ``--out``
  (``.NAME.partial-XXXX/new``) that records its owner (pid, process start
  time, host), and swaps it into place only at the end (:class:`StagedDir`).
  A failure or a signal removes it; after a SIGKILL the next run to the same
  ``--out`` removes it once the owner is provably gone
  (:func:`clean_stale_partials`).
* One run at a time per ``--out``: :func:`output_lock` holds an advisory
  lock on ``.NAME.lock`` beside ``--out`` for the whole run, so a second run
  is refused at once instead of racing the first one's commit.
* Temporary files the run makes elsewhere go into one run folder
  (:func:`run_tempdir`) removed on the way out.
* Write failures a user can fix (no space, read-only, no permission) become
  one-line :class:`~edgeresnet.errors.OutputError` naming the path.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import socket
import tempfile
import time
from pathlib import Path
from typing import Iterable, Mapping, Optional, Union

from edgeresnet._util.signals import uninterrupted
from edgeresnet.errors import OutputError, OutputExistsError

PathLike = Union[str, Path]

MANIFEST = ".edgeresnet-output.json"
OWNER = "owner.json"
# Files a desktop drops into any folder it shows; they do not make a folder "the user's".
_DESKTOP_LITTER = {".DS_Store", "Thumbs.db", "desktop.ini"}
MiB = 1 << 20

# errno values a user fixes by freeing space, choosing another folder or fixing permissions.
_WRITE_ERRNOS = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted (immutable folder?)",
    errno.EFBIG: "file too large for this file system",
}


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def failed_path(out: PathLike) -> Path:
    """Where a failed run's report goes: ``OUT.failed`` beside ``OUT``."""
    out = Path(out)
    return out.with_name(out.name + ".failed")


# --------------------------------------------------------------- checking --out


def _where(get) -> Optional[Path]:
    """The current or home folder, or None when there is none (deleted cwd, no HOME)."""
    try:
        return get().resolve()
    except (OSError, RuntimeError, KeyError):
        return None


# File systems that hold kernel interfaces (processes, devices, settings), not files.
_PSEUDO_FS = {
    "proc", "sysfs", "devtmpfs", "devpts", "cgroup", "cgroup2", "debugfs", "tracefs", "securityfs", "pstore",
    "bpf", "configfs", "fusectl", "mqueue", "binfmt_misc", "efivarfs", "nsfs",
}


def _fs_type(r: Path) -> Optional[str]:
    """The type of the file system ``r`` is (or would be) on, from /proc/self/mounts; None when unknown."""
    try:
        mounts = Path("/proc/self/mounts").read_text()
    except OSError:
        return None
    best, kind = None, None
    for line in mounts.splitlines():
        fields = line.split()
        if len(fields) < 3:
            continue
        point = Path(re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[1]))  # \040 is a space
        if _inside(r, point) and (best is None or len(point.parts) >= len(best.parts)):
            best, kind = point, fields[2]
    return kind


def _pseudo_fs(r: Path) -> Optional[str]:
    """Where ``r`` lies on a kernel file system (/proc, /sys, /dev but /dev/shm, or a mount of one), else None."""
    if _inside(r, Path("/dev/shm")):
        return None
    for top in ("/proc", "/sys", "/dev"):
        if _inside(r, Path(top)):
            return top
    kind = _fs_type(r)
    return f"a {kind} file system" if kind in _PSEUDO_FS else None


def _refuse_special(out: PathLike, r: Path) -> None:
    cwd = _where(Path.cwd)
    home = _where(Path.home)
    pseudo = _pseudo_fs(r)
    if pseudo is not None:
        raise OutputError(
            f"--out {out} is on {pseudo}, which holds kernel interfaces, not files; "
            "choose a folder on a disk, e.g. --out edgeresnet-out"
        )
    if r.parent == r or (r.is_dir() and os.path.ismount(r)):
        raise OutputError(f"--out {out} is the root of a file system; name a new folder inside it")
    if cwd is not None and _inside(cwd, r):
        what = "the current folder" if r == cwd else f"a parent of the current folder {cwd}"
        raise OutputError(f"--out {out} is {what}; name a new folder, e.g. --out edgeresnet-out")
    if home is not None and _inside(home, r):
        what = "your home folder" if r == home else f"a parent of your home folder {home}"
        raise OutputError(f"--out {out} is {what}; name a new folder inside it, e.g. --out ~/edgeresnet-out")
    if (r / ".git").exists():
        raise OutputError(f"--out {out} is the root of a repository (it holds .git); name a new folder inside it")


def _refuse_inputs(out: PathLike, r: Path, inputs: Mapping[str, Optional[PathLike]]) -> None:
    for flag, given in inputs.items():
        if given is None:
            continue
        p = Path(given).resolve()
        if r == p:
            raise OutputError(f"--out {out} is the {flag} path {given}; choose another --out (it would replace your data)")
        if p in r.parents:
            raise OutputError(f"--out {out} lies inside the {flag} path {given}; choose an --out outside it")
        if r in p.parents:
            raise OutputError(f"--out {out} contains the {flag} path {given}; choose an --out that holds none of your files")


def read_manifest(folder: PathLike) -> Optional[dict]:
    """The manifest of an edgeresnet output folder, or None when there is none (or it is not ours)."""
    try:
        data = json.loads((Path(folder) / MANIFEST).read_text("utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("tool") != "edgeresnet" or not isinstance(data.get("files"), list):
        return None
    return data


def _check_replaceable(out: PathLike, r: Path, flag_hint: str) -> None:
    """``r`` exists and is not empty: refuse unless it is an edgeresnet output folder holding only its files."""
    manifest = read_manifest(r)
    if manifest is None:
        raise OutputExistsError(
            f"{out} exists and was not written by edgeresnet (no {MANIFEST}); {flag_hint} only replaces "
            "edgeresnet output folders: choose another --out, or empty or remove it yourself"
        )
    known = set(manifest["files"]) | {MANIFEST} | _DESKTOP_LITTER
    # `edgeresnet inspect` keeps edgetpu_compiler's model and log next to a model it checks.
    stems = [Path(f).stem for f in manifest["files"] if str(f).endswith(".tflite")]
    known |= {f"{stem}_edgetpu{ext}" for stem in stems for ext in (".tflite", ".log")}
    extra = sorted(p.name for p in r.iterdir() if p.name not in known)
    if extra:
        shown = ", ".join(extra[:3]) + (f" and {len(extra) - 3} more" if len(extra) > 3 else "")
        raise OutputExistsError(
            f"{out} holds files edgeresnet did not write ({shown}); move them out or choose another --out"
        )


def check_output(
    out: PathLike,
    overwrite: bool = False,
    inputs: Optional[Mapping[str, Optional[PathLike]]] = None,
) -> Path:
    """Refuse an ``--out`` that would touch anything but edgeresnet's own output. Touches nothing.

    ``inputs`` maps a flag (``"model"``, ``"--calib"``, ...) to the path given.
    """
    if str(out).strip() == "":
        raise OutputError("--out is empty; name a folder, e.g. --out edgeresnet-out")
    out = Path(out)
    r = out.resolve()
    _refuse_special(out, r)
    _refuse_inputs(out, r, inputs or {})
    if r.exists() and not r.is_dir():
        raise OutputExistsError(f"{out} exists and is a file; pass a folder path to --out")
    if r.is_dir() and any(r.iterdir()):
        if not overwrite:
            raise OutputExistsError(f"{out} already exists; pass --overwrite to replace it or choose another --out")
        _check_replaceable(out, r, "--overwrite")
    parent = r.parent
    if not parent.is_dir():
        raise OutputError(f"the parent folder {parent} of --out does not exist; create it first")
    return out


# Kept for callers that only need the old check.
def check_output_free(out: PathLike, overwrite: bool) -> Path:
    return check_output(out, overwrite)


def check_free_space(folder: PathLike, need_bytes: int, what: str = "--out", fix: str = "choose an --out on another disk") -> None:
    """Refuse up front when ``folder``'s file system has less than ``need_bytes`` free."""
    folder = Path(folder)
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return  # cannot tell; the write itself will say
    if free < need_bytes:
        raise OutputError(
            f"not enough free space for {what} in {folder}: {free / MiB:.1f} MiB free, about "
            f"{need_bytes / MiB:.0f} MiB needed; free some space or {fix}"
        )


def _public_path(path: PathLike) -> Path:
    """``.OUT.partial-XXXX/new/file`` -> ``OUT/file``: name the file as the user will see it."""
    path = Path(path)
    parts = path.parts
    for i in range(len(parts) - 1):
        name, sep, _ = parts[i].partition(".partial-")
        if sep and name.startswith(".") and parts[i + 1] == "new":
            return Path(*parts[:i], name[1:], *parts[i + 2:])
    return path


def write_error(exc: OSError, where: PathLike, name_where: bool = False) -> Optional[OutputError]:
    """A one-line OutputError for a write failure the user can fix, else None.

    The message names the file that failed, or ``where`` when there is none
    (or ``name_where``: the folder says more than a temporary name in it).
    """
    reason = _WRITE_ERRNOS.get(exc.errno)
    if reason is None:
        return None
    path = _public_path(where if name_where or not exc.filename else exc.filename)
    what = {
        errno.ENOSPC: "free some space or choose an --out on another disk",
        errno.EDQUOT: "free some space or choose an --out on another disk",
        errno.EFBIG: "choose an --out on another file system",
    }.get(exc.errno, "choose a folder you can write to with --out")
    return OutputError(f"cannot write {path}: {reason}; {what}")


# ------------------------------------------------------- partial folders, owners


def _start_time(pid: int) -> Optional[str]:
    """The kernel's start time of process ``pid`` (Linux), to tell a reused pid apart."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[-1].split()[19]


def owner_record() -> dict:
    """Who is running: pid, its kernel start time, host and when; for partial folders and lock files."""
    pid = os.getpid()
    return {"pid": pid, "start": _start_time(pid), "host": socket.gethostname(), "since": time.time()}


def _owner_alive(owner: dict) -> Optional[bool]:
    """True/False when provable, None when the owner is on another host."""
    if owner.get("host") != socket.gethostname():
        return None
    pid = owner.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    start = _start_time(pid)
    return not (owner.get("start") and start and start != owner["start"])


def clean_stale_partials(out: PathLike) -> list[str]:
    """Remove hidden partial folders of ``out`` left by runs that are provably gone.

    Returns one note per folder removed or left alone (for the caller to show).
    A folder that still holds the previous output (killed mid-swap while ``out``
    is missing) is moved back to ``out`` first.
    """
    out = Path(out)
    r = out.resolve()
    notes = []
    if not r.parent.is_dir():
        return notes
    for d in sorted(r.parent.glob(f".{r.name}.partial-*")):
        if not d.is_dir() or d.is_symlink():
            continue
        try:
            owner = json.loads((d / OWNER).read_text("utf-8"))
        except (OSError, ValueError):
            owner = None
        alive = _owner_alive(owner) if isinstance(owner, dict) else None
        if alive:
            notes.append(f"note: {d} belongs to a running edgeresnet (pid {owner['pid']}) writing the same --out")
            continue
        if alive is None:
            notes.append(f"warning: {d} belongs to an edgeresnet run that cannot be checked (no owner record, or "
                         "another machine); remove it if no run is using it")
            continue
        try:
            if (d / "old").is_dir() and not r.exists():
                os.replace(d / "old", r)
                notes.append(f"note: restored the previous output {out} from an interrupted run")
            shutil.rmtree(d)
            notes.append(f"note: removed {d}, left by an interrupted run (pid {owner['pid']})")
        except OSError as exc:
            notes.append(f"warning: could not remove {d} left by an interrupted run: {exc.strerror}")
    return notes


def clean_stale_tempdirs(prefix: str = "edgeresnet-run-") -> list[str]:
    """Remove run temp folders (see :func:`run_tempdir`) whose owner was killed (SIGKILL)."""
    notes = []
    for d in sorted(Path(tempfile.gettempdir()).glob(prefix + "*")):
        try:
            owner = json.loads((d / OWNER).read_text("utf-8"))
        except (OSError, ValueError):
            continue  # not provably ours
        if isinstance(owner, dict) and _owner_alive(owner) is False:
            shutil.rmtree(d, ignore_errors=True)
            notes.append(f"note: removed {d}, temporary files of an interrupted run (pid {owner.get('pid')})")
    return notes


class StagedDir:
    """A temporary folder that becomes ``out`` on :meth:`commit`.

    Use as a context manager: leaving the block without committing (an
    exception, a signal) removes everything that was staged. Creating it is
    also the check that ``out``'s parent can be written, before any work.
    """

    def __init__(self, out: PathLike, overwrite: bool = False, inputs=None):
        self.inputs = dict(inputs or {})
        self.out = check_output(out, overwrite, self.inputs)
        self.overwrite = overwrite
        parent = self.out.resolve().parent
        try:
            self.container = Path(tempfile.mkdtemp(prefix=f".{self.out.name}.partial-", dir=parent))
        except OSError as exc:
            raise write_error(exc, parent, name_where=True) or exc
        self.path = self.container / "new"
        try:
            (self.container / OWNER).write_text(json.dumps(owner_record()), "utf-8")
            self.path.mkdir()
            os.chmod(self.path, 0o777 & ~_umask())  # the result is not private
        except BaseException as exc:
            shutil.rmtree(self.container, ignore_errors=True)
            if isinstance(exc, OSError):
                raise write_error(exc, parent, name_where=True) or exc
            raise
        self.committed = False

    def __enter__(self) -> "StagedDir":
        return self

    def __exit__(self, exc_type, exc, tb):
        self.discard()
        return False

    def discard(self) -> None:
        if not self.committed and (self.container / "old").exists():
            return  # the previous output could not be put back: the next run restores it (clean_stale_partials)
        shutil.rmtree(self.container, ignore_errors=True)

    def commit(self, dest: Optional[PathLike] = None) -> Path:
        """Move the staged folder into place as ``dest`` (default ``out``), with a manifest.

        ``dest`` may replace only an empty folder or an edgeresnet output
        folder (for ``out`` itself only with ``overwrite``). The swap is not
        cut by SIGINT/SIGTERM.
        """
        dest = Path(dest) if dest is not None else self.out
        check_output(dest, self.overwrite or dest != self.out, self.inputs)
        files = sorted(p.name for p in self.path.iterdir())
        manifest = {"tool": "edgeresnet", "version": _version(), "files": files, "written": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        atomic_write_text(self.path / MANIFEST, json.dumps(manifest, indent=1) + "\n")
        with uninterrupted():
            self._swap_in(dest)
        self.discard()
        return dest

    def _swap_in(self, dest: Path) -> None:
        """Replace ``dest`` by the staged folder; an OSError puts the previous ``dest`` back and becomes one line."""
        old = self.container / "old"
        try:
            if dest.exists():
                os.replace(dest, old)
            os.replace(self.path, dest)
        except OSError as exc:
            with contextlib.suppress(OSError):
                if old.exists():
                    os.replace(old, dest)
            raise write_error(exc, dest, name_where=True) or OutputError(
                f"cannot move the finished output into {dest}: {exc.strerror or exc}; another program changed "
                f"{dest} during the run: run again when nothing else writes it, or choose another --out"
            ) from None
        self.committed = True


def _version() -> str:
    from edgeresnet import __version__

    return __version__


# ------------------------------------------------------------ run temp folder


@contextlib.contextmanager
def run_tempdir(prefix: str = "edgeresnet-run-"):
    """One temporary folder for everything the run (and TensorFlow, and child processes) puts in
    the temp folder; removed on every way out. Yields its path."""
    path = tempfile.mkdtemp(prefix=prefix)
    Path(path, OWNER).write_text(json.dumps(owner_record()), "utf-8")
    saved_tempdir, saved_env = tempfile.tempdir, os.environ.get("TMPDIR")
    tempfile.tempdir = path
    os.environ["TMPDIR"] = path
    try:
        yield Path(path)
    finally:
        tempfile.tempdir = saved_tempdir
        if saved_env is None:
            os.environ.pop("TMPDIR", None)
        else:
            os.environ["TMPDIR"] = saved_env
        shutil.rmtree(path, ignore_errors=True)


# --------------------------------------------------------------- single files


def atomic_write_bytes(path: PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file and a rename."""
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise write_error(exc, path) or exc
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it private; the result is not
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise write_error(exc, path) or exc
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def tree_bytes(paths: Iterable[PathLike]) -> int:
    """Total size of files and folders (a SavedModel folder counts all its files)."""
    total = 0
    for p in paths:
        p = Path(p)
        if p.is_file():
            total += p.stat().st_size
        elif p.is_dir():
            total += sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
    return total

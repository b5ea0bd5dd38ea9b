"""Nothing lost, nothing crashes: table-driven bad-input and fault cases for the CLI.

Every case builds a small world under ``tmp_path`` (a model, image folders, a
previous output, mounts), takes a snapshot of every path under it (sha256 of
each file), runs ``edgeresnet`` in-process and asserts:

* the exit code;
* exactly one ``error:`` line (none on success) containing the expected words,
  and no traceback;
* nothing created, changed or deleted outside the paths the case allows
  (``changes``: --out on success, OUT.failed on a failed run), so a previous
  output and every input stay byte-identical;
* the run's temporary folder (``tempfile.tempdir`` points into the world) is
  empty afterwards.

To add a case: append a ``Case`` to ``CASES`` (or to your own list passed to
``run_case`` with the ``tools`` fixture: the shared helpers of tests/conftest.py).
``args(world)`` returns the argument list; ``setup(world)`` may prepare files
and return a clean-up callable (or raise ``pytest.skip``);
``patch(world, monkeypatch)`` may simulate a fault in the library.
Signal tests (SIGINT, SIGTERM, SIGKILL) run the CLI as a subprocess below.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable, Optional, Union

import pytest

from edgeresnet._util import files as fsutil
from edgeresnet._util import outlock

REPO = Path(__file__).resolve().parents[1]
REFERENCE_H5 = REPO / "edgeresnet" / "assets" / "reference_digits_resnet8.h5"


# ---------------------------------------------------------------- the world


@dataclass
class World:
    """Paths of one case's sandbox; every case runs with ``cwd`` as the current folder."""

    root: Path
    tools: Any  # the ``tools`` fixture: run_cli, write_image_folder, batch_60161, snapshot (tests/conftest.py)

    @property
    def cwd(self) -> Path:
        return self.root / "cwd"

    @property
    def tmp(self) -> Path:  # the run's temp folder (tempfile.tempdir / TMPDIR)
        return self.root / "tmp"

    @property
    def model(self) -> Path:  # a copy of the built-in reference model inside a project folder
        return self.root / "proj" / "model.h5"

    @property
    def calib(self) -> Path:
        return self.root / "calib"

    @property
    def eval(self) -> Path:
        return self.root / "eval"

    @property
    def out(self) -> Path:
        return self.root / "out"

    @property
    def failed(self) -> Path:
        return fsutil.failed_path(self.out)


@pytest.fixture
def tools(run_cli, write_image_folder, batch_60161, snapshot):
    """The conftest helpers a world and its cases use."""
    return SimpleNamespace(run_cli=run_cli, write_image_folder=write_image_folder, batch_60161=batch_60161,
                           snapshot=snapshot)


def make_world(root: Path, tools) -> World:
    w = World(root, tools)
    for d in (w.cwd, w.tmp, w.model.parent):
        d.mkdir(parents=True)
    shutil.copyfile(REFERENCE_H5, w.model)
    (w.model.parent / "notes.md").write_text("my project notes\n")
    tools.write_image_folder(w.calib, classes=2, per_class=3, size=(8, 8), seed=0)
    tools.write_image_folder(w.eval, classes=2, per_class=2, size=(8, 8), seed=1)
    return w


def fake_output(folder: Path, extra: Optional[dict] = None) -> Path:
    """A folder exactly as edgeresnet leaves it (manifest listing its files), with made-up contents."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {"m_cpu_int8.tflite": b"TFL3 previous model", "report.json": b'{"previous": true}\n', "report.md": b"# previous\n"}
    for name, data in files.items():
        (folder / name).write_bytes(data)
    manifest = {"tool": "edgeresnet", "version": "0.1.0", "files": sorted(files)}
    (folder / fsutil.MANIFEST).write_text(json.dumps(manifest))
    for name, data in (extra or {}).items():
        (folder / name).write_bytes(data)
    return folder


def diff_outside(before: dict, after: dict, allowed: list[str]) -> list[str]:
    """Paths created, changed or deleted that are not inside one of ``allowed`` (relative paths)."""

    def ok(rel: str) -> bool:
        return any(rel == a or rel.startswith(a + os.sep) for a in allowed)

    changed = [k for k in before.keys() | after.keys() if before.get(k) != after.get(k)]
    return sorted(k for k in changed if not ok(k))


# ---------------------------------------------------------------- cases


@dataclass(frozen=True)
class Case:
    id: str
    args: Callable[[World], list]
    code: int
    says: tuple = ()  # words the error line must contain (callables get the world)
    setup: Optional[Callable[[World], Optional[Callable]]] = None
    patch: Optional[Callable[[World, pytest.MonkeyPatch], None]] = None
    changes: Callable[[World], list] = lambda w: []  # paths the run may create or change
    check: Optional[Callable[[World, str, str], None]] = None  # extra assertions after the run
    marks: tuple = ()


def run_case(case: Case, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tools) -> tuple[World, str, str]:
    w = make_world(tmp_path / "w", tools)
    cleanup = case.setup(w) if case.setup else None
    try:
        monkeypatch.chdir(w.cwd)
        monkeypatch.setattr(tempfile, "tempdir", str(w.tmp))
        monkeypatch.setenv("TMPDIR", str(w.tmp))
        if case.patch:
            case.patch(w, monkeypatch)
        before = w.tools.snapshot(w.root)
        code, stdout, stderr = tools.run_cli(case.args(w))
        after = w.tools.snapshot(w.root)
    finally:
        if cleanup:
            cleanup()
    text = stdout + stderr
    assert "Traceback" not in text, text
    errors = [ln for ln in stderr.splitlines() if ln.startswith("error:")]
    assert code == case.code, f"exit {code}, expected {case.code}: {stderr}"
    if case.code == 0:
        assert not errors, stderr
    else:
        assert len(errors) == 1, f"expected one error line: {stderr!r}"
        for word in case.says:
            word = word(w) if callable(word) else word
            assert str(word) in errors[0], f"{word!r} not in {errors[0]!r}"
        assert "internal error" not in errors[0]
    allowed = [str(Path(p).relative_to(w.root)) for p in case.changes(w)]
    assert diff_outside(before, after, allowed) == [], f"touched outside {allowed}"
    assert list(w.tmp.iterdir()) == [], "the run left temporary files"
    if case.check:
        case.check(w, stdout, stderr)
    return w, stdout, stderr


def _convert(*extra):
    return lambda w: ["convert", "--int8", *[a(w) if callable(a) else a for a in extra]]


# --- worlds that need a mount or an attribute; each returns its clean-up or skips


def _files(folder: Path, files: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (folder / name).write_text(text)


def _mount_tmpfs(path: Path, options: str) -> Callable:
    path.mkdir(parents=True, exist_ok=True)
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True, text=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({res.stderr.strip()})")
    return lambda: subprocess.run(["umount", "-l", str(path)], check=False)


def _read_only_parent(w: World):
    ro = w.root / "ro"
    if os.geteuid() != 0:  # chmod stops anyone but root
        ro.mkdir()
        ro.chmod(0o555)
        return lambda: ro.chmod(0o755)
    return _mount_tmpfs(ro, "ro,size=64m")


def _immutable_parent(w: World):
    imm = w.root / "imm"
    imm.mkdir()
    res = subprocess.run(["chattr", "+i", str(imm)], capture_output=True, text=True) if shutil.which("chattr") else None
    if res is None or res.returncode != 0:
        pytest.skip("chattr +i does not work here")
    return lambda: subprocess.run(["chattr", "-i", str(imm)], check=False)


def _held_lock(out: Path) -> Callable:
    """Another run writing ``out`` (here: this process holds its lock)."""
    held = outlock.output_lock(out)
    held.__enter__()
    return lambda: held.__exit__(None, None, None)


def _small_disk(size: str):
    return lambda w: _mount_tmpfs(w.root / "disk", f"size={size}")


def _failing_converter(w, monkeypatch):
    """The converter fails for a reason of its own (as it does for an op it cannot quantize)."""
    from edgeresnet.host.pipeline import emit as pipeline
    from edgeresnet.errors import ConversionError

    def fail(*a, **k):
        raise ConversionError("simulated converter failure: op FOO has no int8 kernel")

    monkeypatch.setattr(pipeline, "convert", fail)


def _same_files_as_before(w: World, stdout: str, stderr: str):
    assert (w.out / "m_cpu_int8.tflite").read_bytes() == b"TFL3 previous model"


def _failure_report_beside(w: World, stdout: str, stderr: str):
    _same_files_as_before(w, stdout, stderr)
    data = json.loads((w.failed / "report.json").read_text())
    assert data["variants"][0]["status"] == "convert_failed"
    assert fsutil.read_manifest(w.failed) is not None  # replaceable by the next failed run


CASES = [
    Case("out is calib folder, --overwrite", _convert(lambda w: "--calib", lambda w: w.calib, "--out", lambda w: w.calib, "--overwrite"),
         2, ("--calib", "is the")),
    Case("report: out is the calib folder", lambda w: ["report", "--calib", w.calib, "--out", w.calib, "--overwrite"],
         2, ("--calib", "is the")),
    Case("out is a parent of the model", lambda w: ["convert", w.model, "--int8", "--calib", w.calib, "--out", w.model.parent, "--overwrite"],
         2, ("contains the model",)),
    Case("out is the model file", lambda w: ["convert", w.model, "--int8", "--calib", w.calib, "--out", w.model, "--overwrite"],
         2, ("is the model path",)),
    Case("out inside --eval", _convert("--eval", lambda w: w.eval, "--out", lambda w: w.eval / "class0" / "res"),
         2, ("lies inside the --eval",)),
    Case("out inside a SavedModel folder", lambda w: ["convert", w.root / "sm", "--int8", "--calib", w.calib, "--out", w.root / "sm" / "out"],
         2, ("lies inside the model",), setup=lambda w: _files(w.root / "sm", {"saved_model.pb": "graph"})),
    Case("out inside --train", _convert("--prune", "0.5", "--train", lambda w: w.calib, "--out", lambda w: w.calib / "class0" / "o"),
         2, ("lies inside the --train",)),
    Case("out contains --calib", _convert("--calib", lambda w: w.calib / "class1", "--out", lambda w: w.calib, "--overwrite"),
         2, ("contains the --calib",)),
    Case("out is a symlink to the calib folder", _convert("--calib", lambda w: w.calib, "--out", lambda w: w.root / "link", "--overwrite"),
         2, ("is the --calib",), setup=lambda w: (w.root / "link").symlink_to(w.calib)),
    Case("out .", _convert("--out", ".", "--overwrite"), 2, ("current folder",)),
    Case("out parent of cwd", _convert("--out", "..", "--overwrite"), 2, ("parent of the current folder",)),
    Case("out is $HOME", _convert("--out", lambda w: w.root / "home", "--overwrite"), 2, ("home folder",),
         setup=lambda w: (w.root / "home").mkdir(),
         patch=lambda w, mp: mp.setenv("HOME", str(w.root / "home"))),
    Case("out is a git repo root", _convert("--out", lambda w: w.root / "repo", "--overwrite"), 2, ("repository",),
         setup=lambda w: (w.root / "repo" / ".git").mkdir(parents=True)),
    Case("out is a filesystem root", _convert("--out", "/", "--overwrite"), 2, ("root of a file system",)),
    Case("overwrite a folder edgeresnet did not write", _convert("--out", lambda w: w.root / "mine", "--overwrite"),
         2, ("not written by edgeresnet",),
         setup=lambda w: _files(w.root / "mine", {"thesis.tex": "years of work"})),
    Case("overwrite an edgeresnet folder holding a user file", _convert("--out", lambda w: w.out, "--overwrite"),
         2, ("did not write", "notes.txt"),
         setup=lambda w: fake_output(w.out, {"notes.txt": b"mine"}) and None),
    Case("existing output without --overwrite", _convert("--out", lambda w: w.out), 2, ("--overwrite",),
         setup=lambda w: fake_output(w.out) and None),
    Case("OUT.failed not written by edgeresnet", _convert("--out", lambda w: w.out, "--overwrite"), 2, (".failed", "not written by edgeresnet"),
         setup=lambda w: _files(w.failed, {"keep.txt": "mine"})),
    *[Case(f"out under {top}", _convert("--out", f"{top}/edgeresnet-out"), 2, (top, "kernel interfaces", "choose a folder"))
      for top in ("/proc", "/sys", "/dev")],
    Case("another run is writing --out", _convert("--out", lambda w: w.out), 2,
         ("another edgeresnet run", f"(pid {os.getpid()}) is writing", "wait for it", "choose another --out"),
         setup=lambda w: _held_lock(w.out)),
    Case("out is an existing file", _convert("--out", lambda w: w.model.parent / "notes.md", "--overwrite"), 2, ("is a file",)),
    Case("--max-drop inf", _convert("--max-drop", "inf"), 2, ("--max-drop", "finite")),
    Case("--max-drop nan", _convert("--max-drop", "nan"), 2, ("--max-drop", "finite")),
    Case("parent of --out missing", _convert("--out", lambda w: w.root / "no" / "out"), 2, ("does not exist",)),
    Case("read-only parent", _convert("--out", lambda w: w.root / "ro" / "out"), 2,
         (lambda w: f"cannot write {w.root / 'ro'}:", "read-only" if os.geteuid() == 0 else "permission denied"), setup=_read_only_parent),
    Case("immutable parent", _convert("--out", lambda w: w.root / "imm" / "out"), 2,
         (lambda w: f"cannot write {w.root / 'imm'}:", "not permitted"), setup=_immutable_parent),
    Case("full disk, found before any work", _convert("--out", lambda w: w.root / "disk" / "out"), 2,
         ("not enough free space", lambda w: w.root / "disk"), setup=_small_disk("1m")),
    Case("temp folder on a full disk", _convert("--out", lambda w: w.out), 2,
         ("temporary files", lambda w: w.root / "disk", "TMPDIR"), setup=_small_disk("1m"),
         patch=lambda w, mp: mp.setattr(tempfile, "tempdir", str(w.root / "disk"))),
    Case("disk full while writing", _convert("--out", lambda w: w.root / "disk" / "out"), 2,
         (lambda w: f"cannot write {w.root / 'disk' / 'out'}/", "no space left"), setup=_small_disk("48k"),
         patch=lambda w, mp: mp.setattr(fsutil, "check_free_space", lambda *a: None) or mp.setattr("edgeresnet.host.pipeline.run.check_free_space", lambda *a: None),
         marks=(pytest.mark.slow,)),
    Case("failure under --overwrite keeps the old output", _convert("--out", lambda w: w.out, "--overwrite"), 3,
         (lambda w: w.failed, "left as it was"), setup=lambda w: fake_output(w.out) and None, patch=_failing_converter,
         changes=lambda w: [w.failed], check=_failure_report_beside, marks=(pytest.mark.slow,)),
]


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id, marks=c.marks) for c in CASES])
def test_safety_case(case, tmp_path, monkeypatch, tools):
    run_case(case, tmp_path, monkeypatch, tools)


def _allowed_overwrite_check(w: World, stdout: str, stderr: str):
    names = sorted(p.name for p in w.out.iterdir())
    assert {fsutil.MANIFEST, "reference_digits_resnet8_cpu_int8.tflite", "report.json", "report.md"} <= set(names)
    assert "m_cpu_int8.tflite" not in names  # the previous output was replaced, not merged
    assert fsutil.read_manifest(w.out)["files"] == sorted(n for n in names if n != fsutil.MANIFEST)
    assert not list(w.root.glob(".out.partial-*"))


SLOW_CASES = [
    Case("--overwrite on an edgeresnet folder is allowed", _convert("--out", lambda w: w.out, "--overwrite"), 0,
         setup=lambda w: fake_output(w.out) and None, changes=lambda w: [w.out], check=_allowed_overwrite_check),
]


@pytest.mark.slow
@pytest.mark.parametrize("case", [pytest.param(c, id=c.id) for c in SLOW_CASES])
def test_safety_case_that_converts(case, tmp_path, monkeypatch, tools):
    run_case(case, tmp_path, monkeypatch, tools)


# ---------------------------------------------------------------- signals (subprocess)


class Run:
    """``edgeresnet convert --int8 --out out --overwrite`` in a child process of its own world."""

    def __init__(self, w: World):
        env = dict(os.environ, PYTHONPATH=str(REPO), TMPDIR=str(w.tmp), PYTHONUNBUFFERED="1")
        env.pop("EDGERESNET_DEBUG", None)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "edgeresnet.cli", "convert", "--int8", "--out", str(w.out), "--overwrite"],
            cwd=w.cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            # A pytest started in the background has SIGINT ignored, and children inherit that.
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
        self.lines: list[str] = []
        self.reader = threading.Thread(target=lambda: self.lines.extend(self.proc.stderr), daemon=True)
        self.reader.start()

    def wait_for(self, predicate, timeout=120.0) -> None:
        end = time.monotonic() + timeout
        while not predicate():
            assert self.proc.poll() is None, f"the run ended early: {''.join(self.lines)}"
            assert time.monotonic() < end, f"timed out; stderr so far: {''.join(self.lines)}"
            time.sleep(0.05)

    def finish(self, timeout=60.0) -> tuple[int, str]:
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise
        self.reader.join(5)
        return code, "".join(self.lines)


def _mid_conversion(run: Run, w: World):
    """True once the staged folder exists and calibration (the converter) is running."""
    return list(w.root.glob(".out.partial-*")) and any(ln.startswith("calibrate ") for ln in run.lines)


@pytest.mark.slow
@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["SIGINT", "SIGTERM"])
def test_signal_mid_conversion_removes_partial_output_and_keeps_the_old(sig, code, tmp_path, tools):
    w = make_world(tmp_path / "w", tools)
    fake_output(w.out)
    before = w.tools.snapshot(w.root)
    run = Run(w)
    run.wait_for(lambda: _mid_conversion(run, w))
    run.proc.send_signal(sig)
    got, stderr = run.finish()
    assert got == code, stderr
    errors = [ln for ln in stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "interrupted" in errors[0] and "Traceback" not in stderr, stderr
    assert diff_outside(before, w.tools.snapshot(w.root), []) == []  # no partial, old output byte-identical
    assert list(w.tmp.iterdir()) == []  # the run's temp folder went with it


@pytest.mark.slow
def test_sigkill_leaves_a_partial_that_the_next_run_removes(tmp_path, monkeypatch, tools, run_cli):
    w = make_world(tmp_path / "w", tools)
    fake_output(w.out)
    run = Run(w)
    run.wait_for(lambda: _mid_conversion(run, w))
    run.proc.kill()
    assert run.finish()[0] == -signal.SIGKILL
    partials = list(w.root.glob(".out.partial-*"))
    assert len(partials) == 1 and (partials[0] / fsutil.OWNER).is_file()
    assert (w.root / ".out.lock").is_file()  # the kernel dropped the lock; the file stays
    assert (w.out / "m_cpu_int8.tflite").read_bytes() == b"TFL3 previous model"  # untouched by the kill
    leftovers = list(w.tmp.iterdir())
    assert [p.name.startswith("edgeresnet-run-") for p in leftovers] == [True]
    # The next run to the same --out proves the owner dead, removes its partial and temp folder, and says so.
    monkeypatch.chdir(w.cwd)
    monkeypatch.setattr(tempfile, "tempdir", str(w.tmp))
    code, _, stderr = run_cli(["convert", "--int8", "--out", w.out, "--overwrite"])
    assert code == 0, stderr
    assert f"removed {partials[0]}" in stderr and f"removed {leftovers[0]}" in stderr
    assert not list(w.root.glob(".out.partial-*")) and list(w.tmp.iterdir()) == []
    assert (w.out / "reference_digits_resnet8_cpu_int8.tflite").is_file()
    assert not (w.root / ".out.lock").exists()  # the killed run's lock file was taken over, then removed


@pytest.mark.slow
def test_concurrent_runs_to_one_out_one_wins_the_others_get_one_line(tmp_path, tools):
    """Four real `convert --int8` processes to one --out at once: one writes it, each other one is told who does."""
    w = make_world(tmp_path / "w", tools)
    env = dict(os.environ, PYTHONPATH=str(REPO), TMPDIR=str(w.tmp))
    env.pop("EDGERESNET_DEBUG", None)
    procs = [subprocess.Popen([sys.executable, "-m", "edgeresnet.cli", "convert", "--int8", "--out", str(w.out)],
                              cwd=w.cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(4)]
    results = [(p.pid, *p.communicate(timeout=600), p.returncode) for p in procs]
    winners = [pid for pid, _, _, code in results if code == 0]
    assert len(winners) == 1, [(code, err[-500:]) for _, _, err, code in results]
    for pid, out, err, code in results:
        assert "Traceback" not in out + err and "internal error" not in err, err
        errors = [ln for ln in err.splitlines() if ln.startswith("error:")]
        if pid != winners[0]:
            # Refused at the lock; one that came after the winner had finished finds OUT written.
            assert code == 2 and err.strip() == errors[0], err  # refused before any work: no progress, no notes
            assert (f"another edgeresnet run (pid {winners[0]}) is writing {w.out}" in errors[0]
                    or "already exists; pass --overwrite" in errors[0]), errors[0]
    assert {"reference_digits_resnet8_cpu_int8.tflite", "report.json"} <= set(fsutil.read_manifest(w.out)["files"])
    assert sorted(p.name for p in w.root.iterdir()) == ["calib", "cwd", "eval", "out", "proj", "tmp"]
    assert list(w.tmp.iterdir()) == []


@pytest.mark.slow
def test_identical_runs_give_bit_identical_tflite(builtin_run, tmp_path, monkeypatch, run_cli):
    """Determinism: the same command run again gives the same bytes. The first run is the session's default
    run (conftest.builtin_run); this one replaces a copy of its real output with --overwrite."""
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    shutil.copytree(builtin_run["out"], out)
    names = [f"reference_digits_resnet8_{t}_int8.tflite" for t in ("cpu", "edgetpu")]
    first = {n: (builtin_run["out"] / n).read_bytes() for n in names}
    for n in names:
        (out / n).write_bytes(b"TFL3 stale copy")  # so the bytes below can only come from this run
    code, _, stderr = run_cli(["convert", "--int8", "--target", "cpu", "--target", "edgetpu", "--out", out, "--overwrite"])
    assert code == 0, stderr
    for n in names:
        assert (out / n).read_bytes() == first[n] and len(first[n]) > 10_000, n
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


# ---------------------------------------------------------------- hostile inputs (items 3, 5 data, 6)

MLPERF = Path(os.environ.get("EDGERESNET_TEST_DATA", REPO.parent / "shared" / "data")) / "mlperf-tiny-resnet8"
QUANT_TFLITE = MLPERF / "pretrainedResnet_quant.tflite"
FLOAT_TFLITE = MLPERF / "pretrainedResnet.tflite"


def _need(path: Path) -> Path:
    if not path.exists():
        if os.environ.get("CI") == "true":
            raise AssertionError(f"{path} is missing (CI=true)")
        pytest.skip(f"{path} not found; set EDGERESNET_TEST_DATA")
    return path


def _fifo(rel: str):
    def setup(w: World):
        os.mkfifo(w.root / rel)
    return setup


def _symlink(rel: str, target: str):
    def setup(w: World):
        os.symlink(target, w.root / rel)
    return setup


def _npz(name: str, damage: Callable[[bytes], bytes], labels=None, size=(32, 32, 3)):
    def setup(w: World):
        import numpy as np

        rng = np.random.default_rng(0)
        x = rng.integers(0, 256, (20, *size), dtype=np.uint8)
        y = np.arange(20) % 10 if labels is None else labels
        np.savez(w.root / name, x=x, y=y)
        (w.root / name).write_bytes(damage((w.root / name).read_bytes()))
    return setup


def _flip_byte_in_member(data: bytes) -> bytes:
    """One byte of the stored x.npy changed: the zip reads, its CRC-32 check fails."""
    out = bytearray(data)
    out[len(data) // 3] ^= 0xFF
    return bytes(out)


def _huge_png(rel: str, width: int = 20000, height: int = 20000):
    """A real PNG whose header says width x height (Pillow refuses it before decoding)."""
    import struct
    import zlib

    def setup(w: World):
        from PIL import Image

        path = w.root / rel
        Image.new("RGB", (8, 8), (200, 10, 10)).save(path)
        data = path.read_bytes()
        i = data.index(b"IHDR")
        ihdr = bytearray(data[i:i + 17])
        ihdr[4:12] = struct.pack(">II", width, height)
        path.write_bytes(data[:i] + bytes(ihdr) + struct.pack(">I", zlib.crc32(bytes(ihdr))) + data[i + 21:])
    return setup


def _model_with_nan(w: World):
    import h5py
    import numpy as np

    with h5py.File(w.model, "r+") as f:
        d = f["model_weights/conv2_block1_2_conv/conv2_block1_2_conv/kernel:0"]
        a = d[...]
        a.flat[0], a.flat[1] = np.nan, np.inf
        d[...] = a


def _truncate(rel: str, keep: float = 0.5):
    def setup(w: World):
        p = w.root / rel
        data = p.read_bytes()
        p.write_bytes(data[: int(len(data) * keep)])
    return setup


def _tflite_copy(name: str, src: Path, change: Union[None, str, Callable[[bytes], bytes]] = None):
    """Copy ``src`` into the world as ``name``, through ``change`` (or the helper of ``w.tools`` so named)."""
    def setup(w: World):
        data = _need(src).read_bytes()
        change_ = getattr(w.tools, change) if isinstance(change, str) else change
        (w.root / name).write_bytes(change_(data) if change_ else data)
    return setup


def _non_utf8_name(data: bytes) -> bytes:
    out = bytearray(data)
    i = data.index(b"input_1_int8")
    out[i + 2:i + 4] = b"\xff\xfe"
    return bytes(out)


def _device_only(w, monkeypatch):
    for name in ("tensorflow", "tf_keras", "h5py"):
        monkeypatch.setitem(sys.modules, name, None)


def _bomb_limit(w, monkeypatch):
    """Pillow's bomb limits scaled down so the 8x8 test images fall between warning (64 px) and error."""
    from PIL import Image

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 40)


def _says_warning(*words):
    def check(w: World, stdout: str, stderr: str):
        warnings = [ln for ln in stderr.splitlines() if ln.startswith("warning:")]
        assert any(all(str(x(w) if callable(x) else x) in ln for x in words) for ln in warnings), stderr
    return check


def _bomb_warning_named(w: World, stdout: str, stderr: str):
    _says_warning(lambda w: w.calib / "class0", "decompression bomb")(w, stdout, stderr)
    assert "DecompressionBombWarning" not in stderr  # Pillow's raw warning does not leak


INPUT_CASES = [
    # 3: special files never hang
    Case("FIFO as --calib x.jpg", _convert("--calib", lambda w: w.root / "x.jpg"), 2, ("x.jpg", "not a regular file"),
         setup=_fifo("x.jpg")),
    Case("FIFO inside an image folder", _convert("--calib", lambda w: w.calib), 2, ("f.png", "not a regular file"),
         setup=_fifo("calib/class0/f.png")),
    Case("device file named .png in an image folder", _convert("--calib", lambda w: w.calib), 2,
         ("zero.png", "not a regular file"), setup=_symlink("calib/class1/zero.png", "/dev/zero")),
    Case("FIFO as --calib .npy", _convert("--calib", lambda w: w.root / "x.npy"), 2, ("x.npy", "not a regular file"),
         setup=_fifo("x.npy")),
    Case("FIFO as the model", lambda w: ["convert", w.root / "m.h5", "--int8", "--calib", w.calib], 2,
         ("m.h5", "not a regular file"), setup=_fifo("m.h5")),
    Case("inspect a FIFO", lambda w: ["inspect", w.root / "m.tflite"], 2, ("m.tflite", "not a regular file"),
         setup=_fifo("m.tflite")),
    Case("bench a FIFO", lambda w: ["bench", w.root / "m.tflite"], 2, ("m.tflite", "not a regular file"),
         setup=_fifo("m.tflite")),
    Case("bench a model whose input claims 700 MiB", lambda w: ["bench", w.root / "big.tflite"], 2,
         ("big.tflite", "60161", "MiB"), setup=_tflite_copy("big.tflite", FLOAT_TFLITE, "batch_60161")),
    # 5: data errors name the file, at once
    Case("--seed -1", _convert("--seed", "-1"), 2, ("--seed",)),
    Case("truncated .npz", _convert("--calib", lambda w: w.root / "t.npz"), 2, ("t.npz", "damaged or truncated"),
         setup=_npz("t.npz", lambda b: b[: len(b) // 2])),
    Case("CRC-damaged .npz", _convert("--calib", lambda w: w.root / "c.npz"), 2, ("c.npz", "CRC"),
         setup=_npz("c.npz", _flip_byte_in_member)),
    Case("symlink loop in an image folder", _convert("--calib", lambda w: w.calib), 2,
         ("loop.png", "symbolic link loop"), setup=_symlink("calib/class0/loop.png", "loop.png")),
    Case("20000x20000 image", _convert("--calib", lambda w: w.calib), 2,
         ("big.png", "400,000,000 pixels", "decompression-bomb"), setup=_huge_png("calib/class1/big.png")),
    Case("truncated .h5", lambda w: ["convert", w.model, "--int8", "--calib", w.calib], 2, ("model.h5",),
         setup=_truncate("proj/model.h5")),
    Case("bench: tensor names not UTF-8", lambda w: ["bench", w.root / "n.tflite"], 2, ("n.tflite", "UTF-8"),
         setup=_tflite_copy("n.tflite", QUANT_TFLITE, _non_utf8_name)),
    Case("convert in a device-only install", _convert(), 2, ("needs the host install", "pip install 'edgeresnet[host]'"),
         patch=_device_only),
    Case("report in a device-only install", lambda w: ["report"], 2, ("needs the host install", "edgeresnet[host]"),
         patch=_device_only),
    # 6: no silent nonsense
    Case("--eval labels outside the model's classes", _convert("--calib", lambda w: w.calib, "--eval", lambda w: w.root / "e.npz"),
         2, ("e.npz", "labels up to 15", "10 outputs"), setup=_npz("e.npz", lambda b: b, labels=list(range(16)) + [0] * 4)),
    Case("NaN/Inf weights", lambda w: ["convert", w.model, "--int8", "--calib", w.calib], 2,
         ("NaN or infinite", "conv2_block1_2_conv"), setup=_model_with_nan),
    Case("--target cpu --target CPU", _convert("--target", "cpu", "--target", "CPU"), 2, ("repeated",)),
    Case("--int8 --precision fp32", _convert("--precision", "fp32"), 2, ("--int8", "--precision fp32")),
    Case("--int8 --precision dynamic", _convert("--precision", "dynamic"), 2, ("--int8", "--precision dynamic")),
    Case("--eval same as --calib warns in-sample", _convert("--calib", lambda w: w.calib, "--eval", lambda w: w.calib),
         2, ("class folders",), check=_says_warning("in-sample", "--eval")),
    Case("decompression-bomb warning names the file", _convert("--calib", lambda w: w.calib), 2, ("class folders",),
         patch=_bomb_limit, check=_bomb_warning_named),
    Case("bench --interpreter tflite-runtime, not installed", lambda w: ["bench", w.root / "q.tflite", "--interpreter", "tflite-runtime"],
         2, ("tflite-runtime", "installed here: ai-edge-litert"), setup=_tflite_copy("q.tflite", QUANT_TFLITE)),
]


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id, marks=c.marks) for c in INPUT_CASES])
def test_hostile_input_case(case, tmp_path, monkeypatch, tools):
    run_case(case, tmp_path, monkeypatch, tools)


# ---------------------------------------------------------------- hostile --labels files

DIGIT_NAMES = [str(d) for d in range(10)]  # the built-in data's classes; the MLPerf model has 10 outputs too


def _labels_file(content=None, make: Optional[Callable[[Path], None]] = None):
    """``labels.txt`` in the world (bytes, or made by ``make``), beside a copy of a 10-class .tflite for predict."""
    def setup(w: World):
        (w.root / "m.tflite").write_bytes(_need(QUANT_TFLITE).read_bytes())
        if make is not None:
            make(w.root / "labels.txt")
        else:
            (w.root / "labels.txt").write_bytes(content)
    return setup


def _text(lines, sep="\n") -> bytes:
    return (sep.join(lines) + sep).encode("utf-8")


def _labels_arg(name: str):
    return (lambda w: w.root / "labels.txt") if name == "labels.txt" else name


def _command(command: str, labels: str):
    """``convert`` (the built-in model and data) or ``predict`` (the MLPerf int8 model on one image) with --labels."""
    arg = _labels_arg(labels)
    if command == "convert":
        return _convert("--labels", arg)
    return lambda w: ["predict", w.root / "m.tflite", w.calib / "class0" / "000.png", "--json", "--top-k", "10",
                      "--preset", "raw", "--labels", arg(w) if callable(arg) else arg]


# (id, labels path, setup, words of the one error line)
BAD_LABELS = [
    ("device file /dev/zero", "/dev/zero", _labels_file(make=lambda p: None), ("/dev/zero", "not a regular file")),
    ("FIFO", "labels.txt", _labels_file(make=os.mkfifo), ("labels.txt", "not a regular file")),
    ("5 MiB file", "labels.txt", _labels_file(b"cat\n" * (5 << 18)), ("labels.txt", "over 4 MiB")),
    ("folder", "labels.txt", _labels_file(make=Path.mkdir), ("labels.txt", "is a folder")),
    ("not UTF-8", "labels.txt", _labels_file(_text(DIGIT_NAMES[:9]) + b"caf\xe9\n"), ("labels.txt", "not UTF-8")),
    ("NUL bytes", "labels.txt", _labels_file(b"\0" * 64), ("labels.txt", "NUL bytes")),
    ("blank line between names", "labels.txt", _labels_file(_text(DIGIT_NAMES[:3] + [" "] + DIGIT_NAMES[3:])),
     ("labels.txt", "entry 4 is empty")),
    ("duplicate names", "labels.txt", _labels_file(_text(DIGIT_NAMES[:9] + ["4"])), ("'4' appears twice",)),
    ("wrong count", "labels.txt", _labels_file(_text(DIGIT_NAMES[:9])), ("9 class names", "10 outputs")),
]

# (id, file bytes): read as the ten names "0".."9"
GOOD_LABELS = [
    ("UTF-8 byte-order mark", b"\xef\xbb\xbf" + _text(DIGIT_NAMES)),
    ("CRLF line ends", _text(DIGIT_NAMES, "\r\n")),
    ("names padded with spaces, blank lines at the end", _text([f"  {n}\t" for n in DIGIT_NAMES] + ["", "  "])),
]


def _predicted_names(names):
    def check(w: World, stdout: str, stderr: str):
        assert stderr == ""  # read as they were meant: no warning
        assert sorted(t["label"] for t in json.loads(stdout)["predictions"][0]["top"]) == sorted(names)
    return check


def _ten_classes(w: World):
    _labels_file(_text(DIGIT_NAMES))(w)
    w.tools.write_image_folder(w.root / "ten", classes=10, per_class=1, size=(8, 8))


LABELS_CASES = [
    Case(f"{command}: --labels {id_}", _command(command, path), 2, says, setup=setup)
    for command in ("convert", "predict") for id_, path, setup, says in BAD_LABELS
] + [
    Case("convert: --labels naming other classes than the --eval folders",
         _convert("--eval", lambda w: w.root / "ten", "--labels", lambda w: w.root / "labels.txt"), 2,
         ("--eval", "'class0', 'class1', 'class2' and 7 more", "does not name", "drop --labels"), setup=_ten_classes),
    Case("convert: --labels naming other classes than the --train folders, before fine-tuning",
         _convert("--prune", "0.5", "--train", lambda w: w.root / "ten", "--labels", lambda w: w.root / "labels.txt"), 2,
         ("--train", "'class0'", "does not name"), setup=_ten_classes),
    Case("convert: --labels naming other classes than the built-in data", _convert("--labels", lambda w: w.root / "l.txt"), 2,
         ("the evaluation data", "'0', '1', '2' and 7 more", "does not name"),
         setup=lambda w: (w.root / "l.txt").write_bytes(_text([f"digit {d}" for d in DIGIT_NAMES])) and None),
] + [
    Case(f"predict: --labels with {id_}", _command("predict", "labels.txt"), 0, setup=_labels_file(content),
         check=_predicted_names(DIGIT_NAMES))
    for id_, content in GOOD_LABELS
]


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id, marks=c.marks) for c in LABELS_CASES])
def test_hostile_labels_file(case, tmp_path, monkeypatch, tools):
    run_case(case, tmp_path, monkeypatch, tools)


_BLOCK_HOST = "import sys\nfor m in ('tensorflow', 'tf_keras', 'h5py'):\n    sys.modules[m] = None\n"


@pytest.mark.parametrize("command", ["convert", "report"])
def test_device_only_install_names_the_host_install(command, tmp_path):
    """TensorFlow and h5py unimportable in a fresh Python, as in `pip install edgeresnet[device]`."""
    code = _BLOCK_HOST + "from edgeresnet.cli import main\nmain(sys.argv[1:])\n"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    env.pop("EDGERESNET_DEBUG", None)
    res = subprocess.run([sys.executable, "-c", code, command, "--out", str(tmp_path / "out")],
                         capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    errors = [ln for ln in res.stderr.splitlines() if ln.startswith("error:")]
    assert res.returncode == 2, res.stderr
    assert len(errors) == 1 and "Traceback" not in res.stderr, res.stderr
    assert f"{command} needs the host install" in errors[0] and "pip install 'edgeresnet[host]'" in errors[0]
    assert "h5py" in errors[0] and "tensorflow" in errors[0]
    assert list(tmp_path.iterdir()) == []


def _without_file_permission_override():
    """In the child, before exec: drop root's CAP_DAC_OVERRIDE / CAP_DAC_READ_SEARCH so mode 000 holds."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (1, 2):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
        if libc.prctl(24, cap, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP) failed")


def test_unreadable_h5_is_named(tmp_path):
    """A model file without read permission (as root, the child runs without the permission override)."""
    model = tmp_path / "model.h5"
    shutil.copyfile(REFERENCE_H5, model)
    model.chmod(0o000)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    env.pop("EDGERESNET_DEBUG", None)
    argv = [sys.executable, "-m", "edgeresnet.cli", "convert", str(model), "--int8", "--out", str(tmp_path / "out")]
    try:
        res = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120,
                             preexec_fn=_without_file_permission_override if os.geteuid() == 0 else None)
    except subprocess.SubprocessError as exc:
        pytest.skip(f"cannot drop root's file-permission override here ({exc})")
    finally:
        model.chmod(0o600)
    errors = [ln for ln in res.stderr.splitlines() if ln.startswith("error:")]
    assert res.returncode == 2, res.stderr
    assert len(errors) == 1 and str(model) in errors[0] and "ermission denied" in errors[0], res.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.h5"]

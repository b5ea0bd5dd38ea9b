import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from edgeresnet._util import files as fsutil
from edgeresnet._util import outlock
from edgeresnet.errors import OutputError, OutputExistsError
from edgeresnet._util.files import MANIFEST, StagedDir, atomic_write_bytes, check_output, check_output_free, read_manifest


def test_staged_dir_appears_only_on_commit(tmp_path):
    out = tmp_path / "out"
    with StagedDir(out) as staged:
        (staged.path / "a.tflite").write_bytes(b"x")
        assert not out.exists()
        staged.commit()
    assert (out / "a.tflite").read_bytes() == b"x"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_failure_leaves_nothing(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(RuntimeError):
        with StagedDir(out) as staged:
            (staged.path / "a.tflite").write_bytes(b"x")
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_existing_output_needs_overwrite(tmp_path):
    out = tmp_path / "out"
    with StagedDir(out) as staged:
        (staged.path / "old.txt").write_text("old")
        staged.commit()
    with pytest.raises(OutputExistsError, match="--overwrite"):
        check_output_free(out, overwrite=False)
    with StagedDir(out, overwrite=True) as staged:
        (staged.path / "new.txt").write_text("new")
        staged.commit()
    assert sorted(p.name for p in out.iterdir()) == [MANIFEST, "new.txt"]
    assert read_manifest(out)["files"] == ["new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_overwrite_replaces_only_what_edgeresnet_wrote(tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "data.csv").write_text("precious")
    with pytest.raises(OutputExistsError, match="not written by edgeresnet"):
        StagedDir(mine, overwrite=True)
    (mine / MANIFEST).write_text(json.dumps({"tool": "edgeresnet", "files": ["report.json"]}))
    with pytest.raises(OutputExistsError, match=r"did not write \(data.csv\)"):
        check_output(mine, overwrite=True)
    (mine / "data.csv").unlink()
    assert check_output(mine, overwrite=True) == mine
    empty = tmp_path / "empty"
    empty.mkdir()
    assert check_output(empty, overwrite=False) == empty  # an empty folder is free to use
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "mine"]


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _partial(out, owner):
    d = out.with_name(f".{out.name}.partial-{owner.get('pid', 'x')}")
    (d / "new").mkdir(parents=True)
    (d / "new" / "half.tflite").write_bytes(b"half")
    (d / "owner.json").write_text(json.dumps(owner))
    return d


def test_stale_partials_of_dead_runs_are_removed_live_ones_kept(tmp_path):
    out = tmp_path / "out"
    host = socket.gethostname()
    dead = _partial(out, {"pid": _dead_pid(), "host": host, "start": "1"})
    live = _partial(out, {"pid": os.getpid(), "host": host, "start": fsutil._start_time(os.getpid())})
    foreign = _partial(out, {"pid": 1, "host": host + "-elsewhere"})
    notes = fsutil.clean_stale_partials(out)
    assert not dead.exists() and live.exists() and foreign.exists()
    assert any("removed" in n and str(dead) in n for n in notes)
    assert any("running" in n for n in notes) and any("cannot be checked" in n for n in notes)


def test_a_reused_pid_is_not_mistaken_for_the_owner(tmp_path):
    out = tmp_path / "out"
    d = _partial(out, {"pid": os.getpid(), "host": socket.gethostname(), "start": "not-this-process"})
    fsutil.clean_stale_partials(out)
    assert not d.exists()


def test_kill_during_the_swap_restores_the_previous_output(tmp_path):
    out = tmp_path / "out"
    d = _partial(out, {"pid": _dead_pid(), "host": socket.gethostname()})
    (d / "old").mkdir()
    (d / "old" / "report.json").write_text("previous")
    fsutil.clean_stale_partials(out)
    assert (out / "report.json").read_text() == "previous" and not d.exists()


def test_failed_run_goes_beside_and_replaces_only_its_own_failure(tmp_path):
    out = tmp_path / "out"
    for text in ("first", "second"):
        with StagedDir(out, overwrite=False) as staged:
            (staged.path / "report.json").write_text(text)
            staged.commit(fsutil.failed_path(out))
    assert not out.exists() and (tmp_path / "out.failed" / "report.json").read_text() == "second"


def test_run_tempdir_is_removed_and_restored(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    with pytest.raises(KeyboardInterrupt):
        with fsutil.run_tempdir() as d:
            assert tempfile.gettempdir() == str(d) and os.environ["TMPDIR"] == str(d)
            Path(tempfile.mkdtemp()).joinpath("x").write_text("x")
            raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == [] and tempfile.tempdir == str(tmp_path)


def test_output_that_is_a_file_is_refused(tmp_path):
    f = tmp_path / "out"
    f.write_text("x")
    with pytest.raises(OutputExistsError, match="is a file"):
        check_output_free(f, overwrite=True)


def test_atomic_write_bytes(tmp_path):
    p = atomic_write_bytes(tmp_path / "m.tflite", b"abc")
    assert p.read_bytes() == b"abc"
    assert [x.name for x in tmp_path.iterdir()] == ["m.tflite"]


def test_run_tempdirs_of_killed_runs_are_removed(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    host = socket.gethostname()
    dead, live, unknown = (tmp_path / f"edgeresnet-run-{n}" for n in ("dead", "live", "unknown"))
    for d, owner in ((dead, {"pid": _dead_pid(), "host": host}), (live, {"pid": os.getpid(), "host": host}), (unknown, None)):
        d.mkdir()
        if owner:
            (d / "owner.json").write_text(json.dumps(owner))
    notes = fsutil.clean_stale_tempdirs()
    assert not dead.exists() and live.exists() and unknown.exists() and len(notes) == 1


def test_write_errors_name_the_file_as_the_user_will_see_it(tmp_path):
    import errno

    staged = tmp_path / ".out.partial-ab12" / "new" / "m.tflite"
    err = fsutil.write_error(OSError(errno.ENOSPC, "No space left on device", str(staged)), tmp_path)
    assert str(err) == f"cannot write {tmp_path / 'out' / 'm.tflite'}: no space left on the device; free some space or choose an --out on another disk"
    assert fsutil.write_error(OSError(errno.ENOENT, "gone", "x"), tmp_path) is None  # not a write problem a user fixes


def test_signals_become_interrupted_and_wait_out_the_swap():
    import signal

    from edgeresnet._util.signals import Interrupted, handle_signals, uninterrupted

    # A shell starts background jobs with SIGINT ignored, and handle_signals leaves an ignored signal
    # ignored (nohup, `cmd &`): give this test the default dispositions, whatever launched pytest.
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        with handle_signals():
            with pytest.raises(Interrupted) as info:
                with uninterrupted():
                    signal.raise_signal(signal.SIGTERM)
                    done = True  # the protected step finishes before the signal is raised
            assert done and info.value.exit_code == 143
        with handle_signals():
            with pytest.raises(KeyboardInterrupt) as info:
                signal.raise_signal(signal.SIGINT)
                for _ in range(500):  # the handler runs between bytecodes (or cuts a sleep short)
                    time.sleep(0.01)
            assert info.value.exit_code == 130
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        for s, h in saved.items():
            signal.signal(s, h)


def test_an_ignored_signal_stays_ignored():
    import signal

    from edgeresnet._util.signals import handle_signals

    saved = signal.getsignal(signal.SIGINT)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with handle_signals():
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
            signal.raise_signal(signal.SIGINT)  # ignored: nothing is raised
            time.sleep(0.05)
    finally:
        signal.signal(signal.SIGINT, saved)


def test_desktop_litter_and_compiler_output_do_not_make_a_folder_foreign(tmp_path):
    out = tmp_path / "out"
    with StagedDir(out) as staged:
        (staged.path / "m_edgetpu_int8.tflite").write_bytes(b"x")
        staged.commit()
    for name in (".DS_Store", "m_edgetpu_int8_edgetpu.tflite", "m_edgetpu_int8_edgetpu.log"):
        (out / name).write_text("made by a desktop or by `edgeresnet inspect`")
    assert check_output(out, overwrite=True) == out
    (out / "m_edgetpu_int8_edgetpu.log.bak").write_text("the user's")
    with pytest.raises(OutputExistsError, match="bak"):
        check_output(out, overwrite=True)


# ------------------------------------------------------------- one run per --out


def test_a_second_run_to_the_same_out_is_refused_while_the_first_holds_it(tmp_path):
    out = tmp_path / "out"
    with outlock.output_lock(out) as lock:
        assert lock == tmp_path / ".out.lock" and json.loads(lock.read_text())["pid"] == os.getpid()
        # Another process trying the same --out (through a symlinked spelling of it) is refused at once.
        (tmp_path / "alias").symlink_to(tmp_path)
        code = ("import sys\nfrom edgeresnet._util import outlock\ntry:\n"
                "    with outlock.output_lock(sys.argv[1]): print('got it')\nexcept Exception as e: print(e)")
        proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / "alias" / "out")],
                              capture_output=True, text=True, timeout=60)
        assert proc.stdout.strip() == (
            f"another edgeresnet run (pid {os.getpid()}) is writing {tmp_path / 'alias' / 'out'}; "
            "wait for it to finish or choose another --out"
        ), proc.stderr
        assert lock.exists()
    assert not lock.exists()  # made by the run, removed by it
    assert sorted(p.name for p in tmp_path.iterdir()) == ["alias"]


def test_the_lock_file_of_a_killed_run_is_taken_over_and_removed(tmp_path):
    out = tmp_path / "out"
    lock = tmp_path / ".out.lock"
    lock.write_text(json.dumps({"tool": "edgeresnet", "pid": _dead_pid(), "host": socket.gethostname()}))
    with outlock.output_lock(out):
        assert json.loads(lock.read_text())["pid"] == os.getpid()
    assert not lock.exists()


@pytest.mark.parametrize("make", ["file", "symlink"])
def test_a_lock_file_edgeresnet_did_not_make_is_left_alone(tmp_path, make):
    out = tmp_path / "out"
    lock, mine = tmp_path / ".out.lock", tmp_path / "notes.txt"
    mine.write_text("my notes")
    if make == "file":
        lock.write_text("my notes")
    else:
        lock.symlink_to(mine)
    with pytest.raises(OutputError, match=r"\.out\.lock exists and is not an edgeresnet lock file"):
        with outlock.output_lock(out):
            pass
    assert mine.read_text() == "my notes" and os.path.lexists(lock)
    assert lock.read_text() == "my notes"


def test_a_failed_swap_is_one_line_and_keeps_the_previous_output(tmp_path, monkeypatch):
    """Something else changing OUT during the swap gives an OutputError, not a raw OSError."""
    import errno

    out = tmp_path / "out"
    with StagedDir(out) as staged:
        (staged.path / "report.json").write_text("previous")
        staged.commit()
    real = os.replace

    def busy(src, dst):
        if Path(src).name == "new":
            raise OSError(errno.ENOTEMPTY, "Directory not empty", str(dst))
        real(src, dst)

    monkeypatch.setattr(fsutil.os, "replace", busy)
    with pytest.raises(OutputError, match="cannot move the finished output into .*changed") as err:
        with StagedDir(out, overwrite=True) as staged:
            (staged.path / "report.json").write_text("new")
            staged.commit()
    assert "\n" not in str(err.value)
    assert (out / "report.json").read_text() == "previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


@pytest.mark.parametrize("where", ["/proc/edgeresnet-out", "/proc/self/edgeresnet-out", "/sys/edgeresnet-out",
                                   "/dev/edgeresnet-out"])
def test_out_on_a_kernel_file_system_is_refused(where):
    with pytest.raises(OutputError, match="holds kernel interfaces, not files; choose a folder on a disk"):
        check_output(where)


def test_out_in_dev_shm_is_a_folder_like_any_other():
    if not Path("/dev/shm").is_dir():
        pytest.skip("no /dev/shm here")
    assert check_output("/dev/shm/edgeresnet-out-never-made") == Path("/dev/shm/edgeresnet-out-never-made")

import pytest

from edgeresnet.errors import OutputExistsError
from edgeresnet.fsutil import StagedDir, atomic_write_bytes, check_output_free


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
    out.mkdir()
    (out / "old.txt").write_text("old")
    with pytest.raises(OutputExistsError, match="--overwrite"):
        check_output_free(out, overwrite=False)
    with StagedDir(out, overwrite=True) as staged:
        (staged.path / "new.txt").write_text("new")
        staged.commit()
    assert [p.name for p in out.iterdir()] == ["new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_output_that_is_a_file_is_refused(tmp_path):
    f = tmp_path / "out"
    f.write_text("x")
    with pytest.raises(OutputExistsError, match="is a file"):
        check_output_free(f, overwrite=True)


def test_atomic_write_bytes(tmp_path):
    p = atomic_write_bytes(tmp_path / "m.tflite", b"abc")
    assert p.read_bytes() == b"abc"
    assert [x.name for x in tmp_path.iterdir()] == ["m.tflite"]

"""What a first-time user sees: the order of errors, the words on stderr, what report.md carries (issue #17)."""

from pathlib import Path

import pytest

from edgeresnet.cli import main


def run_cli(args, capsys):
    try:
        main([str(a) for a in args])
        code = 0
    except SystemExit as exc:
        code = exc.code
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.parametrize("extra", [[], ["--calib", "missing-folder"], ["--eval", "missing-folder"]])
def test_a_missing_model_is_reported_before_any_data_problem(extra, tmp_path, capsys):
    code, out, err = run_cli(["convert", tmp_path / "nomodel.h5", "--int8", "--out", tmp_path / "o", *extra], capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "nomodel.h5: no such file or folder" in lines[0]
    assert "calibration" not in lines[0] and "missing-folder" not in lines[0]
    assert not (tmp_path / "o").exists()

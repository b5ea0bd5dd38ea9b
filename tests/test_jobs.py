"""report --jobs N: the same files and numbers as --jobs 1, conversions in N processes."""

from __future__ import annotations

import json

import pytest


@pytest.mark.slow
def test_jobs_2_gives_the_files_and_numbers_of_jobs_1(tiny_model_h5, tmp_path, run_cli, write_image_folder):
    data = write_image_folder(tmp_path / "calib", classes=4, per_class=12, seed=5)
    reports = {}
    for jobs in (1, 2):
        out = tmp_path / f"jobs{jobs}"
        code, _, err = run_cli(["report", tiny_model_h5, "--target", "cpu", "--target", "gpu", "--calib", data,
                                "--calib-samples", "24", "--no-latency", "--jobs", jobs, "--out", out])
        assert code == 0, err
        assert ("variants in 2 processes" in err) == (jobs == 2), err  # the children really converted
        reports[jobs] = json.loads((out / "report.json").read_text())
    one, two = ({v["name"]: v for v in reports[j]["variants"]} for j in (1, 2))
    assert len(one) >= 5 and one.keys() == two.keys()
    for name, v in one.items():
        assert two[name]["sha256"] == v["sha256"], name  # bit-identical .tflite
        for key in ("status", "top1", "agreement", "sqnr_db", "size_bytes", "weight_sparsity", "checks"):
            assert two[name][key] == v[key], (name, key)
    assert "quantize" in reports[2]["timings"]


@pytest.mark.parametrize("value", ["0", "-2"])
def test_jobs_must_be_one_or_more(value, tmp_path, run_cli):
    code, _, err = run_cli(["report", "--jobs", value, "--out", tmp_path / "out"])
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1 and "--jobs" in lines[0] and "Traceback" not in err
    assert not (tmp_path / "out").exists()

"""`edgeresnet report`: a sweep of variants, each measured, written in every format."""

import csv
import json

import numpy as np
import pytest
from PIL import Image

from edgeresnet.device.bench import BenchConfig
from edgeresnet.errors import ConfigError
from edgeresnet.host.pipeline import ConvertOptions, run_report


@pytest.mark.slow  # end to end: many conversions (and a fine-tuning) of the tiny model
def test_report_sweeps_variants_and_writes_all_formats(tiny_model_h5, tiny_data, tmp_path, count_int8_sessions):
    sessions = count_int8_sessions()
    out = tmp_path / "rep"
    opts = ConvertOptions(
        model=str(tiny_model_h5), targets=("cpu", "edgetpu", "gpu"), calib=str(tiny_data["calib"]),
        eval=str(tiny_data["eval"]), preset="unit", out=str(out), calib_samples=60,
    )
    report = run_report(opts, sparsities=(0.5,), bench_config=BenchConfig(warmup=1, repeats=3))
    data = json.loads((out / "report.json").read_text())
    kinds = {(v["target"], v["precision"], "pruned" in v["name"]) for v in data["variants"]}
    assert {("cpu", "int8", False), ("cpu", "fp32", False), ("cpu", "dynamic", False), ("cpu", "int16x8", False),
            ("edgetpu", "int8", False), ("gpu", "fp16", False), ("cpu", "int8", True)} <= kinds
    for v in data["variants"]:
        assert v["status"] == "ok", v
        assert v["size_bytes"] > 0 and v["top1"] is not None
        assert v["latency"]["median_ms"] > 0 and v["latency"]["repeats"] == 3
    pruned = [v for v in data["variants"] if "pruned50" in v["name"]]
    dense = [v for v in data["variants"] if v["target"] == "cpu" and v["precision"] == "int8" and "pruned" not in v["name"]]
    # Sparsity survives quantization: counted in the emitted file, not in Keras.
    assert pruned[0]["weight_sparsity"] > 0.35 > dense[0]["weight_sparsity"]
    assert pruned[0]["compressed_bytes"] < dense[0]["compressed_bytes"]
    rows = list(csv.DictReader((out / "report.csv").open()))
    assert [r["name"] for r in rows] == [v["name"] for v in data["variants"]]
    html = (out / "report.html").read_text()
    assert "data:image/png;base64," in html and pruned[0]["name"] in html
    img = Image.open(out / "accuracy_vs_size.png")
    assert img.size[0] > 400 and len(np.unique(np.asarray(img.convert("L")))) > 10
    assert len(report.variants) == len(data["variants"])
    # One calibration per model: cpu and edgetpu int8 share it, unpruned and pruned each have theirs.
    assert len(sessions) == 2
    # int16x8: 16-bit activations with the int8 weights GPTQ chose (quantize.int16x8; its sessions are its own)
    i16 = next(v for v in data["variants"] if v["precision"] == "int16x8")
    assert i16["int8_method"] == "mse+gptq" and i16["int8_quantization"]["asked"] == "auto"
    assert data["timings"]["benchmark"] > 0 and data["timings"]["prune"] > 0


@pytest.mark.parametrize("bad", ["1.5", "0", "-0.2", "x"])
def test_report_rejects_bad_sparsity(bad, tmp_path, tiny_model_h5, monkeypatch, run_cli):
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli(["report", tiny_model_h5, "--sparsity", bad, "--out", tmp_path / "r"])
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1 and "sparsity" in err
    assert not (tmp_path / "r").exists()


def test_report_pruning_options_need_pruning(tmp_path, tiny_model_h5, run_cli):
    code, _, err = run_cli(["convert", tiny_model_h5, "--epochs", "2", "--out", tmp_path / "r"])
    assert code == 2 and "--epochs" in err and "--prune" in err


def test_sweep_sparsity_validated_before_work(tmp_path):
    with pytest.raises(ConfigError, match="between 0 and 1"):
        run_report(ConvertOptions(out=str(tmp_path / "r")), sparsities=(1.0,))


def test_convert_format_adds_writers_from_the_one_registry(tiny_model_h5, tiny_data, tiny_int8_run, tmp_path, run_cli):
    """`convert` writes json+md by default (conftest.tiny_int8_run, no --format); --format adds the others
    `report` writes, through the same writers."""
    from edgeresnet.report import WRITERS

    args = ["convert", tiny_model_h5, "--int8", "--calib", tiny_data["calib"], "--eval", tiny_data["eval"],
            "--preset", "unit", "--calib-samples", "40"]
    code, _, err = run_cli(args + ["--out", tmp_path / "a", "--format", "bogus"])
    assert code == 2 and "unknown report format 'bogus'" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "a").exists()
    plain = tiny_int8_run["out"]
    assert {"report.json", "report.md"} <= {p.name for p in plain.iterdir()}
    code, _, err = run_cli(args + ["--out", tmp_path / "b", "--format", "csv", "--format", "png", "--format", "html"])
    assert code == 0, err
    names = {p.name for p in (tmp_path / "b").iterdir()}
    assert {"report.json", "report.md", "report.csv", "accuracy_vs_size.png", "report.html"} <= names
    assert not {"report.csv", "report.html", "accuracy_vs_size.png"} & {p.name for p in plain.glob("*")}
    assert set(WRITERS) == {"json", "md", "csv", "png", "html"}
    assert "data:image/png;base64," in (tmp_path / "b" / "report.html").read_text()
    rows = list(csv.DictReader((tmp_path / "b" / "report.csv").open()))
    assert rows[0]["name"] == json.loads((tmp_path / "b" / "report.json").read_text())["variants"][0]["name"]


def test_an_over_budget_sweep_does_not_suggest_the_int16x8_it_already_holds(outlier_model_h5, tiny_data, tmp_path,
                                                                           run_cli):
    code, _, err = run_cli([
        "report", outlier_model_h5, "--target", "cpu", "--int8-method", "minmax", "--preset", "unit", "--no-recover",
        "--calib", tiny_data["calib"], "--eval", tiny_data["eval"], "--max-drop", "0", "--out", tmp_path / "rep",
    ])
    assert code == 3, err
    data = json.loads(next(tmp_path.glob("rep*failed*")).joinpath("report.json").read_text())
    int8 = next(v for v in data["variants"] if v["precision"] == "int8")
    assert int8["status"] == "over_budget" and int8.get("suggestion") is None
    assert any(v["precision"] == "int16x8" for v in data["variants"]) and "--precision int16x8" not in err

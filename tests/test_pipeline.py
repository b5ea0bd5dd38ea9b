"""End-to-end runs of the convert job: convert, run in the interpreter, compare numbers."""

import json

import numpy as np
import pytest

from edgeresnet.errors import ConfigError, DataError, DriftBudgetExceeded, OutputExistsError
from edgeresnet.host.pipeline import ConvertOptions, run_convert
from edgeresnet.device.runtime import TFLiteModel
from edgeresnet.device.tflite_graph import read_graph


def _opts(tiny_model_h5, tiny_data, out, **kw):
    base = dict(
        model=str(tiny_model_h5), int8=True, calib=str(tiny_data["calib"]), eval=str(tiny_data["eval"]),
        preset="unit", out=str(out), calib_samples=100,
    )
    base.update(kw)
    return ConvertOptions(**base)


def test_three_targets_end_to_end(tiny_model_h5, tiny_data, tmp_path, count_int8_sessions):
    out = tmp_path / "out"
    stages = []
    sessions = count_int8_sessions()
    report = run_convert(
        _opts(tiny_model_h5, tiny_data, out, targets=("cpu", "edgetpu", "gpu")),
        progress=lambda s, d, t: stages.append(s),
    )
    data = json.loads((out / "report.json").read_text())
    assert (out / "report.md").exists()
    assert [v["target"] for v in data["variants"]] == ["cpu", "edgetpu", "gpu"]
    assert [v["precision"] for v in data["variants"]] == ["int8", "int8", "fp16"]
    assert data["calibration"]["count"] == 100 and data["calibration"]["seed"] == 0
    assert data["evaluation"]["count"] == 60 and data["evaluation"]["labelled"]
    assert "calibrate tiny_cpu_int8.tflite" in stages and "evaluate float model" in stages
    for v in data["variants"]:
        for key in ("target", "precision", "path", "size_bytes", "top1", "drop_pts", "agreement"):
            assert v[key] is not None, key
        assert v["status"] == "ok"
        model = TFLiteModel(v["path"])
        assert v["size_bytes"] == model.size_bytes
    cpu, tpu, gpu = (read_graph(v["path"]) for v in data["variants"])
    assert {t.dtype for _, t in cpu.filter_tensors()} == {"int8"}
    # uint8 io on cpu too: what MediaPipe Tasks and the TFLite Task Library take.
    assert cpu.input_tensors[0].dtype == "uint8" and cpu.output_tensors[0].dtype == "uint8"
    assert tpu.input_tensors[0].dtype == "uint8" and tpu.output_tensors[0].dtype == "uint8"
    assert "float32" not in tpu.dtype_counts()
    assert {t.dtype for _, t in gpu.filter_tensors()} == {"float16"}
    assert report.to_dict()["float"]["top1"] == data["float"]["top1"]
    assert len(sessions) == 1  # cpu and edgetpu int8 (both uint8 io) share one calibration
    # Where the time went, per stage; report.md says it in one line.
    t = data["timings"]
    assert set(t) >= {"load", "calibration data", "statistics", "quantize", "evaluate", "checks", "write"}
    assert all(v >= 0 for v in t.values())
    assert t["statistics"] > 0 and t["quantize"] > 0 and t["evaluate"] > 0 and t["checks"] > 0
    assert sum(t.values()) <= data["seconds"] + 1.0
    assert sessions[0].seconds["statistics"] <= t["statistics"] + 1e-3
    md = (out / "report.md").read_text()
    assert sum(1 for line in md.splitlines() if line.startswith("Time by stage (s): ")) == 1


def test_numbers_match_an_independent_evaluation(tiny_int8_run, tiny_data):
    """The reported top-1 is what the written model really scores on the eval images (conftest.tiny_int8_run)."""
    from edgeresnet.device.images import load_images
    from edgeresnet.device.presets import get_preset

    v = tiny_int8_run["report"]["variants"][0]
    ev = load_images(tiny_data["eval"], (16, 16, 3))
    pred = TFLiteModel(v["path"]).predict(get_preset("unit").apply(ev.images))
    assert v["top1"] == pytest.approx(100.0 * np.mean(pred.argmax(1) == ev.labels), abs=1e-3)


def test_budget_exceeded_still_writes_report(outlier_model_h5, tiny_data, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(DriftBudgetExceeded, match="--max-drop 0.0"):
        run_convert(_opts(outlier_model_h5, tiny_data, out, max_drop=0.0, int8_method="minmax", recover=False))
    failed = tmp_path / "out.failed"  # beside --out: a failed run never replaces an output
    data = json.loads((failed / "report.json").read_text())
    v = data["variants"][0]
    assert data["passed"] is False and v["status"] == "over_budget" and not out.exists()
    assert v["drop_pts"] > 0 and (failed / "report.md").exists() and (failed / v["name"]).exists()
    assert v["path"] == str(failed / v["name"])


def test_existing_output_is_refused_before_any_work(tiny_model_h5, tiny_data, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(OutputExistsError):
        run_convert(_opts(tiny_model_h5, tiny_data, out))
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


def test_eval_classes_must_match_model_outputs(tiny_model_h5, tiny_data, tmp_path, write_image_folder):
    wrong = write_image_folder(tmp_path / "wrong", classes=3, per_class=2)
    with pytest.raises(DataError, match="3 class folders"):
        run_convert(_opts(tiny_model_h5, tiny_data, tmp_path / "out", eval=str(wrong)))
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "kw,err",
    [
        ({"calib_samples": 0}, ConfigError),
        ({"max_drop": -1.0}, ConfigError),
        ({"targets": ("tpu",)}, ConfigError),
        ({"targets": ()}, ConfigError),
        ({"precision": "int4"}, ConfigError),
        ({"prune": 0.5}, ConfigError),  # a number, not a PruneConfig: edgeresnet.convert() makes one
        ({"cluster": 4}, ConfigError),
        ({"qat": True}, ConfigError),
    ],
)
def test_bad_options_rejected_on_construction(kw, err, tmp_path):
    with pytest.raises(err):
        ConvertOptions(out=str(tmp_path / "o"), **kw)


def test_int8_without_calibration_is_refused(tiny_model_h5, tmp_path):
    with pytest.raises(ConfigError, match="--calib"):
        run_convert(ConvertOptions(model=str(tiny_model_h5), int8=True, out=str(tmp_path / "o")))
    with pytest.raises(ConfigError, match="--calib"):
        run_convert(ConvertOptions(model=str(tiny_model_h5), targets=("edgetpu",), out=str(tmp_path / "o")))


@pytest.mark.slow  # end to end: many conversions (and a fine-tuning) of the tiny model
def test_prune_emits_unpruned_and_pruned_side_by_side(tiny_model_h5, tiny_data, tmp_path):
    from edgeresnet.host.training.prune import PruneConfig

    out = tmp_path / "out"
    run_convert(_opts(tiny_model_h5, tiny_data, out, prune=PruneConfig(sparsity=0.6, epochs=1), train=str(tiny_data["calib"])))
    data = json.loads((out / "report.json").read_text())
    dense, pruned = data["variants"]
    assert "pruned60" in pruned["name"] and "pruned" not in dense["name"]
    assert pruned["weight_sparsity"] > 0.45 > dense["weight_sparsity"]
    assert pruned["compressed_bytes"] < dense["compressed_bytes"]
    assert data["prune"]["config"]["sparsity"] == 0.6 and data["prune"]["fine_tuned"] is True
    kinds = {layer["role"] for layer in data["prune"]["layers"]}
    assert {"stem", "classifier"} <= kinds
    assert all(layer["achieved_sparsity"] == 0 for layer in data["prune"]["layers"] if layer["role"] in ("stem", "classifier"))


def test_recovery_keeps_outlier_layers_in_float_and_meets_budget(outlier_model_h5, tiny_data, tmp_path):
    out = tmp_path / "out"
    report = run_convert(_opts(outlier_model_h5, tiny_data, out, max_drop=1.0, int8_method="minmax"))
    data = json.loads((out / "report.json").read_text())
    plain, mixed = data["variants"]
    assert plain["status"] == "over_budget" and plain["drop_pts"] > 1.0
    assert plain["recovered_by"] == mixed["name"] and mixed["status"] == "ok"
    assert mixed["precision"] == "int8+float" and mixed["drop_pts"] <= 1.0
    kept = mixed["recovery"]["float_layers"]
    assert kept and any("outlier" in k or "classifier" in k for k in kept)
    assert mixed["recovery"]["cost"]["size_bytes"]["final"] == mixed["size_bytes"]
    # Recovery went through the same engine and method as the model that failed, and says so.
    assert plain["int8_method"] == mixed["int8_method"] == mixed["recovery"]["method"] == "minmax"
    assert mixed["recovery"]["initial"]["agreement"] == pytest.approx(plain["agreement"])  # it started from that model
    assert data["passed"] is True and report.passed
    # The reported drop is what the written model scores.
    from edgeresnet.device.images import load_images
    from edgeresnet.device.presets import get_preset

    ev = load_images(tiny_data["eval"], (16, 16, 3))
    pred = TFLiteModel(mixed["path"]).predict(get_preset("unit").apply(ev.images))
    assert 100.0 * np.mean(pred.argmax(1) == ev.labels) == pytest.approx(mixed["top1"], abs=1e-3)
    assert "kept in float" in (out / "report.md").read_text()


def test_edgetpu_cannot_recover_and_names_worst_layers(outlier_model_h5, tiny_data, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(DriftBudgetExceeded):
        run_convert(_opts(outlier_model_h5, tiny_data, out, max_drop=1.0, targets=("edgetpu",), int8_method="minmax"))
    v = json.loads((tmp_path / "out.failed" / "report.json").read_text())["variants"]
    assert len(v) == 1 and v[0]["status"] == "over_budget"
    assert v[0]["worst_layers"] and "cannot run float layers" in v[0]["error"]


def test_no_recover_fails_the_run(outlier_model_h5, tiny_data, tmp_path):
    with pytest.raises(DriftBudgetExceeded):
        run_convert(_opts(outlier_model_h5, tiny_data, tmp_path / "out", max_drop=1.0, recover=False, int8_method="minmax"))


def test_default_int8_method_equalizes_the_outlier_that_minmax_cannot(outlier_model_h5, tiny_data, tmp_path):
    """The default mse+bias method finds the 1000x channel and equalizes it; plain min/max loses."""
    plain = run_convert(_opts(outlier_model_h5, tiny_data, tmp_path / "a", int8_method="minmax"))
    tuned = run_convert(_opts(outlier_model_h5, tiny_data, tmp_path / "b"))
    p, t = plain.variants[0].drift, tuned.variants[0].drift
    assert p.drop_pts > 10 and t.drop_pts <= 1.0 and t.agreement > p.agreement
    assert tuned.to_dict()["variants"][0]["int8_method"] == "mse+bias"

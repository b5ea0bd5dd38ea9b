"""What a first-time user sees: the order of errors, the words on stderr, what report.md carries."""

import json
import re

import numpy as np
import pytest



@pytest.mark.parametrize("extra", [[], ["--calib", "missing-folder"], ["--eval", "missing-folder"]])
def test_a_missing_model_is_reported_before_any_data_problem(extra, tmp_path, run_cli):
    code, out, err = run_cli(["convert", tmp_path / "nomodel.h5", "--int8", "--out", tmp_path / "o", *extra])
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "nomodel.h5: no such file or folder" in lines[0]
    assert "calibration" not in lines[0] and "missing-folder" not in lines[0]
    assert not (tmp_path / "o").exists()


# --------------------------------------------------------------------------- inspect's counts


@pytest.fixture(scope="module")
def tiny_tflite(tmp_path_factory):
    """A tiny Keras model converted to int8 with uint8 io (two QUANTIZE ops) and to float16."""
    from edgeresnet._util import tf as _tf
    from edgeresnet.host.converter import ConversionSpec, convert

    tf, k = _tf.tf(), _tf.tf_keras()
    k.utils.set_random_seed(3)
    inp = k.Input((16, 16, 3), batch_size=1)
    x = k.layers.Conv2D(8, 3, padding="same", activation="relu")(inp)
    x = k.layers.GlobalAveragePooling2D()(x)
    model = k.Model(inp, k.layers.Dense(4, activation="softmax")(x))
    calib = np.random.default_rng(0).uniform(0, 1, (12, 16, 16, 3)).astype(np.float32)
    folder = tmp_path_factory.mktemp("tiny_tflite")
    paths = {}
    for name, spec, data in [("int8", ConversionSpec("int8", "uint8"), calib), ("fp16", ConversionSpec("fp16", "float32"), None)]:
        paths[name] = folder / f"tiny_{name}.tflite"
        paths[name].write_bytes(convert(lambda: tf.lite.TFLiteConverter.from_keras_model(model), spec, data).model)
    return paths


def test_inspect_counts_every_op_left_on_built_in_kernels(tiny_tflite, run_cli):
    from collections import Counter

    from edgeresnet.device.inspection import inspect_tflite

    left = inspect_tflite(tiny_tflite["int8"]).interpreters["ai-edge-litert"].undelegated
    assert Counter(left)["QUANTIZE"] == 2, left  # uint8 in and out: one QUANTIZE at each end
    code, out, err = run_cli(["inspect", tiny_tflite["int8"]])
    assert code == 0, err
    (cpu,) = [line for line in out.splitlines() if line.strip().startswith("cpu ")]
    m = re.search(r"\((\d+) on built-in kernels: ([^)]*)\)", cpu)
    assert m, cpu
    listed = Counter()
    for item in m.group(2).split(", "):
        name, _, times = item.partition(" x")
        listed[name] += int(times or 1)
    assert listed == Counter(left) and int(m.group(1)) == sum(listed.values()), cpu
    assert "QUANTIZE x2" in cpu


def test_inspect_of_a_float16_model_names_each_dtype_once_and_no_edgetpu_memory(tiny_tflite, run_cli):
    code, out, err = run_cli(["inspect", tiny_tflite["fp16"]])
    assert code == 0, err
    (tensors,) = [line for line in out.splitlines() if line.strip().startswith("tensors")]
    names = re.findall(r"([a-z]+\d+) \d+", tensors)
    assert "float32" in names and "float16" in names and len(names) == len(set(names)), tensors
    assert "parameters ~" not in out  # no op maps to the Edge TPU, so no parameter memory is claimed
    code, out, err = run_cli(["inspect", tiny_tflite["int8"]])
    assert re.search(r"edgetpu: parameters ~\d+\.\d KiB", out), out


# --------------------------------------------------------------------------- progress says what it counts


def test_calibration_progress_counts_images_and_statistics_samples_apart(tiny_model_h5, tiny_data, tmp_path, run_cli):
    out = tmp_path / "out"
    code, _, err = run_cli([
        "convert", tiny_model_h5, "--int8", "--calib", tiny_data["calib"], "--eval", tiny_data["eval"],
        "--preset", "unit", "--calib-samples", 40, "--out", out,
    ])
    assert code == 0, err
    report = json.loads((out / "report.json").read_text())
    used = report["calibration"]["count"]
    starts = [line for line in err.splitlines() if line.startswith("calibrate ") and line.endswith(" ...")]
    counts = [re.search(r"\((\d+) ([a-z ]+)\) \.\.\.$", line).groups() for line in starts]
    # The one statistics pass counts exactly the images the report says were used (no outlier channel: no second look).
    assert counts == [(str(used), "calibration images")], starts
    assert re.search(r"^evaluate float model \(\d+ images\) \.\.\.$", err, re.M), err


def test_bench_shows_no_progress_for_a_fast_model(tiny_tflite, run_cli):
    code, out, err = run_cli(["bench", tiny_tflite["int8"], "--warmup", 3, "--repeats", 5])
    assert code == 0, err
    assert "median" in out
    assert "benchmark" not in err, err


def test_bench_names_warm_up_and_timed_runs_when_they_take_long(tiny_tflite, monkeypatch, run_cli):
    import types

    from edgeresnet._util import progress as _progress

    ticks = iter(range(10**6))  # the progress clock advances 2 s per look: every stage is slow
    monkeypatch.setattr(_progress, "time", types.SimpleNamespace(perf_counter=lambda: 2.0 * next(ticks)))
    code, out, err = run_cli(["bench", tiny_tflite["int8"], "--warmup", 3, "--repeats", 5])
    assert code == 0, err
    lines = [line for line in err.splitlines() if line.startswith("benchmark")]
    assert lines[0] == "benchmark (3 warm-up runs) ..." and "benchmark (5 timed runs) ..." in lines, lines
    assert re.match(r"benchmark: 5 timed runs done in \d+\.\ds$", lines[-1]), lines


# --------------------------------------------------------------------------- the default run


@pytest.fixture(scope="module")
def default_run(builtin_run):
    """`edgeresnet convert --int8 --target cpu --target edgetpu`: the built-in model and data, as a newcomer runs it
    (the session's one run of it, conftest.builtin_run)."""
    return builtin_run["out"]


def test_builtin_digits_calibration_is_class_balanced_and_seeded():
    from edgeresnet.host import demo

    full = demo.digits_images("calib")
    picked = full.sample(300, seed=0)
    assert picked.balanced and np.bincount(picked.labels).tolist() == [30] * 10
    assert np.array_equal(picked.images, full.sample(300, seed=0).images)  # the default run is deterministic
    assert not np.array_equal(picked.images, full.sample(300, seed=1).images)


@pytest.mark.slow
def test_default_run_reports_a_balanced_calibration(default_run):
    c = json.loads((default_run / "report.json").read_text())["calibration"]
    assert c["balanced"] is True and c["count"] == 300
    assert set(c["per_class"].values()) == {30} and len(c["per_class"]) == 10
    assert "class-balanced" in (default_run / "report.md").read_text()


@pytest.mark.slow
def test_report_md_carries_the_edge_tpu_note_and_parameter_memory(default_run):
    import shutil

    data = json.loads((default_run / "report.json").read_text())
    md = (default_run / "report.md").read_text()
    (tpu,) = [v for v in data["variants"] if v["target"] == "edgetpu"]
    kib = tpu["checks"]["edgetpu"]["param_bytes"] / 1024
    assert kib > 10
    assert f"parameters ~{kib:.1f} KiB (on-chip parameter cache 8 MiB)" in md, md
    if shutil.which("edgetpu_compiler") is None:
        assert md.count("edgetpu_compiler is not on PATH, so these figures are edgeresnet's prediction") == 1, md


# --------------------------------------------------------------------------- pruning: frozen layers, the pruned model's own float model


@pytest.fixture(scope="module")
def pruned_run(tiny_model_h5, tiny_data, tmp_path_factory, run_cli):
    """`convert --prune 0.5 --train ...` on the tiny ResNet with one 1x1 shortcut convolution frozen."""
    from edgeresnet._util import tf as _tf

    k = _tf.tf_keras()
    folder = tmp_path_factory.mktemp("frozen")
    model = k.models.load_model(tiny_model_h5)
    frozen = next(layer for layer in model.layers if isinstance(layer, k.layers.Conv2D)
                  and tuple(layer.kernel_size) == (1, 1))
    frozen.trainable = False
    model.save(folder / "frozen.h5")
    out = folder / "out"
    code, _, _ = run_cli([
        "convert", folder / "frozen.h5", "--int8", "--prune", 0.5, "--train", tiny_data["calib"], "--epochs", 1,
        "--calib", tiny_data["calib"], "--eval", tiny_data["eval"], "--preset", "unit", "--out", out,
    ])
    assert code == 0, code
    return {"out": out, "frozen": frozen.name, "data": json.loads((out / "report.json").read_text()),
            "md": (out / "report.md").read_text()}


@pytest.mark.slow
def test_frozen_layers_are_not_pruned_and_the_report_says_so(pruned_run):
    prune = pruned_run["data"]["prune"]
    (layer,) = [layer for layer in prune["layers"] if layer["name"] == pruned_run["frozen"]]
    assert layer["target_sparsity"] == 0 and layer["achieved_sparsity"] < 0.05, layer
    assert any(d["name"] == pruned_run["frozen"] and "frozen (trainable=False)" in d["reason"] for d in prune["left_dense"])
    assert f"left dense: `{pruned_run['frozen']}`: frozen (trainable=False)" in pruned_run["md"]
    assert any(layer["achieved_sparsity"] > 0.4 for layer in prune["layers"])  # the others were pruned


@pytest.mark.slow
def test_pruned_variant_is_also_measured_against_its_own_fine_tuned_float_model(pruned_run):
    data, md = pruned_run["data"], pruned_run["md"]
    (plain, pruned) = data["variants"]
    assert "prune" not in plain or not plain["prune"].get("vs_pruned_float")
    own = pruned["prune"]["vs_pruned_float"]
    assert own["reference"] == "the pruned and fine-tuned float Keras model (before conversion)"
    # The two references really differ: the unpruned float model's top-1 is the report's `float`.
    assert pruned["drop_pts"] == pytest.approx(data["float"]["top1"] - pruned["top1"], abs=0.011)
    assert own["drop_pts"] == pytest.approx(own["float_top1"] - own["top1"], abs=0.011)
    assert own["top1"] == pytest.approx(pruned["top1"], abs=0.011)
    assert 0 <= own["agreement"] <= 100 and own["sqnr_db"] is not None
    assert f"`{pruned['name']}` against the pruned and fine-tuned float Keras model" in md
    assert f"top-1 {own['float_top1']:.2f} %" in md and "the conversion's error alone" in md

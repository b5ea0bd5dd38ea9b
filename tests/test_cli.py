"""The command line: help everywhere, fast start, one-line errors with no traceback."""

import json
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from edgeresnet.cli import cli

REPO = Path(__file__).resolve().parents[1]


def test_every_command_has_help_and_is_documented():
    readme = (REPO / "README.md").read_text()
    reference = (REPO / "docs" / "reference.md").read_text()
    assert cli.commands, "no commands registered"
    for name, cmd in cli.commands.items():
        assert cmd.help and len(cmd.help.strip()) > 20, name
        assert f"edgeresnet {name}" in readme, f"README does not show `edgeresnet {name}`"
        for param in cmd.params:
            if param.param_type_name == "option":
                assert param.help, f"{name} {param.opts} has no help text"
                assert param.opts[0] in reference, f"docs/reference.md does not mention {name} {param.opts[0]}"


def test_help_is_fast_and_does_not_import_tensorflow():
    code = "import sys, edgeresnet.cli; print('tensorflow' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
    start = time.perf_counter()
    res = subprocess.run([sys.executable, "-m", "edgeresnet.cli", "--help"], capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    assert res.returncode == 0 and "convert" in res.stdout
    assert elapsed < 2.0, f"--help took {elapsed:.2f}s"


def _bad_cases(tmp: Path, calib: Path, model: Path):
    (tmp / "empty").mkdir()
    (tmp / "noimages").mkdir()
    (tmp / "noimages" / "notes.txt").write_text("hello")
    (tmp / "text.keras").write_text("this is not a model")
    (tmp / "corrupt.h5").write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(range(256)) * 4)
    (tmp / "list.txt").write_text("a.jpg\n")
    np.save(tmp / "wrong.npy", np.zeros((5, 8, 8, 3), np.uint8))
    (tmp / "taken").mkdir()
    (tmp / "taken" / "report.json").write_text("{}")
    common = ["--int8", "--calib", calib]
    return {
        "missing model": ([tmp / "nope.h5", *common], "nope.h5"),
        "corrupt model": ([tmp / "corrupt.h5", *common], "corrupt.h5"),
        "text named .keras": ([tmp / "text.keras", *common], "text.keras"),
        "empty calib folder": ([model, "--int8", "--calib", tmp / "empty"], "empty"),
        "folder without images": ([model, "--int8", "--calib", tmp / "noimages"], ".txt"),
        "file where folder expected": ([model, "--int8", "--calib", tmp / "list.txt"], "list.txt"),
        "wrong image shape": ([model, "--int8", "--calib", tmp / "wrong.npy"], "shape"),
        "unknown target": ([model, *common, "--target", "tpu"], "edgetpu"),
        "zero samples": ([model, *common, "--calib-samples", "0"], "--calib-samples"),
        "negative max drop": ([model, *common, "--max-drop", "-1"], "--max-drop"),
        "existing output": ([model, *common, "--out", tmp / "taken"], "--overwrite"),
        "bad io": ([model, *common, "--io", "int4"], "--io"),
    }


@pytest.mark.parametrize(
    "case",
    [
        "missing model", "corrupt model", "text named .keras", "empty calib folder", "folder without images",
        "file where folder expected", "wrong image shape", "unknown target", "zero samples",
        "negative max drop", "existing output", "bad io",
    ],
)
def test_bad_input_gets_one_line_error(case, tmp_path, tiny_model_h5, tiny_data, monkeypatch, run_cli):
    monkeypatch.chdir(tmp_path)
    args, needle = _bad_cases(tmp_path, tiny_data["calib"], tiny_model_h5)[case]
    code, out, err = run_cli(["convert", *args])
    assert code not in (0, None), f"{case}: exit code {code}"
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, f"{case}: expected one line, got {err!r}"
    assert lines[0].startswith("error: ") and "Traceback" not in err
    assert needle in lines[0], f"{case}: {lines[0]!r} does not mention {needle!r}"
    assert not list(tmp_path.rglob("*.tflite")), f"{case}: a .tflite was left behind"
    assert not (tmp_path / "edgeresnet-out").exists()


def test_convert_writes_models_and_prints_a_table(tmp_path, tiny_model_h5, tiny_data, tiny_int8_run, run_cli):
    # The first run is the session's (conftest.tiny_int8_run: these very arguments); a copy of its output here.
    out = tmp_path / "out"
    shutil.copytree(tiny_int8_run["out"], out)
    args = ["convert", tiny_model_h5, "--int8", "--calib", tiny_data["calib"], "--eval", tiny_data["eval"],
            "--preset", "unit", "--out", out]
    assert re.search(r"\| tiny_cpu_int8\.tflite \| cpu \| int8 \| uint8 \|", tiny_int8_run["stdout"])
    assert (out / "tiny_cpu_int8.tflite").exists() and (out / "report.json").exists()
    # A second run into the same folder needs --overwrite, and then works.
    code, _, err = run_cli(args)
    assert code == 2 and "--overwrite" in err
    (out / "tiny_cpu_int8.tflite").write_bytes(b"TFL3 stale")
    code, stdout, err = run_cli(args + ["--overwrite"])
    assert code == 0, err
    assert re.search(r"\| tiny_cpu_int8\.tflite \| cpu \| int8 \| uint8 \|", stdout)
    assert (out / "tiny_cpu_int8.tflite").read_bytes() == (tiny_int8_run["out"] / "tiny_cpu_int8.tflite").read_bytes()



def test_drop_is_shown_with_its_95_percent_margin(tiny_int8_run):
    out = tiny_int8_run["out"]
    v = json.loads((out / "report.json").read_text())["variants"][0]
    assert v["drop_margin_pts"] is not None and v["drop_margin_pts"] >= 0
    cell = f"{v['drop_pts']:.2f} ± {v['drop_margin_pts']:.2f}"
    assert f"| {cell} |" in tiny_int8_run["stdout"] and f"| {cell} |" in (out / "report.md").read_text()
    # report.csv and report.html (`report`): tests/test_report_formats.py

def test_max_drop_zero_is_met_by_recovery_or_fails(tmp_path, outlier_model_h5, tiny_data, run_cli):
    args = ["convert", outlier_model_h5, "--int8", "--calib", tiny_data["calib"], "--eval", tiny_data["eval"],
            "--preset", "unit", "--max-drop", "0", "--int8-method", "minmax"]
    code, stdout, err = run_cli(args + ["--out", tmp_path / "a", "--no-recover"])
    # A failed run's report goes beside --out, to OUT.failed, and the error says so.
    assert code == 3 and "exceeds --max-drop" in err and "a.failed" in err
    # a budget of 0 is finer than any drop's margin on a few dozen images: the run says so
    margin = json.loads((tmp_path / "a.failed" / "report.json").read_text())["variants"][0]["drop_margin_pts"]
    assert margin > 0 and f"known only to within ±{margin:.2f} points (95 %), wider than --max-drop 0" in err
    assert (tmp_path / "a.failed" / "report.json").exists() and not (tmp_path / "a").exists()
    # no float layers were tried: the error suggests 16-bit activations, as a command that runs
    int8 = json.loads((tmp_path / "a.failed" / "report.json").read_text())["variants"][0]
    suggestion = shlex.split(int8["suggestion"])
    assert suggestion[:2] == ["edgeresnet", "convert"] and int8["suggestion"] in err.strip().splitlines()[-1]
    assert "--precision int16x8 --target cpu" in int8["suggestion"] and "--int8-method minmax" in int8["suggestion"]
    code, _, err = run_cli(suggestion[1:])
    retried = json.loads((tmp_path / ("a-int16x8" if code == 0 else "a-int16x8.failed") / "report.json").read_text())
    assert code in (0, 3), err
    assert retried["variants"][0]["precision"] == "int16x8"
    assert retried["variants"][0]["agreement"] > int8["agreement"]  # 16-bit activations: closer to float
    code, stdout, err = run_cli(args + ["--out", tmp_path / "b"])
    data = json.loads((tmp_path / ("b" if code == 0 else "b.failed") / "report.json").read_text())
    mixed = [v for v in data["variants"] if v["precision"] == "int8+float"]
    if code == 0:  # met by keeping layers in float: the report says which
        assert data["passed"] and mixed[0]["status"] == "ok" and mixed[0]["recovery"]["float_layers"]
    else:  # not met: the run fails, the report says what was tried, and the error what to try next
        assert code == 3 and mixed[0]["status"] == "over_budget" and "--precision int16x8" in err
    assert "int8mixed" in stdout


@pytest.mark.slow
def test_learned_ranges_report_their_cost_and_divergence(tmp_path, tiny_model_h5, tiny_data, run_cli):
    out = tmp_path / "out"
    code, _, err = run_cli(["convert", tiny_model_h5, "--int8", "--calib", tiny_data["calib"], "--preset", "unit",
                            "--int8-method", "mse+gptq+ranges", "--out", out])
    assert code == 0, err
    data = json.loads((out / "report.json").read_text())
    q = [v for v in data["variants"] if v["precision"] == "int8"][0]["int8_quantization"]
    assert q["method"] == "mse+gptq+ranges" and q["details"]["range_seconds"] > 0
    assert q["details"]["range_held_out"] == len(list(Path(tiny_data["calib"]).rglob("*.png"))) // 5
    assert q["details"]["range_kl_after"] <= q["details"]["range_kl_before"]
    md = (out / "report.md").read_text()
    assert re.search(r"activation ranges (learned \(\d+ steps|not kept)", md), md


def test_models_command_lists_architectures(run_cli):
    code, out, _ = run_cli(["models"])
    assert code == 0
    assert re.search(r"resnet50\s+imagenet\s+224x224x3\s+1000\s+25,636,712", out)
    assert "resnet20" in out and "resnet152" in out


def test_inspect_rejects_non_tflite(tmp_path, run_cli):
    f = tmp_path / "m.tflite"
    f.write_bytes(b"not a model at all")
    code, _, err = run_cli(["inspect", f])
    assert code == 2 and err.startswith("error: ") and "TFLite" in err and err.count("\n") == 1




def test_option_choices_and_defaults_are_the_librarys():
    """The CLI reads its choices and defaults from the library: one definition each, in edgeresnet.defaults."""
    from edgeresnet import defaults
    from edgeresnet.device import images
    from edgeresnet.host import device_check
    from edgeresnet.host.training import cluster, prune

    def option(command, name):
        return next(p for p in cli.commands[command].params if p.name == name)

    assert option("convert", "calib_samples").default == defaults.DEFAULT_SAMPLES
    assert images.RESIZE_POLICIES is defaults.RESIZE_POLICIES and prune.SCHEDULES is defaults.PRUNE_SCHEDULES
    for command in ("convert", "report", "predict", "eval"):
        assert tuple(option(command, "resize").type.choices) == defaults.RESIZE_POLICIES
        assert option(command, "resize").default == defaults.DEFAULT_RESIZE
    for command in ("convert", "report"):
        assert tuple(option(command, "strategy").type.choices) == cluster.STRATEGIES
        assert tuple(option(command, "prune_schedule").type.choices) == prune.SCHEDULES
        assert tuple(option(command, "device_check").type.choices) == device_check.DEVICES

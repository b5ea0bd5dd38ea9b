import pytest

from edgeresnet.errors import ConfigError, TargetError
from edgeresnet.targets import PRECISIONS, get_target, targets


def test_table_has_the_three_delegates_in_order():
    assert list(targets())[:3] == ["cpu", "edgetpu", "gpu"]


@pytest.mark.parametrize(
    "target,int8,expected_precision,expected_io",
    [
        ("cpu", True, "int8", "uint8"),  # what MediaPipe / the Task Library take
        ("cpu", False, "fp32", "float32"),
        ("edgetpu", True, "int8", "uint8"),
        ("gpu", True, "fp16", "float32"),
    ],
)
def test_precision_and_io_defaults(target, int8, expected_precision, expected_io):
    t = get_target(target)
    p = t.precision_for(int8)
    assert p == expected_precision
    assert t.io_type_for(p) == expected_io


def test_edgetpu_never_offers_float():
    t = get_target("edgetpu")
    assert t.precisions == ("int8",)
    assert all(io in ("uint8", "int8") for io in t.int8_io_types)
    with pytest.raises(ConfigError):
        t.precision_for(False, "fp32")


def test_unknown_target_suggests_nearest():
    with pytest.raises(TargetError) as exc:
        get_target("edgtpu")
    msg = str(exc.value)
    assert "'edgetpu'" in msg and "\n" not in msg


def test_cpu_rejects_impossible_io():
    with pytest.raises(ConfigError, match="--io"):
        get_target("cpu").io_type_for("int8", "int16")


def test_every_target_precision_is_known():
    for t in targets().values():
        assert set(t.precisions) <= set(PRECISIONS)


# ---------------------------------------------------------------- the registry takes targets it does not ship

NPU_TOML = """
name = "npu"
description = "A hypothetical NPU delegate that takes int8 with int8 input/output"
precisions = ["int8", "fp32"]
int8_precision = "int8"
float_precision = "fp32"
int8_io_types = ["int8"]
needs_calibration_for = ["int8"]
float_layers = false
delegate = "npu-delegate"
checks = ["interpreter", "weights"]
"""


@pytest.fixture
def extra_targets(tmp_path, monkeypatch):
    """A folder of target files on the search path (through the environment), removed afterwards."""
    from edgeresnet.targets import TARGETS_PATH_ENV

    folder = tmp_path / "more-targets"
    folder.mkdir()
    monkeypatch.setenv(TARGETS_PATH_ENV, str(folder))
    return folder


def test_capabilities_are_declared_not_inferred():
    table = targets()
    assert {n: t.float_layers for n, t in table.items() if n in ("cpu", "edgetpu", "gpu")} == {
        "cpu": True, "edgetpu": False, "gpu": True}
    assert [table[n].delegate for n in ("cpu", "edgetpu", "gpu")] == ["xnnpack", "edgetpu", "gpu"]


@pytest.mark.parametrize(
    "change,message",
    [
        (('checks = ["interpreter", "weights"]', 'checks = ["interpreter", "wieghts"]'), "unknown checks \\['wieghts'\\]"),
        (("float_layers = false\n", ""), "float_layers"),
        (('float_layers = false', 'float_layers = "no"'), "float_layers must be true or false"),
        (('delegate = "npu-delegate"', 'delegate = ""'), "delegate"),
        (('int8_io_types = ["int8"]', 'int8_io_types = ["int4"]'), "bad io types"),
        (('name = "npu"', 'name = "npu"\ncolour = "red"'), "colour"),
    ],
)
def test_a_bad_target_file_is_an_error_naming_the_file(extra_targets, change, message):
    path = extra_targets / "npu.toml"
    path.write_text(NPU_TOML.replace(*change))
    with pytest.raises(ConfigError, match=message) as exc:
        targets()
    assert str(path) in str(exc.value) and "\n" not in str(exc.value)


def test_add_target_path_api(tmp_path):
    from edgeresnet.targets import _extra_paths, add_target_path, reset_registry

    (tmp_path / "npu.toml").write_text(NPU_TOML)
    with pytest.raises(ConfigError, match="no such folder"):
        add_target_path(tmp_path / "missing")
    add_target_path(tmp_path)
    try:
        assert get_target("npu").delegate == "npu-delegate"
        assert list(targets())[:3] == ["cpu", "edgetpu", "gpu"]
    finally:
        _extra_paths.remove(tmp_path)
        reset_registry()
    with pytest.raises(TargetError):
        get_target("npu")


@pytest.mark.slow  # end to end: many conversions (and a fine-tuning) of the tiny model
def test_a_new_target_runs_through_convert_inspect_and_report(
    extra_targets, tiny_model_h5, tiny_data, tmp_path, run_cli):
    """A target the project does not ship: one TOML in a folder, no code change, every command takes it."""
    import json


    (extra_targets / "npu.toml").write_text(NPU_TOML)
    data = ["--calib", tiny_data["calib"], "--eval", tiny_data["eval"], "--preset", "unit", "--calib-samples", "60"]

    code, out, err = run_cli(["convert", "--help"])
    assert code == 0 and "npu (A hypothetical NPU" in " ".join(out.split())

    code, _, err = run_cli(["convert", tiny_model_h5, "--int8", "--target", "npu", *data, "--out", tmp_path / "c"])
    assert code == 0, err
    (variant,) = json.loads((tmp_path / "c" / "report.json").read_text())["variants"]
    assert (variant["target"], variant["precision"], variant["io_type"], variant["status"]) == ("npu", "int8", "int8", "ok")
    assert set(variant["checks"]) == {"weights"} and variant["checks"]["weights"]["ok"] is True

    code, out, err = run_cli(["inspect", tmp_path / "c" / variant["path"], "--json", "--no-gpu"])
    assert code == 0, err
    verdicts = json.loads(out)["verdicts"]
    assert list(verdicts) == ["cpu", "edgetpu", "gpu", "npu"]
    assert verdicts["npu"]["ok"] is True and "loads and runs" in verdicts["npu"]["summary"]
    assert "XNNPACK" not in verdicts["npu"]["summary"]  # its delegate is not XNNPACK

    code, _, err = run_cli(["report", tiny_model_h5, "--target", "npu", *data, "--no-latency", "--out", tmp_path / "r"])
    assert code == 0, err
    rows = json.loads((tmp_path / "r" / "report.json").read_text())["variants"]
    assert [(v["target"], v["precision"], v["status"]) for v in rows] == [("npu", "int8", "ok"), ("npu", "fp32", "ok")]
    assert (tmp_path / "r" / "report.html").read_text().count("npu") >= 2


def test_docs_list_exactly_the_shipped_targets():
    from pathlib import Path

    page = (Path(__file__).resolve().parents[1] / "docs" / "targets.md").read_text()
    section = page.split("# Targets", 1)[1].split("\n## ", 1)[0]
    rows = [line.split("|")[1].strip(" `") for line in section.splitlines() if line.startswith("| `")]
    assert rows == list(targets())
    for t in targets().values():
        line = next(line for line in section.splitlines() if line.startswith(f"| `{t.name}`"))
        assert t.delegate in line and ("yes" if t.float_layers else "no") in line
        assert all(p in line for p in t.precisions)

"""The fine-tuning batch chosen to fit the memory bound, the measured peak per stage, and a float model at chance."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgeresnet.host.memory import MiB, MemoryMeter, choose_batch
from edgeresnet.device.verify import Baseline, at_chance

REPO = Path(__file__).resolve().parents[1]


def _zoo(name, size):
    from edgeresnet.host.models.zoo import build_zoo_model, zoo_spec

    return build_zoo_model(zoo_spec(name), classes=10, input_size=size)


def test_batch_is_lowered_for_resnet18_at_224_and_kept_for_small_inputs():
    big, small = choose_batch(_zoo("resnet18", 224), 64), choose_batch(_zoo("resnet8", 32), 64)
    assert not big.given and big.batch_size < 64 and big.estimate <= big.bound <= 3 * 1024 * MiB
    assert small.batch_size == 64 and small.fits
    given = choose_batch(_zoo("resnet18", 224), 64, given=64)  # as given, even where it does not fit
    assert given.given and given.batch_size == 64 and not given.fits and "bound_mib" not in given.to_dict("r", "224x224")


def test_meter_shows_the_peak_in_the_stage_that_reached_it():
    import os
    import resource

    meter = MemoryMeter()
    with meter("small"):
        np.ones(MiB, np.uint8)
    with meter("big"):  # 300 MiB above this process's peak so far (earlier tests may have set it)
        rss = int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        headroom = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - rss
        block = np.ones(headroom + 300 * MiB, np.uint8)  # touched: resident
        del block
    peaks = meter.to_dict()["peak_rss_mib"]
    assert peaks["big"] - peaks["small"] >= 250


def test_chance_level_is_two_binomial_deviations_above_one_in_classes():
    found = at_chance(Baseline(2000, 9.9, 50.0), 10)  # the float model: 10 classes, 2,000 images
    assert found["chance"] == 10.0 and found["threshold"] == pytest.approx(11.342, abs=1e-3)
    assert at_chance(Baseline(2000, 11.5, 50.0), 10) is None
    assert at_chance(Baseline(2000, 42.7, 80.0), 10) is None
    assert at_chance(Baseline(60, 36.0, 100.0), 4) is not None  # few images: a wide margin (25 % + 11.2)
    assert at_chance(Baseline(60, None, None), 4) is None  # unlabelled: no top-1


@pytest.mark.slow
def test_float_model_trained_one_step_is_at_chance_and_no_variant_is_ok(tiny_data, tmp_path, convert_once):
    run = convert_once(tmp_path / "out", [
        "convert", "resnet8", "--input-size", "16", "--classes", "4", "--train", tiny_data["calib"],
        "--epochs", "1", "--batch-size", "128", "--learning-rate", "1e-5", "--int8",  # one step: 120 images
        "--calib", tiny_data["calib"], "--calib-samples", "20", "--eval", tiny_data["eval"],
    ])
    report = run["report"]
    assert report["model"]["transfer"]["steps"] == 1
    assert report["float"]["at_chance"]["threshold"] == pytest.approx(25 + 2 * 100 * np.sqrt(0.25 * 0.75 / 60), abs=0.01)
    assert report["float"]["top1"] <= report["float"]["at_chance"]["threshold"]
    assert [v["status"] for v in report["variants"]] == ["float_at_chance"] and not report["passed"]
    warning = next(line for line in run["stderr"].splitlines() if "at chance" in line)
    assert warning.startswith("warning: ") and "--epochs" in warning and "--weights" in warning
    assert "warning: fine-tuning the new 4-class classifier ended with a training loss" in run["stderr"]
    assert "not meaningful" in run["stdout"] and "not meaningful" in (run["out"] / "report.md").read_text()
    assert report["memory"]["batch_size"] == 128 and report["memory"]["batch_size_from"] == "given"


def test_a_trained_float_model_is_not_at_chance(tiny_int8_run):
    report = tiny_int8_run["report"]
    assert "at_chance" not in report["float"] and all(v["status"] == "ok" for v in report["variants"])
    assert "batch_size" not in report["memory"] and set(report["memory"]["peak_rss_mib"]) >= {"load", "evaluate"}


def _upscaled_cifar(shared_data, root, per_class: int, side: int = 224):
    from PIL import Image

    train = shared_data / "cifar10" / "train"
    if not train.is_dir():
        pytest.skip(f"real data not found at {train}; set EDGERESNET_TEST_DATA")
    for cls in sorted(d for d in train.iterdir() if d.is_dir()):
        (root / cls.name).mkdir(parents=True)
        for src in sorted(cls.glob("*.jpg"))[:per_class]:
            with Image.open(src) as im:
                im.convert("RGB").resize((side, side), Image.Resampling.BILINEAR).save(root / cls.name / src.name)
    return root


# Runs the command as its child and prints the peak RSS of the largest process of the tree (the convert or its
# fine-tuning child): RUSAGE_CHILDREN covers every reaped descendant.
_TREE_PEAK = ("import resource, subprocess, sys; rc = subprocess.run(sys.argv[1:]).returncode; "
              "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss // 1024); sys.exit(rc)")


@pytest.mark.slow
def test_convert_at_224_with_default_batch_stays_under_the_bound_it_claims(tmp_path, shared_data):
    from edgeresnet.report.schema import validate_report

    data = _upscaled_cifar(shared_data, tmp_path / "cifar224", per_class=8)
    out = tmp_path / "out"
    cmd = [sys.executable, "-c", _TREE_PEAK, sys.executable, "-m", "edgeresnet.cli", "convert", "resnet18",
           "--classes", "10", "--int8", "--prune", "0.5", "--train", str(data), "--epochs", "1",
           "--calib", str(data), "--calib-samples", "20", "--eval", str(data), "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=3600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads((out / "report.json").read_text())
    validate_report(report)
    mem = report["memory"]
    assert mem["batch_size_from"] == "chosen" and mem["batch_size"] < 64 and f"batch {mem['batch_size']}" in proc.stderr
    assert set(mem["peak_rss_mib"]) == {"load", "fine-tune", "convert", "evaluate"}
    assert all(0 < peak <= mem["bound_mib"] for peak in mem["peak_rss_mib"].values()), mem
    tree_peak = int(proc.stdout.strip().splitlines()[-1])
    assert tree_peak <= mem["bound_mib"], f"the process tree peaked at {tree_peak} MiB, over {mem['bound_mib']}"
    assert max(mem["peak_rss_mib"].values()) >= 0.9 * tree_peak  # the report's stages saw the tree's peak


def test_activation_count_is_the_same_for_a_keras3_model_as_for_its_tf_keras_twin():
    """Keras 3 layers have no ``output_shape``: the estimate reads the output tensors' shapes in both."""
    import keras

    from edgeresnet._util import tf as _tf
    from edgeresnet.host.memory import activation_values

    def build(k):
        inp = k.Input((32, 32, 3))
        x = k.layers.Conv2D(8, 3)(inp)
        out = k.layers.Dense(4)(k.layers.GlobalAveragePooling2D()(x))
        return k.Model(inp, out)

    expected = 30 * 30 * 8 + 8 + 4  # conv, pooled, dense outputs per image
    assert activation_values(build(keras)) == activation_values(build(_tf.tf_keras())) == expected


def test_cluster_fine_tuning_gets_the_batch_that_fits_like_pruning(tiny_data, tmp_path):
    """--cluster N fine-tunes on --train: its batch is lowered to fit the memory bound (and recorded) as pruning's is."""
    from edgeresnet.host.models.loading import LoadedModel
    from edgeresnet.host.pipeline import ConvertOptions
    from edgeresnet.host.pipeline.finetune import fine_tune_batch
    from edgeresnet.host.training.clustering import ClusterConfig

    loaded = LoadedModel.from_keras(_zoo("resnet18", 224), "resnet18")
    opts = ConvertOptions(model="resnet18", int8=True, calib=tiny_data["calib"], train=tiny_data["calib"],
                          cluster=ClusterConfig(8), out=str(tmp_path / "out"))
    notes = []
    tuned, record = fine_tune_batch(opts, loaded, notes.append)
    assert record is not None and record["batch_size"] == tuned.cluster.batch_size < 64
    assert record["batch_size_from"] == "chosen"
    assert tuned.cluster.clusters == 8 and notes

"""convert on the real MLPerf Tiny ResNet-8 and real CIFAR-10 images: drift, Edge TPU mapping, GPU weights."""

import pytest

from edgeresnet.device.inspection import inspect_tflite
from edgeresnet.device.tflite_graph import read_graph

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def converted(resnet8_run):
    """`edgeresnet convert pretrainedResnet.h5 --int8 --target cpu --target edgetpu --target gpu` on real data
    (the session's one run of it, conftest.resnet8_run)."""
    return resnet8_run["by_target"] | {"_report": resnet8_run["report"]}


def test_float_baseline_is_the_documented_one(converted):
    assert converted["_report"]["float"]["top1"] == pytest.approx(75.1, abs=0.05)
    assert converted["_report"]["evaluation"]["count"] == 1000


def test_cpu_int8_drift_beats_the_mlperf_reference(converted):
    v = converted["cpu"]
    g = read_graph(v["path"])
    assert {t.dtype for _, t in g.filter_tensors()} == {"int8"}
    assert len(g.filter_tensors()) == 10  # 9 convolutions and the classifier
    assert v["drop_pts"] <= 0.3, v
    assert v["agreement"] >= 97.0, v  # the MLPerf reference int8 model agrees on 95.0 % here


def test_edgetpu_model_is_fully_8bit_and_maps(converted):
    v = converted["edgetpu"]
    g = read_graph(v["path"])
    assert "float32" not in g.dtype_counts()
    assert g.input_tensors[0].dtype == "uint8" and g.output_tensors[0].dtype == "uint8"
    assert v["checks"]["edgetpu"]["ok"] is True
    assert v["checks"]["edgetpu"]["ops_mapped"] == v["checks"]["edgetpu"]["ops_total"]
    assert v["drop_pts"] <= 0.5, v
    verdicts = inspect_tflite(v["path"], gpu=False).to_dict()["verdicts"]
    assert verdicts["edgetpu"]["ok"] is True


def test_gpu_model_carries_float16_weights(converted):
    v = converted["gpu"]
    g = read_graph(v["path"])
    assert {t.dtype for _, t in g.filter_tensors()} == {"float16"}
    assert abs(v["drop_pts"]) <= 0.5
    verdicts = inspect_tflite(v["path"]).to_dict()["verdicts"]
    assert verdicts["gpu"]["ok"] is not False and verdicts["cpu"]["ok"] is True


def test_every_drop_comes_with_its_95_percent_margin(converted):
    """On 1,000 images the drop's margin is a few tenths of a point: within its bounds from the report's own figures
    (only images where the two models answer differently move the drop, so b + c <= disagreements)."""
    n = converted["_report"]["evaluation"]["count"]
    for target in ("cpu", "edgetpu", "gpu"):
        v = converted[target]
        changed = round((100 - v["agreement"]) * n / 100)
        net = round(abs(v["drop_pts"]) * n / 100)
        lo = 196 * (max(net - net**2 / n, 0.0)) ** 0.5 / n
        hi = 196 * changed**0.5 / n
        assert lo - 1e-3 <= v["drop_margin_pts"] <= hi + 1e-3, v
        if target == "cpu":
            assert 0.1 < v["drop_margin_pts"] < 1.0  # a couple of dozen images change their answer

"""Accuracy recovery: int8 with the worst layers kept in float, on a model built to quantize badly."""

from __future__ import annotations

import math

import re

import numpy as np
import pytest

from edgeresnet.device.bench import BenchConfig
from edgeresnet.errors import ConfigError
from edgeresnet.host.quantize.recovery import (
    MIXED_PRECISION,
    STOP_MAX_STEPS,
    STOP_MET,
    STOP_NOTHING_LEFT,
    RecoveryConfig,
    edgetpu_worst_layers,
    measure_cost,
    recover_int8,
    short_name,
)
from edgeresnet.device.runtime import TFLiteModel
from edgeresnet.device.tflite_graph import parse_tflite
from edgeresnet.device.verify import drift, over_budget

# Layers on the path of the 1000x channel: the outlier conv and everything that
# reads its range (the pooling and the classifier whose weights were shrunk 1000x).
OUTLIER_PATH = {"conv_outlier", "global_average_pooling2d", "classifier"}


def _base(name: str) -> str:
    """A Keras layer name without the _N suffix Keras adds when the name was used before in the process."""
    return re.sub(r"_\d+$", "", name)


@pytest.fixture(scope="module")
def outlier(outlier_model_h5, tiny_data):
    from edgeresnet.device.images import load_images
    from edgeresnet.device.presets import get_preset
    from edgeresnet.host.models import load_model

    model = load_model(outlier_model_h5)
    preset = get_preset("unit")
    calib = preset.apply(load_images(tiny_data["calib"], (16, 16, 3)).images)
    ev = load_images(tiny_data["eval"], (16, 16, 3))
    x = preset.apply(ev.images)
    return {"model": model, "calib": calib, "x": x, "labels": ev.labels, "float": model.predict(x)}


def _run(outlier, io_type="float32", labels=True, method="minmax", **config):
    """Recovery from plain min/max by default: that is where the outlier channel must hurt."""
    return recover_int8(
        outlier["model"].tflite_converter,
        outlier["calib"],
        outlier["x"],
        outlier["float"],
        outlier["labels"] if labels else None,
        RecoveryConfig(**config),
        io_type=io_type,
        method=method,
    )


def _ops_computing_in(model: bytes, dtype: str) -> list[str]:
    """Ops (other than the QUANTIZE/DEQUANTIZE glue) whose output is ``dtype``."""
    g = parse_tflite(model)
    return [
        op.name
        for op in g.ops
        if op.name not in ("QUANTIZE", "DEQUANTIZE") and g.tensors[op.outputs[0]].dtype == dtype
    ]


def test_recovery_brings_the_outlier_model_within_budget(outlier):
    calls = []
    result = recover_int8(
        outlier["model"].tflite_converter,
        outlier["calib"],
        outlier["x"],
        outlier["float"],
        outlier["labels"],
        RecoveryConfig(max_drop=1.0),
        progress=lambda done, total: calls.append((done, total)),
        method="minmax",
    )
    # Plain int8 is far over budget; the loop meets it.
    assert over_budget(result.initial, 1.0) and result.initial.drop_pts > 20
    assert result.met and result.stopped == STOP_MET
    assert result.final.drop_pts <= 1.0
    # What went back to float: the outlier path, first of all; the clean first conv stays int8.
    labels = [result.label(n) for n in result.float_layers]
    assert "conv_outlier" in labels and "conv_a" not in labels
    assert _base(result.label(result.steps[1].returned[0])) in OUTLIER_PATH
    assert 0 < len(result.float_layers) < len(result.ranking)
    # Steps: 0 is all-int8, then one re-validation per step, float count strictly growing.
    counts = [s.float_layers for s in result.steps]
    assert counts[0] == 0 and all(b > a for a, b in zip(counts, counts[1:]))
    assert counts[-1] == len(result.float_layers)
    assert [s.met for s in result.steps] == [False] * (len(result.steps) - 1) + [True]
    assert result.steps[-1].size_bytes == len(result.model)
    # The final model runs, and re-measuring it gives the reported numbers.
    measured = drift(outlier["float"], TFLiteModel(result.model).predict(outlier["x"]), outlier["labels"])
    assert measured.drop_pts == pytest.approx(result.final.drop_pts)
    assert measured.agreement == pytest.approx(result.final.agreement)
    # A mixed model: float CONV_2D among int8 ops, builtins only.
    assert "CONV_2D" in _ops_computing_in(result.model, "float32")
    assert "CONV_2D" in _ops_computing_in(result.model, "int8")  # conv_a
    assert not any(op.is_custom for op in parse_tflite(result.model).ops)
    assert _ops_computing_in(result.initial_model, "float32") == []
    d = result.to_dict()
    assert d["precision"] == result.precision == MIXED_PRECISION
    assert d["met"] is True and d["float_layers"] == labels
    assert d["size_bytes"] == {"initial": len(result.initial_model), "final": len(result.model)}
    assert len(d["ranking"]) == len(result.ranking)
    assert {"name", "layer", "op", "channel_error", "rmse_scale"} <= set(d["ranking"][0])
    assert calls[-1][0] == calls[-1][1] and [c[0] for c in calls] == sorted(c[0] for c in calls)
    # What keeping layers float cost, measured.
    cost = measure_cost(result, BenchConfig(warmup=1, repeats=3))
    assert cost["size_bytes"]["initial"] == len(result.initial_model)
    assert cost["size_bytes"]["final"] == len(result.model)
    assert cost["latency_ms"]["initial"] > 0 and cost["latency_ms"]["final"] > 0


@pytest.mark.parametrize("io_type", ["int8", "uint8"])
def test_integer_io_keeps_the_boundary_layers_int8(outlier, io_type):
    # Without labels the budget is disagreement with the float model; 0 means every top-1 agrees.
    result = _run(outlier, io_type=io_type, labels=False, max_drop=0)
    assert result.met and result.final.drop_pts is None
    assert result.final.agreement == 100.0 and result.initial.agreement < 90
    m = TFLiteModel(result.model)
    assert (m.input.dtype, m.output.dtype) == (np.dtype(io_type), np.dtype(io_type))
    excluded = {result.label(n) for n in result.excluded}
    assert "conv_a" in excluded and any(n.startswith("SOFTMAX") for n in excluded)
    assert not set(result.excluded) & set(result.float_layers)
    assert result.to_dict()["io_type"] == io_type


def test_max_steps_zero_measures_and_ranks_but_returns_nothing(outlier):
    result = _run(outlier, max_drop=0, max_steps=0)
    assert not result.met and result.stopped == STOP_MAX_STEPS
    assert result.float_layers == () and len(result.steps) == 1
    assert result.model == result.initial_model and result.final == result.initial
    assert result.precision == "int8" and result.to_dict()["precision"] == "int8"
    # The ranking still names the culprits.
    assert _base(result.ranking[0].layer) in OUTLIER_PATH
    assert all(
        a.channel_error >= b.channel_error for a, b in zip(result.ranking, result.ranking[1:])
    )


def test_a_model_within_budget_is_left_all_int8(outlier):
    result = _run(outlier, max_drop=100)
    assert result.met and result.stopped == STOP_MET and len(result.steps) == 1
    assert result.float_layers == () and result.precision == "int8"
    assert result.model == result.initial_model


def test_when_nothing_is_left_the_result_lists_what_was_tried(outlier):
    # rmse/scale cannot see the crushed channels: the pooling that re-quantizes the
    # outlier range scores lowest, so it stays int8 to the end and the budget is missed.
    result = _run(outlier, max_drop=0, ranking="rmse_scale")
    assert not result.met and result.stopped == STOP_NOTHING_LEFT
    assert over_budget(result.final, 0)
    assert len(result.float_layers) == len(result.ranking) - 1  # one layer always stays int8
    left = {layer.layer for layer in result.ranking} - {result.label(n) for n in result.float_layers}
    assert {_base(n) for n in left} == {"global_average_pooling2d"}
    d = result.to_dict()
    assert d["met"] is False and len(d["float_layers"]) == len(result.float_layers)
    assert d["stopped"] == STOP_NOTHING_LEFT and d["ranking_metric"] == "rmse_scale"


def test_edgetpu_worst_layers_names_the_outlier_path(outlier):
    worst = edgetpu_worst_layers(
        outlier["model"].tflite_converter, outlier["calib"], outlier["x"], top=2, method="minmax"
    )
    assert len(worst) == 2
    assert {_base(w["layer"]) for w in worst} <= OUTLIER_PATH
    assert worst[0]["channel_error"] >= worst[1]["channel_error"]


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        ({"max_drop": -1}, "-1"),
        ({"max_drop": float("nan")}, "nan"),
        ({"max_drop": "1"}, "'1'"),
        ({"max_drop": True}, "True"),
        ({"max_drop": 1, "group_size": 0}, "group_size"),
        ({"max_drop": 1, "max_steps": -1}, "max_steps"),
        ({"max_drop": 1, "max_steps": 1.5}, "1.5"),
        ({"max_drop": 1, "ranking": "worst"}, "'worst'"),
        ({"max_drop": 1, "rank_samples": 0}, "rank_samples"),
    ],
)
def test_bad_configs_name_the_value(kwargs, fragment):
    with pytest.raises(ConfigError, match=fragment.replace("(", r"\(")):
        RecoveryConfig(**kwargs)


def test_bad_io_type_is_rejected_before_any_work():
    x = np.zeros((2, 16, 16, 3), np.float32)
    with pytest.raises(ConfigError, match="int16"):
        recover_int8(lambda: None, x, x, np.zeros((2, 4)), None, RecoveryConfig(max_drop=1), io_type="int16")


@pytest.mark.parametrize(
    "node, op, label",
    [
        ("model/activation/Relu;model/batch_normalization/FusedBatchNormV3;model/conv2d/Conv2D", "CONV_2D", "conv2d"),
        ("model/conv_outlier/Relu;model/conv_outlier/BiasAdd", "CONV_2D", "conv_outlier"),
        ("model/activation_2/Relu;model/add/add", "ADD", "add"),
        ("StatefulPartitionedCall:0", "SOFTMAX", "SOFTMAX (StatefulPartitionedCall:0)"),
        ("model/dense/MatMul;model/dense/BiasAdd", None, "dense"),
    ],
)
def test_short_names(node, op, label):
    assert short_name(node, op) == label


def test_config_round_trips_to_a_dict():
    cfg = RecoveryConfig(max_drop=0.5, group_size=2, max_steps=3, ranking="rmse_scale", rank_samples=16)
    assert RecoveryConfig(**cfg.to_dict()) == cfg
    assert math.isclose(cfg.to_dict()["max_drop"], 0.5)


# ---------------------------------------------------------------- one engine: recovery starts from the chosen method


@pytest.mark.parametrize("method", ["minmax", "mse+bias"])
def test_recovery_starts_from_the_chosen_methods_model(outlier, method):
    """Step 0 is exactly the model the method emits; every step keeps the method's quantization."""
    from edgeresnet.host.quantize import Int8Session

    session = Int8Session(outlier["model"].tflite_converter, outlier["calib"], "float32", method)
    result = recover_int8(
        None, None, outlier["x"], outlier["float"], outlier["labels"],
        RecoveryConfig(max_drop=0, max_steps=1), session=session,
    )
    assert result.method == method and result.to_dict()["method"] == method
    assert result.initial_model == session.model
    again = recover_int8(
        outlier["model"].tflite_converter, outlier["calib"], outlier["x"], outlier["float"], outlier["labels"],
        RecoveryConfig(max_drop=0, max_steps=0), method=method,
    )
    assert again.initial_model == session.model  # the same bytes, quantized again from scratch
    if len(result.steps) > 1:  # a layer went back to float on top of the method's model
        assert "CONV_2D" in _ops_computing_in(result.model, "int8")
        assert _ops_computing_in(result.model, "float32") and not _ops_computing_in(result.initial_model, "float32")


def test_recovery_from_mse_bias_is_at_least_as_accurate_as_from_minmax(outlier):
    """The default method's starting point is better, and so is what recovery makes of it."""
    results = {m: _run(outlier, method=m, max_drop=0, max_steps=2) for m in ("minmax", "mse+bias")}
    plain, best = results["minmax"], results["mse+bias"]
    assert best.initial.agreement >= plain.initial.agreement
    assert best.final.agreement >= plain.final.agreement
    assert best.final.top1 >= plain.final.top1

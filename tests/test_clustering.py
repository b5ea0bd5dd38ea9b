"""Weight clustering (edgeresnet.host.training.clustering): k-means per kernel, clusters kept while fine-tuning,
and at most N int8 values per output channel in the emitted .tflite."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from edgeresnet.errors import ConfigError
from edgeresnet.host.training.clustering import ClusterConfig, assignments, kmeans_1d, snap


def test_kmeans_finds_separated_groups_and_keeps_zeros_apart():
    rng = np.random.default_rng(0)
    values = np.concatenate([rng.normal(c, 0.01, 200) for c in (-1.0, 0.3, 2.0)])
    centroids, idx = kmeans_1d(values, 3)
    assert np.allclose(centroids, [-1.0, 0.3, 2.0], atol=0.01) and len(np.unique(idx)) == 3
    kernel = np.where(rng.random((3, 3, 4, 8)) < 0.5, 0.0, rng.normal(0, 1, (3, 3, 4, 8))).astype(np.float32)
    snapped = snap(kernel, assignments(kernel, 4))
    assert len(np.unique(snapped[snapped != 0])) <= 4
    assert np.array_equal(snapped == 0, kernel == 0)  # pruned zeros stay zero, nothing else becomes zero


@pytest.mark.parametrize("bad", [1, 257, 2.5, "8"])
def test_cluster_count_is_checked(bad):
    with pytest.raises(ConfigError):
        ClusterConfig(bad)


@pytest.mark.parametrize("layers", [(), "conv2d", ("conv2d", 3)])
def test_layers_to_cluster_are_a_tuple_of_names(layers):
    with pytest.raises(ConfigError, match="non-empty tuple of layer names"):
        ClusterConfig(4, layers=layers)
    assert ClusterConfig(4, layers=["a", "b"]).layers == ("a", "b")


def test_a_model_with_nothing_but_its_stem_or_with_nested_models_is_refused():
    from edgeresnet._util import tf as _tf
    from edgeresnet.host.training.clustering import cluster_model

    keras = _tf.tf_keras()
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(4, 3, name="only")(inputs))
    model = keras.Model(inputs, keras.layers.Softmax()(x), name="stem_only")
    with pytest.raises(ConfigError, match="stem_only has no Conv2D/Dense layer to cluster but its stem"):
        cluster_model(model, ClusterConfig(4))
    outer_in = keras.Input((8, 8, 3))
    wrapped = keras.Model(outer_in, model(keras.layers.Conv2D(3, 1, name="first")(outer_in)), name="wrapped")
    with pytest.raises(ConfigError, match="wrapped contains nested models \\(stem_only\\)"):
        cluster_model(wrapped, ClusterConfig(4))


@pytest.mark.slow
def test_clustered_fine_tuned_model_has_at_most_n_values_per_channel_in_the_tflite(tiny_model_h5, tiny_data):
    from edgeresnet.device.images import stream_images, load_images
    from edgeresnet.device.presets import get_preset
    from edgeresnet.device.runtime import TFLiteModel
    from edgeresnet.device.tflite_graph import parse_tflite
    from edgeresnet.host.converter import ConversionSpec, convert
    from edgeresnet.host.models.loading import LoadedModel, load_model
    from edgeresnet.host.training.clustering import cluster_model

    loaded = load_model(tiny_model_h5)
    unit = get_preset("unit")
    train = stream_images(tiny_data["calib"], (16, 16, 3)).with_preset(unit)
    body = tuple(layer.name for layer in loaded.model.layers if type(layer).__name__ in ("Conv2D", "Dense"))[1:]
    model, distinct = cluster_model(loaded.model, ClusterConfig(4, epochs=1, batch_size=16, layers=body), train)
    assert set(distinct) == set(body) and max(distinct.values()) <= 4
    calib = unit.apply(load_images(tiny_data["calib"], (16, 16, 3), samples=32).images)
    data = convert(LoadedModel.from_keras(model, "c").tflite_converter, ConversionSpec("int8", "int8", "minmax"), calib).model
    graph = parse_tflite(data)
    counted = 0
    for _, tensor in graph.filter_tensors():
        q = graph.const_array(tensor.index)
        if any(name in tensor.name.split("/") for name in body):
            counted += 1
            assert max(len(np.unique(q[c])) for c in range(q.shape[0])) <= 4, tensor.name
    assert counted == len(body)
    ev = load_images(tiny_data["eval"], (16, 16, 3))
    top1 = float(np.mean(TFLiteModel(data).predict(unit.apply(ev.images)).argmax(-1) == ev.labels))
    assert top1 > 0.5  # 4 classes: it still classifies


@pytest.mark.slow
def test_convert_cluster_n_emits_at_most_n_values_per_channel(run_cli, tiny_model_h5, tiny_data, tmp_path):
    from edgeresnet.device.tflite_graph import parse_tflite

    out = tmp_path / "out"
    code, _, err = run_cli(["convert", tiny_model_h5, "--int8", "--int8-method", "minmax", "--preset", "unit",
                            "--calib", tiny_data["calib"], "--calib-samples", "32", "--eval", tiny_data["eval"],
                            "--train", tiny_data["calib"], "--cluster", "4", "--epochs", "1", "--out", out])
    assert code == 0, err
    assert "clustered" in err and "at most 4 values" in err
    (model,) = out.glob("*.tflite")
    graph = parse_tflite(model.read_bytes())
    weights = [graph.const_array(t.index) for _, t in graph.filter_tensors()]
    assert max(len(np.unique(w[0])) for w in weights[1:]) <= 4  # every layer but the stem
    assert len(np.unique(weights[0])) > 4


@pytest.mark.slow
def test_report_cluster_n_records_it_and_emits_at_most_n_values_per_channel(run_cli, tiny_model_h5, tiny_data, tmp_path):
    """`report --cluster 4`: report.json (checked against its schema) carries the clustering, run-wide with each
    layer's distinct weights and per variant; the int8 model has at most 4 int8 values per output channel in the
    clustered layers; report.md, report.html and report.csv show it where they show pruning."""
    from edgeresnet.device.tflite_graph import parse_tflite
    from edgeresnet.report.schema import validate_report

    out = tmp_path / "out"
    code, _, err = run_cli(["report", tiny_model_h5, "--target", "cpu", "--int8-method", "minmax", "--preset", "unit",
                            "--calib", tiny_data["calib"], "--calib-samples", "32", "--eval", tiny_data["eval"],
                            "--train", tiny_data["calib"], "--cluster", "4", "--epochs", "1", "--batch-size", "16",
                            "--no-latency", "--out", out])
    assert code == 0, err
    report = json.loads((out / "report.json").read_text())
    validate_report(report)
    run = report["cluster"]
    assert (run["clusters"], run["fine_tuned"], run["epochs"], run["batch_size"], run["stem_left"]) == (4, True, 1, 16, True)
    body = set(run["layers"])
    assert len(body) == run["clustered_layers"] >= 3 and 2 <= max(run["layers"].values()) == run["max_values"] <= 4
    assert report["variants"] and all(v["cluster"] == {k: x for k, x in run.items() if k != "layers"}
                                      for v in report["variants"])
    assert {(v["fine_tune"]["method"], v["fine_tune"]["epochs"], v["fine_tune"]["data"]) for v in report["variants"]} \
        == {("cluster", 1, str(tiny_data["calib"]))}
    (int8,) = [v for v in report["variants"] if v["precision"] == "int8"]
    graph = parse_tflite(Path(int8["path"]).read_bytes())
    counted = 0
    for _, tensor in graph.filter_tensors():
        q = graph.const_array(tensor.index)
        if any(name in tensor.name.split("/") for name in body):
            counted += 1
            assert q.dtype == np.int8 and max(len(np.unique(q[c])) for c in range(q.shape[0])) <= 4, tensor.name
        else:  # the stem, left as it is
            assert len(np.unique(q)) > 4, tensor.name
    assert counted == len(body)
    md = (out / "report.md").read_text()
    assert "- clustering: 4 clusters per kernel" in md and "| cluster 1 ep @" in md
    assert "<h2>Clustering</h2>" in (out / "report.html").read_text()
    with open(out / "report.csv", newline="") as fh:
        assert {row["clusters"] for row in csv.DictReader(fh)} == {"4"}


def test_a_clustered_models_fine_tune_record_follows_pruning():
    from edgeresnet.host.pipeline.finetune import cluster_fine_tune_record
    from edgeresnet.host.training.clustering import cluster_record

    tuned = cluster_record(ClusterConfig(8, epochs=2, batch_size=16), {"a": 8, "b": 7}, fine_tuned=True)
    assert (tuned["max_values"], tuned["clustered_layers"], tuned["layers"]) == (8, 2, {"a": 8, "b": 7})
    pruned = {"method": "prune", "epochs": 3, "learning_rate": 1e-3, "data": "t"}
    assert cluster_fine_tune_record("t", tuned, None) == {
        "method": "cluster", "epochs": 2, "learning_rate": 3e-4, "batch_size": 16, "data": "t", "process": "this"}
    assert cluster_fine_tune_record("t", tuned, pruned)["after_pruning"] == pruned
    one_shot = cluster_record(ClusterConfig(8), {"a": 8}, fine_tuned=False)
    assert one_shot["epochs"] == 0 and "learning_rate" not in one_shot
    assert cluster_fine_tune_record(None, one_shot, pruned) is pruned and cluster_fine_tune_record(None, one_shot, None) is None


@pytest.mark.slow
def test_convert_prune_and_cluster_keeps_the_zeros_and_says_so(run_cli, tiny_model_h5, tiny_data, tmp_path):
    """--prune 0.5 --cluster 4: the pruned model is clustered with its zeros kept apart (at most 4 values and 0
    per output channel), fine-tuned twice, and compared with its own pruned and clustered float model."""
    from edgeresnet.device.tflite_graph import parse_tflite

    out = tmp_path / "out"
    code, _, err = run_cli(["convert", tiny_model_h5, "--int8", "--int8-method", "minmax", "--preset", "unit",
                            "--calib", tiny_data["calib"], "--calib-samples", "32", "--eval", tiny_data["eval"],
                            "--train", tiny_data["calib"], "--prune", "0.5", "--cluster", "4", "--epochs", "1",
                            "--batch-size", "16", "--out", out])
    assert code == 0, err
    report = json.loads((out / "report.json").read_text())
    (pruned,) = [v for v in report["variants"] if v.get("prune")]
    assert pruned["cluster"]["clusters"] == 4 and pruned["cluster"]["max_values"] <= 5 and pruned["weight_sparsity"] > 0.4
    assert pruned["fine_tune"]["method"] == "cluster" and pruned["fine_tune"]["after_pruning"]["method"] == "prune"
    assert "then clustered" in pruned["prune"]["vs_pruned_float"]["reference"]
    graph = parse_tflite(Path(pruned["path"]).read_bytes())
    body = set(report["cluster"]["layers"])
    for _, tensor in graph.filter_tensors():
        if any(name in tensor.name.split("/") for name in body):
            q = graph.const_array(tensor.index)
            assert max(len(np.unique(q[c][q[c] != 0])) for c in range(q.shape[0])) <= 4, tensor.name


@pytest.mark.slow
def test_cluster_with_qat_is_cluster_preserving_qat(run_cli, tiny_model_h5, tiny_data, tmp_path):
    """--cluster 4 --qat: the clustered model's QAT copy keeps the clusters (each cluster set back to its mean after
    every step), so its int8 file still holds at most 4 values per output channel in every clustered layer."""
    from edgeresnet.device.tflite_graph import parse_tflite

    out = tmp_path / "out"
    code, _, err = run_cli(["convert", tiny_model_h5, "--int8", "--preset", "unit", "--calib", tiny_data["calib"],
                            "--calib-samples", "32", "--eval", tiny_data["eval"], "--train", tiny_data["calib"],
                            "--cluster", "4", "--qat", "--epochs", "1", "--batch-size", "16", "--out", out])
    assert code == 0, err
    report = json.loads((out / "report.json").read_text())
    (qat,) = [v for v in report["variants"] if (v.get("fine_tune") or {}).get("method") == "cqat"]
    assert qat["cluster"]["clusters"] == 4 and qat["cluster"]["max_values"] <= 4
    graph = parse_tflite(Path(qat["path"]).read_bytes())
    body, seen = set(report["cluster"]["layers"]), 0
    for _, tensor in graph.filter_tensors():  # QAT's layers are tfmot's wrappers, quant_NAME
        if any(n in tensor.name.split("/") for name in body for n in (name, f"quant_{name}")):
            q = graph.const_array(tensor.index)
            seen += 1
            assert max(len(np.unique(q[c])) for c in range(q.shape[0])) <= 4, tensor.name
    assert seen == len(body)
    assert "cluster-preserving" in err

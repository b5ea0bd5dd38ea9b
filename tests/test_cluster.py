"""Fine-tuning on more than one machine: TF_CONFIG, the strategy choice, and a real two-worker run."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from edgeresnet.host.training.cluster import Cluster, read_tf_config, resolve
from edgeresnet.errors import ConfigError


def _tf_config(workers, index, kind="worker"):
    return json.dumps({"cluster": {"worker": workers}, "task": {"type": kind, "index": index}})


@pytest.mark.parametrize(
    "raw, message",
    [
        ("{not json", "not valid JSON"),
        ('{"cluster": {"worker": ["a:1"]}}', '"task"'),
        (_tf_config(["127.0.0.1:5000", "127.0.0.1:5000"], 0), "names 127.0.0.1:5000 twice"),
        (_tf_config(["127.0.0.1:5000", "127.0.0.1:5001"], 2), "is not in the cluster"),
        (_tf_config(["127.0.0.1", "127.0.0.1:5001"], 0), "host:port"),
        (json.dumps({"cluster": {"ps": ["a:1"], "worker": ["b:2"]}, "task": {"type": "worker", "index": 0}}), "'ps'"),
    ],
)
def test_bad_tf_config_is_one_line(raw, message):
    with pytest.raises(ConfigError, match=message) as err:
        read_tf_config({"TF_CONFIG": raw})
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    "raw, extra, message",
    [
        ("{not json", [], "TF_CONFIG is not valid JSON"),
        (_tf_config(["127.0.0.1:5000", "127.0.0.1:5000"], 1), [], "TF_CONFIG names 127.0.0.1:5000 twice"),
        (_tf_config(["127.0.0.1:5000", "127.0.0.1:5001"], 2), [], "is not in the cluster"),
        ("", ["--strategy", "multiworker"], "--strategy multiworker needs TF_CONFIG"),
    ],
)
def test_bad_cluster_from_the_command_line_is_one_line_before_any_work(cluster_inputs, tmp_path, monkeypatch,
                                                                     raw, extra, message, run_cli):
    monkeypatch.setenv("TF_CONFIG", raw)
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli([*_prune_args(*cluster_inputs, epochs=1), *extra])
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], err
    assert list(tmp_path.iterdir()) == []


def test_tf_config_roles_and_auto_choice():
    assert read_tf_config({}) is None
    assert read_tf_config({"TF_CONFIG": _tf_config(["127.0.0.1:5000"], 0)}) is None  # one task: no cluster
    two = read_tf_config({"TF_CONFIG": _tf_config(["h0:5000", "h1:5001"], 1)})
    assert isinstance(two, Cluster) and not two.is_chief and two.chief_address == "h0:5000" and two.peers() == ["h0:5000"]
    chief = read_tf_config({"TF_CONFIG": json.dumps(
        {"cluster": {"chief": ["c:1"], "worker": ["w:2"]}, "task": {"type": "chief", "index": 0}})})
    assert chief.is_chief and chief.size == 2
    assert resolve("auto", two, gpus=0) == "multiworker"
    assert resolve("auto", None, gpus=2) == "mirrored"
    assert resolve("auto", None, gpus=1) == "one"
    with pytest.raises(ConfigError, match="needs TF_CONFIG"):
        resolve("multiworker", None, gpus=0)


class _TwoWorkerStrategy:
    """What training_data asks of a MultiWorkerMirroredStrategy with two workers of one CPU each: the input
    function is called once per worker with tf.distribute's own InputContext, as the real strategy does."""

    num_replicas_in_sync = 2

    class extended:
        worker_devices = ("/job:worker/replica:0/task:0/device:CPU:0",)

    def distribute_datasets_from_function(self, dataset_fn):
        import tensorflow as tf

        return [dataset_fn(tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=k, num_replicas_in_sync=2))
                for k in range(2)]


def test_each_worker_reads_only_its_own_files_and_together_they_read_all():
    import numpy as np
    import tensorflow as tf

    from edgeresnet.device.images import ImageStream
    from edgeresnet.host.training.data import training_data

    n, batch = 37, 8
    stream = ImageStream.from_arrays(np.arange(n, dtype=np.float32).reshape(n, 1, 1, 1), np.arange(n) % 3)
    data = training_data(tf, _TwoWorkerStrategy(), stream, batch_size=batch, seed=5)
    assert data.workers == 2 and data.steps_per_epoch == 5  # ceil(37 / 8) global batches, split in two
    seen = []
    for worker, dataset in enumerate(data.dataset):
        batches = iter(dataset)  # endless: fit takes steps_per_epoch batches per epoch
        epochs = [[sorted(int(v) for v in next(batches)[0].numpy().ravel()) for _ in range(data.steps_per_epoch)]
                  for _ in range(2)]
        assert all(all(e_batch for e_batch in e) for e in epochs)
        assert all(abs(len(b) - batch / 2) <= 1 for e in epochs for b in e)  # the global batch split across replicas
        files = [sorted(v for b in e for v in b) for e in epochs]
        assert files[0] == files[1]  # the same own files every epoch ...
        assert epochs[0] != epochs[1]  # ... shuffled anew
        seen.append(set(files[0]))
    assert not seen[0] & seen[1] and seen[0] | seen[1] == set(range(n))
    assert abs(len(seen[0]) - len(seen[1])) <= 1


def _free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


@pytest.fixture(scope="module")
def cluster_inputs(tmp_path_factory, tiny_model_h5, write_image_folder):
    root = tmp_path_factory.mktemp("cluster")
    train = write_image_folder(root / "train", classes=4, per_class=32, seed=3)
    return tiny_model_h5, train


def _prune_args(model, train, epochs):
    """`convert` with pruning fine-tuned on ``train``: the command every worker runs."""
    return ["convert", str(model), "--int8", "--prune", "0.5", "--train", str(train), "--epochs", str(epochs),
            "--batch-size", "16", "--preset", "unit", "--calib", str(train), "--calib-samples", "32", "--out", "out"]


def _start(args, tf_config, cwd, extra_env=None):
    env = {**os.environ, "TF_CONFIG": tf_config, "CUDA_VISIBLE_DEVICES": "", **(extra_env or {})}
    return subprocess.Popen(
        [sys.executable, "-m", "edgeresnet.cli", *args], cwd=cwd, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )


def _finish(procs, timeout):
    """Wait for every process; kill the whole group of any still running at the deadline."""
    deadline = time.monotonic() + timeout
    results = []
    try:
        for p in procs:
            out, err = p.communicate(timeout=max(1.0, deadline - time.monotonic()))
            results.append((p.returncode, out, err))
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
    return results


@pytest.mark.slow
def test_two_workers_prune_and_cluster_one_model_and_only_the_chief_writes(cluster_inputs, tmp_path):
    workers = [f"127.0.0.1:{p}" for p in _free_ports(2)]
    args = [*_prune_args(*cluster_inputs, epochs=2), "--cluster", "4"]
    procs = [_start(args, _tf_config(workers, i), tmp_path) for i in (0, 1)]
    (chief_rc, chief_out, chief_err), (worker_rc, worker_out, worker_err) = _finish(procs, timeout=600)
    assert chief_rc == 0, chief_err[-3000:]
    assert worker_rc == 0, worker_err[-3000:]
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    prune = report["prune"]
    # tf.distribute.MultiWorkerMirroredStrategy is CollectiveAllReduceStrategy underneath
    assert prune["strategy"] in ("MultiWorkerMirroredStrategy", "CollectiveAllReduceStrategy") and prune["replicas"] == 2
    # The worker fine-tuned the same weights the chief converted.
    assert prune["weights_sha256"][:12] in worker_out, worker_out
    assert "nothing written here" in worker_out
    # Each worker read only its half of the 128 --train files (disjoint halves: unit test above), and each
    # step's global batch of 16 was split in two: 8 steps per epoch, as on one machine.
    assert prune["shard"] == {"workers": 2, "worker": 0, "files_read": 64, "files": 128, "steps_per_epoch": 8}
    assert "on its 64 of 128 --train files" in worker_out, worker_out
    assert prune["steps"] == 16
    # --cluster 4 then clustered the pruned model and fine-tuned it across the cluster too: same weights
    clustered = {v["cluster"]["weights_sha256"] for v in report["variants"] if v.get("cluster")}
    assert clustered and all(f"clustered (weights sha256 {sha[:12]})" in worker_out for sha in clustered), worker_out
    pruned = [v for v in report["variants"] if "pruned" in v["name"]]
    assert pruned and pruned[0]["status"] == "ok"
    # The zeros reach the emitted .tflite (counted in the flatbuffer; stem and classifier stay dense).
    assert pruned[0]["weight_sparsity"] > 0.3
    body = [layer for layer in prune["layers"] if layer["target_sparsity"] > 0]
    assert body and all(abs(layer["achieved_sparsity"] - 0.5) < 0.02 for layer in body)
    # One output folder, nothing else (no partial or failed folder from either worker).
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


@pytest.mark.slow
def test_two_workers_train_a_new_classifier_and_quantization_aware(cluster_inputs, tmp_path):
    """--classes (a zoo ResNet's new head) and --qat train across the cluster, each worker on its own files."""
    train = cluster_inputs[1]
    workers = [f"127.0.0.1:{p}" for p in _free_ports(2)]
    args = ["convert", "resnet8", "--input-size", "16", "--classes", "4", "--train", str(train), "--qat",
            "--epochs", "1", "--batch-size", "16", "--calib", str(train), "--calib-samples", "32", "--out", "out"]
    procs = [_start(args, _tf_config(workers, i), tmp_path) for i in (0, 1)]
    (chief_rc, _, chief_err), (worker_rc, worker_out, worker_err) = _finish(procs, timeout=600)
    assert chief_rc == 0, chief_err[-3000:]
    assert worker_rc == 0, worker_err[-3000:]
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    transfer = report["model"]["transfer"]
    qat = next(v for v in report["variants"] if (v.get("fine_tune") or {}).get("method") == "qat")
    for record in (transfer, qat["fine_tune"]):
        assert record["replicas"] == 2 and record["shard"]["files_read"] == 64 and record["shard"]["files"] == 128
        assert record["weights_sha256"][:12] in worker_out, worker_out  # the worker trained the same weights
    # one epoch of a new classifier from scratch may leave the float model at chance: then no drift means anything
    assert qat["status"] == ("float_at_chance" if report["float"].get("at_chance") else "ok")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


@pytest.mark.slow
def test_two_workers_fine_tune_every_candidate_of_an_optimize_search_together(cluster_inputs, tmp_path):
    """The chief searches; the other worker fine-tunes each pruned and clustered candidate with it, on its own
    half of --train, ends with the same weights, and writes nothing."""
    import zlib

    from edgeresnet.device.images import load_images
    from edgeresnet.host.models.loading import load_model
    from edgeresnet.host.optimize import Budgets, OptimizeOptions
    from edgeresnet.host.optimize.evaluate import convert_int8

    model, train = cluster_inputs
    loaded = load_model(model)
    x = load_images(train, loaded.input_shape, samples=32).images.astype("float32") / 255.0
    opts = OptimizeOptions(model=str(model), train=str(train), eval=str(train), budgets=Budgets(size=1))
    budget = int(0.7 * len(zlib.compress(convert_int8(loaded.model, opts, x, method="minmax"), 9)))
    workers = [f"127.0.0.1:{p}" for p in _free_ports(2)]
    args = ["optimize", str(model), "--train", str(train), "--eval", str(train), "--max-download", str(budget),
            "--preset", "unit", "--epochs", "1", "--batch-size", "16", "--int8-method", "minmax",
            "--calib-samples", "32", "--eval-samples", "64", "--target", "edgetpu", "--out", "out"]  # no mixed family
    procs = [_start(args, _tf_config(workers, i), tmp_path) for i in (0, 1)]
    (chief_rc, _, chief_err), (worker_rc, worker_out, worker_err) = _finish(procs, timeout=900)
    assert worker_rc == 0, worker_err[-3000:]
    assert chief_rc == 0, chief_err[-3000:]
    summary = json.loads((tmp_path / "out" / "optimize.json").read_text())
    assert summary["cluster"]["workers"] == 2
    tuned = [c for c in summary["candidates"] if c["fine_tuned_epochs"]]
    assert {c["settings"]["family"] for c in tuned} >= {"uniform", "allocated", "clustered"}
    for c in tuned:  # the worker trained each with the chief: the same weights at the end
        assert f"{c['label']} (weights sha256 {c['weights_sha256'][:12]})" in worker_out, (c["label"], worker_out)
    assert "on its 64 of 128 --train files" in worker_out and "nothing written here" in worker_out, worker_out
    chosen = next(c for c in summary["candidates"] if c["key"] == summary["chosen"])
    assert chosen["measured"]["download"] <= budget
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


@pytest.mark.slow
def test_a_worker_that_never_comes_is_a_one_line_timeout(cluster_inputs, tmp_path):
    workers = [f"127.0.0.1:{p}" for p in _free_ports(2)]
    args = _prune_args(*cluster_inputs, epochs=1)
    started = time.monotonic()
    # The wait starts once TensorFlow is imported, so a short timeout tests the same path without idling.
    proc = _start(args, _tf_config(workers, 0), tmp_path, {"EDGERESNET_CLUSTER_TIMEOUT": "2"})
    ((rc, out, err),) = _finish([proc], timeout=240)
    assert rc == 2, err[-2000:]
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and f"no answer from {workers[1]} within 2 s" in errors[0], err[-2000:]
    assert "Traceback" not in err
    assert time.monotonic() - started < 200
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.partial-*"))

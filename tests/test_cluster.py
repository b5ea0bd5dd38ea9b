"""Fine-tuning on more than one machine: TF_CONFIG, the strategy choice, and a real two-worker run."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import write_image_folder
from edgeresnet.cluster import Cluster, read_tf_config, resolve
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


def _free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


@pytest.fixture(scope="module")
def cluster_inputs(tmp_path_factory, tiny_model_h5):
    root = tmp_path_factory.mktemp("cluster")
    train = write_image_folder(root / "train", classes=4, per_class=32, seed=3)
    return tiny_model_h5, train


def _prune_args(model, train, epochs):
    """`convert` with pruning fine-tuned on ``train``: the command every worker runs."""
    return ["convert", str(model), "--int8", "--prune", "0.5", "--train", str(train), "--epochs", str(epochs),
            "--batch-size", "16", "--calib", str(train), "--calib-samples", "32", "--out", "out"]


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
def test_two_workers_fine_tune_one_model_and_only_the_chief_writes(cluster_inputs, tmp_path):
    workers = [f"127.0.0.1:{p}" for p in _free_ports(2)]
    args = _prune_args(*cluster_inputs, epochs=2)
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
    pruned = [v for v in report["variants"] if "pruned" in v["name"]]
    assert pruned and pruned[0]["status"] == "ok"
    # The zeros reach the emitted .tflite (counted in the flatbuffer; stem and classifier stay dense).
    assert pruned[0]["weight_sparsity"] > 0.3
    body = [layer for layer in prune["layers"] if layer["target_sparsity"] > 0]
    assert body and all(abs(layer["achieved_sparsity"] - 0.5) < 0.02 for layer in body)
    # One output folder, nothing else (no partial or failed folder from either worker).
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


@pytest.mark.slow
def test_a_worker_that_never_comes_is_a_one_line_timeout(cluster_inputs, tmp_path):
    workers = [f"127.0.0.1:{p}" for p in _free_ports(2)]
    args = _prune_args(*cluster_inputs, epochs=1)
    started = time.monotonic()
    proc = _start(args, _tf_config(workers, 0), tmp_path, {"EDGERESNET_CLUSTER_TIMEOUT": "20"})
    ((rc, out, err),) = _finish([proc], timeout=240)
    assert rc == 2, err[-2000:]
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and f"no answer from {workers[1]}" in errors[0], err[-2000:]
    assert "Traceback" not in err
    assert time.monotonic() - started < 200
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.partial-*"))

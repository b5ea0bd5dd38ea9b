"""Which ``tf.distribute`` strategy fine-tuning runs under, and the cluster it spans.

``--strategy`` names one of :data:`STRATEGIES`:

- ``one``: the default strategy (one device);
- ``mirrored``: ``MirroredStrategy`` over the GPUs of this machine;
- ``multiworker``: ``MultiWorkerMirroredStrategy`` over the machines that
  ``TF_CONFIG`` lists; every machine runs the same command with its own
  ``TF_CONFIG`` (same ``cluster``, its own ``task``);
- ``auto`` (default): ``multiworker`` when ``TF_CONFIG`` describes a cluster of
  more than one task, ``mirrored`` when several GPUs are visible, else ``one``.

In a cluster, worker 0 (or the task of type ``chief``) is the chief: only it
converts, evaluates and writes the output folder; the other workers train
with it and write nothing. Joining the cluster waits at most
``EDGERESNET_CLUSTER_TIMEOUT`` seconds (default 300) for every task, then
fails naming the addresses that never answered.
"""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import dataclass
from typing import Optional

from edgeresnet.errors import ClusterError, ConfigError

STRATEGIES = ("auto", "one", "mirrored", "multiworker")
TIMEOUT_ENV = "EDGERESNET_CLUSTER_TIMEOUT"
DEFAULT_TIMEOUT_S = 300.0


@dataclass(frozen=True)
class Cluster:
    """This process's place in the cluster ``TF_CONFIG`` describes."""

    tasks: tuple  # ((type, index, address), ...) in TF_CONFIG's order
    task_type: str
    task_index: int

    @property
    def address(self) -> str:
        return next(a for t, i, a in self.tasks if (t, i) == (self.task_type, self.task_index))

    @property
    def size(self) -> int:
        return len(self.tasks)

    @property
    def is_chief(self) -> bool:
        has_chief = any(t == "chief" for t, _, _ in self.tasks)
        if has_chief:
            return self.task_type == "chief"
        return self.task_type == "worker" and self.task_index == 0

    @property
    def chief_address(self) -> str:
        has_chief = any(t == "chief" for t, _, _ in self.tasks)
        want = ("chief", 0) if has_chief else ("worker", 0)
        return next(a for t, i, a in self.tasks if (t, i) == want)

    def peers(self) -> list[str]:
        return [a for t, i, a in self.tasks if (t, i) != (self.task_type, self.task_index)]


def read_tf_config(env=None) -> Optional[Cluster]:
    """The cluster in ``TF_CONFIG``, or None when it is unset or names a single task; ConfigError when malformed."""
    raw = (os.environ if env is None else env).get("TF_CONFIG", "").strip()
    if not raw:
        return None
    try:
        doc = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"TF_CONFIG is not valid JSON ({exc.msg} at character {exc.pos}); fix it or unset it") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("cluster"), dict) or not isinstance(doc.get("task"), dict):
        raise ConfigError('TF_CONFIG needs {"cluster": {"worker": ["host:port", ...]}, "task": {"type": "worker", "index": N}}')
    tasks = []
    for kind, addresses in doc["cluster"].items():
        if kind not in ("chief", "worker"):
            raise ConfigError(f"TF_CONFIG: task type {kind!r} is not supported; use 'worker' (and optionally one 'chief')")
        if not isinstance(addresses, list) or not all(isinstance(a, str) and _valid_address(a) for a in addresses):
            raise ConfigError(f"TF_CONFIG: cluster.{kind} must be a list of 'host:port' strings, got {addresses!r}")
        tasks += [(kind, i, a) for i, a in enumerate(addresses)]
    seen = {}
    for kind, i, a in tasks:
        if a in seen:
            raise ConfigError(f"TF_CONFIG names {a} twice ({seen[a]} and {kind} {i}); give every task its own host:port")
        seen[a] = f"{kind} {i}"
    task_type, task_index = doc["task"].get("type"), doc["task"].get("index")
    if not any((t, i) == (task_type, task_index) for t, i, _ in tasks):
        raise ConfigError(f"TF_CONFIG: task {task_type!r} {task_index!r} is not in the cluster; give this machine's own type and index")
    if len(tasks) < 2:
        return None
    return Cluster(tuple(tasks), task_type, int(task_index))


def _valid_address(address: str) -> bool:
    host, _, port = address.rpartition(":")
    return bool(host) and port.isdigit() and 0 < int(port) < 65536


def resolve(name: str, cluster: Optional[Cluster], gpus: int) -> str:
    """The concrete strategy ``name`` stands for here (``auto`` chosen from the cluster and the GPUs)."""
    if name not in STRATEGIES:
        raise ConfigError(f"unknown --strategy {name!r}; choose one of {', '.join(STRATEGIES)}")
    if name == "auto":
        return "multiworker" if cluster is not None else "mirrored" if gpus > 1 else "one"
    if name == "multiworker" and cluster is None:
        raise ConfigError(
            "--strategy multiworker needs TF_CONFIG describing the cluster (two or more tasks); "
            "see docs/cluster.md"
        )
    return name


def timeout_seconds() -> float:
    raw = os.environ.get(TIMEOUT_ENV)
    if raw is None:
        return DEFAULT_TIMEOUT_S
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not (0 < value < float("inf")):
        raise ConfigError(f"{TIMEOUT_ENV} must be a positive number of seconds, got {raw!r}")
    return value


_JOINED: list = []  # the process's MultiWorkerMirroredStrategy, once made (TF allows one, made before any op)


def join(cluster: Cluster):
    """Join ``cluster`` now: TensorFlow sets up collective ops only before the first op runs.

    Call this before the model is loaded; :func:`make_strategy` then returns
    the same strategy.
    """
    if not _JOINED:
        from edgeresnet._util import tf as _tf

        _JOINED.append(_join(_tf.tf(), cluster, timeout_seconds()))
    return _JOINED[0]


def make_strategy(name: str, use_cluster: bool = True):
    """The ``tf.distribute`` strategy for ``--strategy name`` (an already active strategy scope wins)."""
    from edgeresnet._util import tf as _tf

    tf = _tf.tf()
    if tf.distribute.has_strategy():
        return tf.distribute.get_strategy()
    cluster = read_tf_config() if use_cluster else None
    concrete = resolve(name, cluster, len(tf.config.list_logical_devices("GPU")))
    if concrete == "one":
        return tf.distribute.get_strategy()
    if concrete == "mirrored":
        return tf.distribute.MirroredStrategy()
    if not _JOINED:
        raise ClusterError(
            "the cluster must be joined before TensorFlow runs anything: call edgeresnet.host.training.cluster.join() "
            "first (edgeresnet convert/report do)"
        )
    return _JOINED[0]


def broadcast(payload: Optional[bytes]) -> bytes:
    """The chief's ``payload`` on every task of the joined cluster (the others pass None).

    Two all-reduces every task must make in the same order: the length, then the bytes (one float each,
    given by the chief's replicas only). How a search's chief tells the other workers what to fine-tune next.
    """
    import numpy as np

    from edgeresnet._util import tf as _tf

    if not _JOINED:
        raise ClusterError("broadcast needs the cluster joined first (edgeresnet.host.training.cluster.join)")
    tf, strategy = _tf.tf(), _JOINED[0]
    local = max(1, len(strategy.extended.worker_devices))

    def summed(values: np.ndarray) -> np.ndarray:
        share = tf.constant(values.astype(np.float32) / local)  # each of the chief's replicas gives its share
        return strategy.reduce(tf.distribute.ReduceOp.SUM, strategy.run(lambda: share), axis=None).numpy()

    raw = np.frombuffer(payload or b"", dtype=np.uint8)
    length = int(round(float(summed(np.array([raw.size], dtype=np.float64))[0])))
    if not length:
        return b""
    mine = np.zeros(length) if payload is None else raw.astype(np.float64)
    return np.clip(np.rint(summed(mine)), 0, 255).astype(np.uint8).tobytes()


def _join(tf, cluster: Cluster, timeout: float):
    """MultiWorkerMirroredStrategy, after every task has shown up (else a timeout naming the silent ones).

    TensorFlow's own join blocks in native code, holding the interpreter, until
    every task connects: a missing worker would hang the run for good. So the
    tasks first meet on their own ports with plain sockets (each listens, and
    connects to the others), within ``timeout``; only then is the strategy made.
    """
    _rendezvous(cluster, timeout)
    try:
        return tf.distribute.MultiWorkerMirroredStrategy()
    except Exception as exc:  # noqa: BLE001 - TensorFlow raises many kinds here
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ClusterError(
            f"cannot form the cluster in TF_CONFIG ({cluster.task_type} {cluster.task_index} at {cluster.address}): {first}"
        ) from None


def _split(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


def _rendezvous(cluster: Cluster, timeout: float) -> None:
    """Return once every peer has been reached and has reached this task; ClusterError at ``timeout``."""
    me, peers = cluster.address, set(cluster.peers())
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind(("", _split(me)[1]))
    except OSError as exc:
        listener.close()
        raise ClusterError(f"{cluster.task_type} {cluster.task_index}: cannot listen on {me} ({exc.strerror}); "
                           "is another run using that port?") from None
    listener.listen(len(peers) + 4)
    listener.settimeout(0.2)
    reached, heard = set(), set()
    deadline = time.monotonic() + timeout
    try:
        while not (reached >= peers and heard >= peers):
            if time.monotonic() > deadline:
                silent = sorted(peers - (reached & heard))
                raise ClusterError(
                    f"{cluster.task_type} {cluster.task_index} at {me}: no answer from {', '.join(silent)} within "
                    f"{timeout:g} s; start the same command there with its own TF_CONFIG (or raise {TIMEOUT_ENV})"
                )
            for peer in sorted(peers - reached):
                try:
                    with socket.create_connection(_split(peer), timeout=0.5) as conn:
                        conn.sendall(me.encode() + b"\n")
                    reached.add(peer)
                except OSError:
                    pass
            try:
                conn, _ = listener.accept()
            except (socket.timeout, BlockingIOError):
                continue
            with conn:
                conn.settimeout(2.0)
                try:
                    heard.add(conn.recv(256).decode(errors="replace").strip())
                except OSError:
                    pass
    finally:
        listener.close()

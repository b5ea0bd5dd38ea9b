"""Fine-tuning in a child process (``_isolate.run_in_child``): same results, progress, errors, clean-up."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest

from edgeresnet._util.isolation import IsolatedFailure, run_in_child
from edgeresnet.errors import DataError, EdgeResNetError


def _children() -> list[int]:
    out = []
    for task in Path(f"/proc/{os.getpid()}/task").iterdir():
        out += [int(c) for c in (task / "children").read_text().split()]
    return out


def test_run_in_child_relays_progress_and_returns_the_same_result(tmp_path, write_image_folder):
    from edgeresnet.device.images import load_images
    folder = write_image_folder(tmp_path / "imgs", classes=2, per_class=5)
    seen = []
    there = run_in_child(load_images, folder, (16, 16, 3), progress=lambda done, total, what=None: seen.append((done, total)))
    here = load_images(folder, (16, 16, 3))
    assert np.array_equal(there.images, here.images) and np.array_equal(there.labels, here.labels)
    assert seen and seen[-1] == (10, 10)  # the child's progress calls reached this process, in order
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)


def test_run_in_child_reraises_the_childs_error_and_names_its_death(tmp_path):
    from edgeresnet.device.images import load_images
    from edgeresnet.host.training.child import child_failure

    before = set(_children())  # other tests in this process may have children of their own
    with pytest.raises(DataError, match="no such"):  # the library's own exception, message intact
        run_in_child(load_images, tmp_path / "missing", (16, 16, 3))
    with pytest.raises(IsolatedFailure, match=r"was killed \(SIGABRT\)"):
        run_in_child(os.abort)
    oom = child_failure(IsolatedFailure("was killed (SIGKILL)"), "fine-tuning (pruning)")
    assert isinstance(oom, EdgeResNetError) and "lower --batch-size" in str(oom) and "\n" not in str(oom)
    assert set(_children()) <= before


def test_an_interrupted_parent_kills_its_child():
    """Ctrl-C / SIGTERM arrive as an exception while waiting (handle_signals): the child must not outlive it."""
    def interrupt(signum, frame):
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGALRM, interrupt)
    before = set(_children())
    started = time.monotonic()
    try:
        signal.alarm(2)
        with pytest.raises(KeyboardInterrupt):
            run_in_child(time.sleep, 60)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    assert time.monotonic() - started < 30
    assert set(_children()) <= before


def test_a_child_dies_with_its_parent_even_by_sigkill(tmp_path):
    """SIGKILL cannot be caught: the child must not go on training orphaned (PR_SET_PDEATHSIG)."""
    import subprocess
    import sys

    parent = subprocess.Popen(
        [sys.executable, "-c", "import time; from edgeresnet._util.isolation import run_in_child; run_in_child(time.sleep, 60)"],
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
    )
    try:
        deadline, child = time.monotonic() + 20, None
        while child is None and time.monotonic() < deadline:
            kids = [int(c) for t in Path(f"/proc/{parent.pid}/task").iterdir() for c in (t / "children").read_text().split()]
            child = kids[0] if kids else None
            time.sleep(0.1)
        assert child is not None, "run_in_child never started its child"
        parent.kill()
        parent.wait()
        deadline = time.monotonic() + 10
        while Path(f"/proc/{child}").exists() and time.monotonic() < deadline:
            try:  # a zombie until someone reaps it: dead all the same
                if Path(f"/proc/{child}/stat").read_text().split(")")[-1].split()[0] == "Z":
                    break
            except OSError:
                break
            time.sleep(0.1)
        alive = Path(f"/proc/{child}").exists() and Path(f"/proc/{child}/stat").read_text().split(")")[-1].split()[0] != "Z"
        assert not alive, "the child outlived its SIGKILLed parent"
    finally:
        if parent.poll() is None:
            parent.kill()


def _tiny_portable_model(keras):
    keras.utils.set_random_seed(0)
    inp = keras.Input((16, 16, 3))
    x = inp
    for filters in (8, 16):
        x = keras.layers.ReLU()(keras.layers.BatchNormalization()(keras.layers.Conv2D(filters, 3, padding="same")(x)))
    out = keras.layers.Dense(4, activation="softmax")(keras.layers.GlobalAveragePooling2D()(x))
    return keras.Model(inp, out)


def _same_weights(a, b) -> bool:
    wa, wb = a.get_weights(), b.get_weights()
    return len(wa) == len(wb) and all(np.array_equal(x, y) for x, y in zip(wa, wb))


@pytest.mark.slow  # three fine-tunes in this process and the same three in fresh TensorFlow processes
def test_fine_tuning_in_a_child_is_bit_identical_to_in_process():
    """Pruning, quantization-aware training (sparsity-preserving) and a new classifier: the child's weights
    and records equal this process's, and its progress arrives here."""
    from edgeresnet._util import tf as _tf
    from edgeresnet.host.training.prune import PruneConfig, prune_model, prune_model_in_child
    from edgeresnet.host.training.qat import QATConfig, quantize_aware_train, quantize_aware_train_in_child
    from edgeresnet.host.training.child import portable
    from edgeresnet.host.training.transfer import TransferConfig, fine_tune, fine_tune_in_child

    keras = _tf.tf_keras()
    model = _tiny_portable_model(keras)
    assert portable(model)
    assert not portable(keras.Sequential([keras.layers.Lambda(lambda t: t, input_shape=(4,))]))
    rng = np.random.default_rng(0)
    train = (rng.random((48, 16, 16, 3), dtype=np.float32), rng.integers(0, 4, 48))

    config = PruneConfig(sparsity=0.5, epochs=2, batch_size=16)
    seen = []
    here = prune_model(model, config, train=train)
    there = prune_model_in_child(model, config, train=train, progress=lambda d, t, w=None: seen.append((d, t)))
    a, b = here.to_dict(), there.to_dict()
    assert a.pop("train_seconds") >= 0 and b.pop("train_seconds") >= 0
    assert a == b  # weights fingerprint, sparsity per layer, history, BN re-estimation: all the same
    assert _same_weights(here.model, there.model)
    assert [layer.name for layer in there.model.layers] == [layer.name for layer in here.model.layers]
    assert seen[-1] == (6, 6)  # 48 images / 16 per batch x 2 epochs, counted in the child

    qconfig = QATConfig(epochs=1, batch_size=16)
    q_here = quantize_aware_train(here.model, qconfig, train, preserve_sparsity=True)
    q_there = quantize_aware_train_in_child(here.model, qconfig, train, preserve_sparsity=True)
    assert _same_weights(q_here.model, q_there.model)  # fake-quant ranges included
    assert q_here.weights_sha256 == q_there.weights_sha256 and q_here.history == q_there.history

    head_here, head_there = keras.models.clone_model(model), keras.models.clone_model(model)
    for m in (head_here, head_there):
        m.set_weights(model.get_weights())
    tconfig = TransferConfig(epochs=2, batch_size=16, head=model.layers[-1].name)
    from edgeresnet.device.images import ImageStream

    stream = ImageStream.from_arrays(*train)
    t_here = fine_tune(head_here, stream, tconfig)
    t_there = fine_tune_in_child(head_there, stream, tconfig)
    assert _same_weights(head_here, head_there) and t_here["weights_sha256"] == t_there["weights_sha256"]


# The convert command's use of the child (--classes, --prune and --qat at 96 px, the report's `process`
# fields) is tested end to end in tests/test_stream.py::test_zoo_transfer_learning_from_the_command_line.

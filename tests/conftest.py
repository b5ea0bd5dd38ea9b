"""Shared fixtures: where the real data lives, and a tiny ResNet for fast tests."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


# The test files that take longest (seconds of one run of the full suite on 2 cores, ``--durations``), longest
# first. Under pytest-xdist (`-n 2 --dist loadfile`, the README's test command) each worker takes whole files
# in collection order, so these are collected first: a long file started last would leave the other worker idle.
LONGEST_FIRST = (
    "test_qat.py", "test_pi.py", "test_prune.py", "test_cluster.py", "test_jobs.py", "test_quantize.py",
    "test_train_child.py", "test_stream.py", "test_fuzz.py", "test_models.py", "test_mediapipe_client.py",
    "test_safety.py",
)


def pytest_configure(config):
    # pytest-xdist would otherwise hand out files by their number of tests, not by their time.
    if hasattr(config.option, "loadscopereorder"):
        config.option.loadscopereorder = False


def pytest_collection_modifyitems(config, items):
    """Under pytest-xdist, collect the longest files first (see LONGEST_FIRST); a plain run keeps file order."""
    if not hasattr(config, "workerinput"):
        return
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: the order inside a file is kept


def _shared_data_dir() -> Path:
    return Path(os.environ.get("EDGERESNET_TEST_DATA", REPO.parent / "shared" / "data")).resolve()


def python_from_env(var: str, what: str) -> str:
    """The python that environment variable ``var`` names (a venv .ci/run builds).

    Unset: the test is skipped as "not checked" outside CI, and fails under CI=true.
    """
    exe = os.environ.get(var)
    if not exe:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true but {var} is not set; .ci/run builds the {what} venv")
        pytest.skip(f"not checked: set {var} to a python with {what} (see .ci/run)")
    return exe


@pytest.fixture(autouse=True, scope="session")
def _report_json_matches_its_schema():
    """Every report.json the tests write (through the writer registry) is checked against the shipped schema."""
    from edgeresnet.report import writers
    from edgeresnet.report.schema import validate_report

    original = writers.WRITERS["json"]

    def checked(data, folder):
        validate_report(data)
        return original(data, folder)

    writers.WRITERS["json"] = checked
    yield
    writers.WRITERS["json"] = original


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real data folder (../shared/data); skipped when absent, a failure under CI=true."""
    root = _shared_data_dir()
    if not (root / "cifar10" / "test").is_dir():
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true but the shared data folder {root} is missing; set EDGERESNET_TEST_DATA")
        pytest.skip(f"real data not found at {root}; set EDGERESNET_TEST_DATA to ../shared/data")
    return root


@pytest.fixture(scope="session")
def resnet8_h5(shared_data) -> Path:
    return shared_data / "mlperf-tiny-resnet8" / "pretrainedResnet.h5"


class CliResult:
    """What one ``edgeresnet ARGS`` run gave: unpacks as ``code, out, err``; ``exit_code`` and ``output`` (stdout
    and stderr interleaved, as a terminal shows them) as well."""

    def __init__(self, code: int, out: str, err: str, output: str):
        self.code = self.exit_code = code
        self.out, self.err, self.output = out, err, output

    def __iter__(self):
        return iter((self.code, self.out, self.err))


def invoke_cli(args) -> CliResult:
    """Run ``edgeresnet ARGS`` in-process through the real entry point (``cli.main``), capturing what it prints.

    Everything written to ``sys.stdout``/``sys.stderr`` is captured, progress lines too (with no terminal to
    copy, progress writes to ``sys.stderr``). The one way tests run the command line: see :func:`run_cli`.
    """
    import contextlib
    import io

    from edgeresnet.cli import main

    class Stream(io.StringIO):  # also feeds the interleaved output; has no fileno, like pytest's capture
        def write(self, text):
            both.write(text)
            return super().write(text)

    both = io.StringIO()
    out, err = Stream(), Stream()
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main([str(a) for a in args])
        except SystemExit as exc:
            code = exc.code
    return CliResult(code, out.getvalue(), err.getvalue(), both.getvalue())


@pytest.fixture(scope="session")
def run_cli():
    """``run_cli(ARGS)`` runs ``edgeresnet ARGS`` in-process: a :class:`CliResult` (``code, out, err = ...``)."""
    return invoke_cli


def _convert_once(out: Path, args: list) -> dict:
    """`edgeresnet convert ARGS --out OUT` in-process; the report, each variant by target, and what it printed.

    For session fixtures whose output many tests read: a test that must change
    a file of it copies it to its own ``tmp_path`` first.
    """
    import json

    code, stdout, stderr = invoke_cli([*args, "--out", out])
    assert code in (0, None), f"convert {args} exited {code}: {stderr[-2000:]}"
    report = json.loads((out / "report.json").read_text())
    return {"out": out, "report": report, "by_target": {v["target"]: v for v in report["variants"]},
            "stdout": stdout, "stderr": stderr}


def _encode(value):
    if isinstance(value, Path):
        return {"__path__": str(value)}
    if isinstance(value, dict):
        return {k: _encode(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_encode(v) for v in value]
    return value


def _decode(value):
    if isinstance(value, dict):
        return Path(value["__path__"]) if set(value) == {"__path__"} else {k: _decode(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_decode(v) for v in value]
    return value


def made_once(tmp_path_factory, name: str, make):
    """``make(folder)`` for a session fixture, made once per test run even under pytest-xdist.

    A plain run makes it in a fresh temp folder. Under xdist (the README's test
    command) the first worker that needs it makes it in a folder of the run's
    temp root that every worker sees, while the others wait on a lock, then read
    what it returned (paths, dicts, lists, strings and numbers) instead of making
    it again.
    """
    if "PYTEST_XDIST_WORKER" not in os.environ:
        return make(tmp_path_factory.mktemp(name))
    import fcntl
    import json
    import shutil

    root = tmp_path_factory.getbasetemp().parent / "made-once"  # pytest-N/, shared by this run's workers
    root.mkdir(exist_ok=True)
    folder, done = root / name, root / f"{name}.json"
    with open(root / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if done.exists():
            return _decode(json.loads(done.read_text()))
        shutil.rmtree(folder, ignore_errors=True)  # a worker whose make() failed left it half made
        folder.mkdir()
        value = make(folder)
        done.write_text(json.dumps(_encode(value)))
        return value


@pytest.fixture(scope="session")
def tiny_int8_run(tiny_model_h5, tiny_data, tmp_path_factory) -> dict:
    """ONE `convert tiny.h5 --int8 --calib CALIB --eval EVAL --preset unit` (cpu), read by every test that
    only needs an int8 model edgeresnet wrote, its report or its printed table. Read-only."""
    return made_once(tmp_path_factory, "tiny_int8_run", lambda folder: _convert_once(folder / "out", [
        "convert", tiny_model_h5, "--int8", "--calib", tiny_data["calib"], "--eval", tiny_data["eval"], "--preset", "unit",
    ]))


@pytest.fixture(scope="session")
def resnet8_run(shared_data, resnet8_h5, tmp_path_factory) -> dict:
    """ONE `convert pretrainedResnet.h5 --int8 --target cpu --target edgetpu --target gpu` on real CIFAR-10
    (calibrated on train, evaluated on all 1,000 test images), read by every test that needs it. Read-only."""
    cifar = shared_data / "cifar10"
    return made_once(tmp_path_factory, "resnet8_run", lambda folder: _convert_once(folder / "OUT", [
        "convert", resnet8_h5, "--int8", "--target", "cpu", "--target", "edgetpu", "--target", "gpu",
        "--calib", cifar / "train", "--eval", cifar / "test",
    ]))


@pytest.fixture(scope="session")
def builtin_run(tmp_path_factory) -> dict:
    """ONE `edgeresnet convert --int8 --target cpu --target edgetpu` (the built-in model and digits, as a
    newcomer runs it), read by every test that needs it. Read-only."""
    return made_once(tmp_path_factory, "builtin_run", lambda folder: _convert_once(
        folder / "out", ["convert", "--int8", "--target", "cpu", "--target", "edgetpu"]))


def write_image_folder(root: Path, classes: int, per_class: int, size=(16, 16), seed: int = 0) -> Path:
    """A labelled image folder whose classes differ in colour, so a model can tell them apart."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    for c in range(classes):
        d = root / f"class{c}"
        d.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            base = np.zeros(size + (3,), np.float32)
            base[..., c % 3] = 60 + 60 * (c // 3)
            img = np.clip(base + rng.normal(0, 40, base.shape), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(d / f"{i:03d}.png")
    return root


@pytest.fixture(scope="session")
def tiny_model_h5(tmp_path_factory) -> Path:
    """A tiny ResNet (16x16x3 input, 4 classes) fitted for a few steps on colour-coded images."""
    return made_once(tmp_path_factory, "tiny", _fit_tiny_model)


def _fit_tiny_model(root: Path) -> Path:
    import numpy as np

    from edgeresnet.device.images import load_images
    from edgeresnet.host.models import build_model

    from edgeresnet._util import tf as _tf

    data = write_image_folder(root / "train", classes=4, per_class=24, seed=1)
    ds = load_images(data, (16, 16, 3))
    x = ds.images.astype(np.float32) / 255.0
    _tf.tf_keras().utils.set_random_seed(0)  # the same weights every run
    model = build_model("resnet8", input_shape=(16, 16, 3), classes=4)
    model.compile("adam", "sparse_categorical_crossentropy")
    model.fit(x, ds.labels, epochs=3, batch_size=16, verbose=0, shuffle=False)
    # 18 steps leave BatchNorm's moving statistics far from the data's, and the model at chance in inference:
    # set them to the training images' own statistics, so the float model really classifies (100 % here)
    norms = [layer for layer in model.layers if type(layer).__name__ == "BatchNormalization"]
    for layer in norms:
        layer.momentum = 0.0
    model(x, training=True)
    for layer in norms:
        layer.momentum = 0.99
    path = root / "tiny.h5"
    model.save(path)
    return path


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> dict:
    return made_once(tmp_path_factory, "tinydata", lambda root: {
        "calib": write_image_folder(root / "calib", classes=4, per_class=30, seed=2),
        "eval": write_image_folder(root / "eval", classes=4, per_class=15, seed=3),
    })


@pytest.fixture(scope="session")
def outlier_model_h5(tmp_path_factory, tiny_data) -> Path:
    """A model built to quantize badly, with float outputs unchanged.

    A small conv net is fitted on the colour-coded images; then one channel of
    a 1x1 convolution is scaled up 1000x and the dense weights reading it are
    scaled down 1000x. ReLU and average pooling are positively homogeneous, so
    the float model computes exactly the same function, but that one channel's
    huge range sets the shared int8 scale of the whole activation tensor and
    crushes every other channel to a few levels.
    """
    def make(folder: Path) -> Path:
        build_outlier_model(tiny_data["calib"]).save(folder / "outlier.h5")
        return folder / "outlier.h5"

    return made_once(tmp_path_factory, "outlier", make)


def build_outlier_model(calib_folder: Path):
    """The model of :func:`outlier_model_h5`, fitted on the images of ``calib_folder`` (16x16, 4 classes).

    Also used by ``benchmarks/recovery_methods.py``.
    """
    import numpy as np

    from edgeresnet._util import tf as _tf
    from edgeresnet.device.images import load_images

    keras = _tf.tf_keras()
    keras.utils.set_random_seed(0)
    ds = load_images(calib_folder, (16, 16, 3))
    x = ds.images.astype(np.float32) / 255.0
    inp = keras.Input((16, 16, 3))
    h = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="conv_a")(inp)
    h = keras.layers.Conv2D(8, 1, activation="relu", name="conv_outlier")(h)
    h = keras.layers.GlobalAveragePooling2D()(h)
    out = keras.layers.Dense(4, activation="softmax", name="classifier")(h)
    model = keras.Model(inp, out)
    model.compile(keras.optimizers.Adam(0.01), "sparse_categorical_crossentropy")
    model.fit(x, ds.labels, epochs=30, batch_size=32, verbose=0)
    conv, dense = model.get_layer("conv_outlier"), model.get_layer("classifier")
    k, b = conv.get_weights()
    k[..., 0] *= 1000.0
    b[0] *= 1000.0
    conv.set_weights([k, b])
    w, c = dense.get_weights()
    w[0, :] /= 1000.0
    dense.set_weights([w, c])
    return model



# ---------------------------------------------------------------------- helpers the test files share, as fixtures


@pytest.fixture(scope="session", name="write_image_folder")
def _write_image_folder_fixture():
    """:func:`write_image_folder`: ``write_image_folder(root, classes, per_class, size=(16, 16), seed=0)``."""
    return write_image_folder


@pytest.fixture(scope="session", name="python_from_env")
def _python_from_env_fixture():
    """:func:`python_from_env`: ``python_from_env(VAR, what)``, the python a venv variable names (or a skip)."""
    return python_from_env


@pytest.fixture
def count_int8_sessions(monkeypatch):
    """``count_int8_sessions()``: from then on, every int8 engine session the test makes (each is one
    calibration) is appended to the list it returns."""
    def count() -> list:
        from edgeresnet.host import quantize

        made = []

        class Counted(quantize.Int8Session):
            def __init__(self, *a, **k):
                super().__init__(*a, **k)
                made.append(self)

        monkeypatch.setattr(quantize, "Int8Session", Counted)
        return made

    return count


@pytest.fixture(scope="session")
def bump_op_version():
    """``bump_op_version(data, op_name, version)``: a .tflite with one operator code's version rewritten in
    place (the field must be stored)."""
    import struct

    from edgeresnet.device.tflite_graph import _BUILTIN_NAMES, _Reader

    def bump(data: bytes, op_name: str, version: int) -> bytes:
        buf = bytearray(data)
        r = _Reader(bytes(buf), "model")
        model = r.root()
        for oc in r.tables(model, 1):
            code = max(r.scalar(oc, 0, "<b", 0), r.scalar(oc, 3, "<i", 0))
            if _BUILTIN_NAMES[code] == op_name:
                pos = r.field_pos(oc, 2)
                assert pos is not None, "version field not stored"
                struct.pack_into("<i", buf, pos, version)
                return bytes(buf)
        raise AssertionError(f"{op_name} not in model")

    return bump


@pytest.fixture(scope="session")
def batch_60161():
    """``batch_60161(data)``: mlperf-tiny's pretrainedResnet.tflite with its input's batch size 1 -> 60161 (a
    corruption the fuzz test found; 700 MiB of input)."""
    def corrupt(data: bytes) -> bytes:
        out = bytearray(data)
        out[318085] = 0xEB
        return bytes(out)

    return corrupt


@pytest.fixture(scope="session", name="convert_once")
def _convert_once_fixture():
    """``convert_once(OUT, ARGS)``: `edgeresnet ARGS --out OUT` in-process; the report, variants by target, output."""
    return _convert_once


def tree_snapshot(root: Path) -> dict:
    """Every path under ``root``: sha256 for files, 'dir' for folders, the target for symlinks."""
    snap = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            rel = str(p.relative_to(root))
            if p.is_symlink():
                snap[rel] = "link:" + os.readlink(p)
            elif p.is_dir():
                snap[rel] = "dir"
            elif not p.is_file():  # a FIFO or device: reading it would block
                snap[rel] = "special"
            else:
                snap[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return snap


@pytest.fixture(scope="session", name="snapshot")
def _snapshot_fixture():
    """``snapshot(ROOT)``: every path under ROOT with its sha256 (files), 'dir', 'special' or its link target."""
    return tree_snapshot


def weight_tensors(model: bytes) -> list[tuple[bytes, tuple]]:
    """Every conv/fc weight tensor of the TFLite ``model``: (its stored bytes, its per-channel scales), in op order."""
    import numpy as np

    from edgeresnet.host.quantize import graph as qg

    m = qg.flatbuffer_utils().convert_bytearray_to_object(bytearray(model))
    sg = m.subgraphs[0]
    out = []
    for op in sg.operators:
        if qg.op_code(m, op) in qg.WEIGHT_OPS:
            t = sg.tensors[op.inputs[1]]
            out.append((bytes(m.buffers[t.buffer].data), tuple(np.asarray(t.quantization.scale).tolist())))
    return out


@pytest.fixture(scope="session", name="weight_tensors")
def _weight_tensors_fixture():
    """:func:`weight_tensors`: ``weight_tensors(MODEL_BYTES)``, each conv/fc weight's (bytes, scales) in op order."""
    return weight_tensors

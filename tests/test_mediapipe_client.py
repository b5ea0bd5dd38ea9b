"""A real phone-runtime client: MediaPipe Tasks' ImageClassifier runs what edgeresnet emits.

MediaPipe lives in its own virtual environment (it pins absl-py~=2.3, which
tensorflow-model-optimization refuses): ``.ci/run`` builds it and exports
``EDGERESNET_MEDIAPIPE_PYTHON``. ``tests/clients/mediapipe_classify.py`` runs
there with no TensorFlow and no edgeresnet, as an app would: the model file is
its only configuration (input size, normalization and category names all
come from the metadata edgeresnet wrote).

For the built-in digits model and the real MLPerf Tiny ResNet-8, each of the
cpu int8, edgetpu int8, gpu fp16 and cpu fp32 models must load, classify 120
images (12 per class; CIFAR-10 test images as lossless PNG copies, so both
sides see the same pixels) with the class folder names as category names,
and agree on the top class with edgeresnet's own interpreter run
(``edgeresnet.device.predict.Classifier``) on at least 99 % of them.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Optional

import numpy as np
import pytest

from edgeresnet.device.predict import Classifier

REPO = Path(__file__).resolve().parents[1]
CLIENT = REPO / "tests" / "clients" / "mediapipe_classify.py"
MEDIAPIPE_ENV = "EDGERESNET_MEDIAPIPE_PYTHON"
IMAGES = 120
VARIANTS = ("cpu_int8", "edgetpu_int8", "gpu_fp16", "cpu_fp32")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="session")
def mediapipe_python(python_from_env) -> str:
    return python_from_env(MEDIAPIPE_ENV, "mediapipe 1.2")


def _convert_all(out_root: Path, int8_run: Optional[dict] = None, **options) -> dict[str, Path]:
    """int8 for cpu/edgetpu/gpu in one run (cpu and edgetpu share the conversion) and fp32 in another.

    ``int8_run``: a session run (conftest) that already holds the int8 cpu/edgetpu/gpu models; only fp32 is converted.
    """
    from edgeresnet.host.pipeline import ConvertOptions, run_convert

    models = {}
    out_root.mkdir(parents=True, exist_ok=True)
    runs = [("int8", dict(int8=True, targets=("cpu", "edgetpu", "gpu"))), ("fp32", dict(precision="fp32"))]
    for tag, extra in runs:
        if tag == "int8" and int8_run is not None:
            out, variants = int8_run["out"], int8_run["report"]["variants"]
        else:
            out = out_root / tag
            run_convert(ConvertOptions(out=str(out), **options, **extra))
            variants = json.loads((out / "report.json").read_text())["variants"]
        for v in variants:
            models[f"{v['target']}_{v['precision']}"] = out / Path(v["path"]).name
    assert set(models) == set(VARIANTS), sorted(models)
    return models


@pytest.fixture(scope="session")
def digits_case(tmp_path_factory) -> dict:
    """The built-in reference model, and 12 held-out digits per class as RGB PNGs in class folders 0..9."""
    from PIL import Image

    from edgeresnet.host import demo

    root = tmp_path_factory.mktemp("mp_digits")
    held_out = demo.digits_images("eval", channels=3)
    per_class = IMAGES // len(demo.CLASS_NAMES)
    for label, name in enumerate(demo.CLASS_NAMES):
        folder = root / "images" / name
        folder.mkdir(parents=True)
        for i in np.flatnonzero(held_out.labels == label)[:per_class]:
            Image.fromarray(held_out.images[i]).save(folder / f"{i:03d}.png")
    return {"models": _convert_all(root / "out", calib_samples=150, eval_samples=200), "images": root / "images"}


@pytest.fixture(scope="session")
def resnet8_case(shared_data, resnet8_h5, resnet8_run, tmp_path_factory) -> dict:
    """The MLPerf Tiny ResNet-8 (raw 0..255 preset) calibrated on CIFAR-10 train, checked on CIFAR-10 test.

    MediaPipe decodes JPEG with its own decoder, which differs from Pillow's by
    a level or two on most images (tens of levels on a few pixels of some), so
    the agreement check gets the picked test images as lossless PNG copies of
    Pillow's decoding: both sides then see the same pixels. The JPEG files
    themselves are classified too (``test_resnet8_jpeg_files_in_mediapipe``).
    """
    from PIL import Image

    root = tmp_path_factory.mktemp("mp_resnet8")
    test = shared_data / "cifar10" / "test"
    for jpeg in _pick(test):
        folder = root / "images" / jpeg.parent.name
        folder.mkdir(parents=True, exist_ok=True)
        Image.open(jpeg).convert("RGB").save(folder / f"{jpeg.stem}.png")
    # int8: the session's one real ResNet-8 run (conftest.resnet8_run); fp32 converted here.
    models = _convert_all(
        root / "out", int8_run=resnet8_run, model=str(resnet8_h5), calib=str(shared_data / "cifar10" / "train"),
        calib_samples=150, eval=str(test), eval_samples=200,
    )
    return {"models": models, "images": root / "images", "jpeg": test}


def _pick(folder: Path) -> list[Path]:
    """IMAGES images spread over every class folder (sorted, round-robin)."""
    classes = sorted(d for d in folder.iterdir() if d.is_dir())
    files = [sorted(p for p in d.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg")) for d in classes]
    picked = []
    for i in range(IMAGES):
        group = files[i % len(files)]
        picked.append(group[i // len(files)])
    return picked


def _mediapipe(python: str, model: Path, images: list[Path]) -> dict:
    request = json.dumps({"model": str(model), "images": [str(p) for p in images]})
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "EDGERESNET_INTERPRETER")}
    proc = subprocess.run([python, str(CLIENT)], input=request, capture_output=True, text=True, env=env, timeout=600)
    lines = proc.stdout.strip().splitlines()
    assert lines, f"the MediaPipe client printed nothing (exit {proc.returncode}): {proc.stderr[-2000:]}"
    return json.loads(lines[-1])


def _check(python: str, case: dict, variant: str, folder_key: str = "images", min_agreement: float = 0.99) -> None:
    model = case["models"][variant]
    images = _pick(case[folder_key])
    answer = _mediapipe(python, model, images)
    assert "error" not in answer, f"MediaPipe refused {model.name}: {answer['error']}"
    results = answer["results"]
    assert len(results) == IMAGES

    ours = Classifier(model)  # edgeresnet's interpreter run: preprocessing and labels from the same metadata
    top = ours.scores(np.stack([ours.read(p) for p in images])).argmax(axis=1)
    theirs = np.array([r["index"] for r in results])
    folder_names = sorted(d.name for d in case[folder_key].iterdir() if d.is_dir())
    # (a) the category names are the class folder names, in output order
    assert [r["name"] for r in results] == [folder_names[i] for i in theirs]
    assert {r["name"] for r in results} <= set(folder_names)
    # (b) MediaPipe's top class agrees with edgeresnet's own run
    agreement = float(np.mean(theirs == top))
    assert agreement >= min_agreement, f"{model.name}: MediaPipe agrees with edgeresnet on {agreement:.1%} of {IMAGES} images"
    # and it is a classifier, not a constant: the labels of the picked images are mostly found
    truth = np.array([folder_names.index(p.parent.name) for p in images])
    assert np.mean(theirs == truth) > 0.5


@pytest.mark.parametrize("variant", VARIANTS)
def test_builtin_model_runs_in_mediapipe(mediapipe_python, digits_case, variant):
    _check(mediapipe_python, digits_case, variant)


@pytest.mark.parametrize("variant", VARIANTS)
def test_resnet8_runs_in_mediapipe(mediapipe_python, resnet8_case, variant):
    _check(mediapipe_python, resnet8_case, variant)


def test_resnet8_jpeg_files_in_mediapipe(mediapipe_python, resnet8_case):
    """The JPEG files as an app gets them: MediaPipe decodes them itself (measured: 119 of 120 agree)."""
    _check(mediapipe_python, resnet8_case, "cpu_int8", folder_key="jpeg", min_agreement=0.97)


def test_int8_io_is_refused_by_mediapipe_as_the_report_says(mediapipe_python, digits_case, tmp_path):
    """--io int8 stays available; MediaPipe refuses it, and the report's runtimes entry said so beforehand."""
    from edgeresnet.host.pipeline import ConvertOptions, run_convert

    out = tmp_path / "out"
    report = run_convert(ConvertOptions(int8=True, io_type="int8", eval_samples=100, out=str(out)))
    (variant,) = report.to_dict()["variants"]
    assert variant["runtimes"]["mediapipe"]["ok"] is False and "int8" in variant["runtimes"]["mediapipe"]["why"]
    answer = _mediapipe(mediapipe_python, out / Path(variant["path"]).name, _pick(digits_case["images"])[:2])
    assert "uint8/float32" in answer.get("error", ""), answer


@pytest.mark.parametrize(
    "model_file, info, mediapipe_says",
    [
        # torch-style per-channel normalization on a float model
        ("pretrainedResnet.tflite", dict(mean=(123.675, 116.28, 103.53), std=(58.395, 57.12, 57.375)), "Per-channel"),
        # a BGR preset: no normalization can be stated, the colour space is unknown
        ("pretrainedResnet.tflite", dict(color_space="UNKNOWN"), "RGB"),
        # int8 input (the MLPerf reference int8 model)
        ("pretrainedResnet_quant.tflite", dict(mean=(0.0,), std=(1.0,)), "uint8/float32"),
    ],
)
def test_the_report_says_no_where_mediapipe_refuses(mediapipe_python, shared_data, tmp_path, model_file, info, mediapipe_says):
    """Every "no" the report gives for MediaPipe is what MediaPipe itself answers."""
    from edgeresnet.device.metadata import ModelInfo, add_metadata
    from edgeresnet.host.shipping import mediapipe_verdict

    meta = ModelInfo(name="r8", labels=("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"), **info)
    model = add_metadata((shared_data / "mlperf-tiny-resnet8" / model_file).read_bytes(), meta)
    assert mediapipe_verdict(model, meta)["ok"] is False
    path = tmp_path / "m.tflite"
    path.write_bytes(model)
    image = next((shared_data / "cifar10" / "test" / "cat").iterdir())
    answer = _mediapipe(mediapipe_python, path, [image])
    assert mediapipe_says in answer.get("error", ""), answer

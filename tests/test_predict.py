"""Device side: `edgeresnet predict` / `eval` on real converted models, with and without TensorFlow.

The numbers are compared with what the host pipeline measured for the same
file (report.json), never with constants: eval on the device must reproduce
the host's top-1 exactly when it sees the same images.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgeresnet.device.image_files import list_images
from edgeresnet.device.images import load_images
from edgeresnet.device.presets import get_preset
from edgeresnet.device.metadata import ModelInfo, add_metadata, read_metadata
from edgeresnet.device.predict import Classifier, Overrides, evaluate, predict
from edgeresnet.device.runtime import TFLiteModel
from edgeresnet.device.verify import unpaired_margin

REPO = Path(__file__).resolve().parents[1]
TFLRT_ENV = "EDGERESNET_TFLITE_RUNTIME_PYTHON"
DIGITS = tuple(str(d) for d in range(10))


@pytest.fixture(scope="module")
def digits(builtin_run, tmp_path_factory):
    """The built-in reference model converted by the host pipeline (cpu int8; the session's one default run,
    conftest.builtin_run), its report, and its 500 held-out digits written as PNG files in class folders
    (lossless: the same pixels the host used)."""
    from PIL import Image

    from edgeresnet.host import demo

    root = tmp_path_factory.mktemp("digits")
    variant = builtin_run["by_target"]["cpu"]
    model = builtin_run["out"] / Path(variant["path"]).name
    held_out = demo.digits_images("eval", TFLiteModel(model).input.shape[-1])  # what the host evaluated on
    for i, (img, label) in enumerate(zip(held_out.images, held_out.labels)):
        d = root / "images" / held_out.class_names[label]
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img[..., 0], "L").save(d / f"{i:04d}.png")  # grey: every channel holds the same value
    (root / "digits.txt").write_text("\n".join(DIGITS) + "\n")
    return {
        "model": model, "report": builtin_run["out"] / "report.json", "variant": variant,
        "images": root / "images", "held_out": held_out, "labels": root / "digits.txt", "root": root,
    }


def test_report_records_the_sha256_of_each_written_file(digits):
    import hashlib

    assert digits["variant"]["sha256"] == hashlib.sha256(digits["model"].read_bytes()).hexdigest()


def test_list_images_names_what_load_images_decodes(digits):
    files, labels, names = list_images(digits["images"], samples=37, seed=4)
    loaded = load_images(digits["images"], (32, 32, 1), samples=37, seed=4)
    assert files == list(loaded.paths) and names == loaded.class_names
    assert np.array_equal(labels, loaded.labels)


def test_model_edgeresnet_wrote_runs_without_flags(digits, run_cli):
    """Labels and normalization come from the metadata the pipeline wrote; top-1 equals the host's."""
    info = read_metadata(digits["model"].read_bytes())
    assert info is not None and info.labels == DIGITS
    code, out, err = run_cli(["eval", digits["model"], "--images", digits["images"],
                              "--report", digits["report"], "--max-drop", "0", "--json"])
    assert code == 0, err
    got = json.loads(out)
    assert got["labels_matched"] == "by name" and got["preprocessing"]["labels_from"] == "metadata"
    assert got["host"]["matched_by"] == "sha256"
    assert got["count"] == digits["variant"]["eval_count"] == 500
    assert got["top1"] == digits["variant"]["top1"] and got["top5"] == digits["variant"]["top5"]
    assert got["drop_pts"] == 0.0 and got["passed"] is True
    # the host evaluated in-memory digits, not files: it cannot say these are its images, so the drop has the
    # margin of two independent samples, and a budget of 0 is finer than that
    assert got["same_images"] is None and got["drop_margin_pts"] == pytest.approx(
        unpaired_margin(got["top1"], 500, digits["variant"]["top1"], 500), abs=1e-3) and got["drop_margin_pts"] > 0
    assert any("wider than --max-drop 0" in w for w in got["warnings"])


def test_device_scores_equal_the_host_pipeline_scores(digits):
    """PNG -> read_image -> preset -> quantized input gives bit-identical outputs to the host's arrays."""
    clf = Classifier(digits["model"], Overrides(preset="unit"))
    files, _, _ = list_images(digits["images"])
    device = clf.scores(np.stack([clf.read(f) for f in files[:64]]))
    # The host's path: in-memory digits (what convert evaluated on), preset applied, TFLiteModel.
    index = {f"{i:04d}.png": i for i in range(len(digits["held_out"]))}
    rows = [index[Path(f).name] for f in files[:64]]
    host = TFLiteModel(digits["model"]).predict(get_preset("unit").apply(digits["held_out"].images[rows]))
    assert np.array_equal(device, host)


def test_predict_top_k_names_and_scores(digits, run_cli):
    files, labels, names = list_images(digits["images"], samples=20, seed=1)
    clf = Classifier(digits["model"], Overrides(labels=digits["labels"], preset="unit"))
    results = predict(clf, files, k=3)
    assert [r.image for r in results] == files
    for r in results:
        scores = [s for _, _, s in r.top]
        assert len(r.top) == 3 and scores == sorted(scores, reverse=True)
        assert all(name == DIGITS[i] for i, name, _ in r.top)
    right = sum(r.top[0][1] == names[label] for r, label in zip(results, labels))
    assert right >= 18  # the host measured 99.4 % top-1 on these digits
    code, out, err = run_cli(["predict", digits["model"], *files[:2], "--top-k", "2", "--json",
                              "--labels", digits["labels"], "--preset", "unit"])
    assert code == 0, err
    doc = json.loads(out)
    assert [len(p["top"]) for p in doc["predictions"]] == [2, 2]
    assert doc["predictions"][0]["top"][0]["label"] == results[0].top[0][1]


def test_wrong_normalization_is_caught_by_max_drop_exit_3(digits, run_cli):
    """Raw 0..255 pixels into a model trained on [0, 1]: the device's top-1 collapses, and eval says so."""
    code, out, err = run_cli(["eval", digits["model"], "--images", digits["images"], "--preset", "raw",
                              "--report", digits["report"], "--max-drop", "1", "--json"])
    assert code == 3
    doc = json.loads(out)  # the result is printed before failing
    assert doc["passed"] is False and doc["drop_pts"] > 1
    assert doc["drop_pts"] == pytest.approx(digits["variant"]["top1"] - doc["top1"], abs=1e-3)
    lines = err.strip().splitlines()
    assert lines[-1].startswith("error:") and "--max-drop 1" in lines[-1] and "Traceback" not in err


@pytest.mark.slow
def test_samples_pick_the_images_the_host_picked(digits, tmp_path):
    """convert --eval DIR --eval-samples N --seed S and eval --samples N --seed S see the same images."""
    from edgeresnet.host.pipeline import ConvertOptions, run_convert

    out = tmp_path / "out"
    run_convert(ConvertOptions(int8=True, eval=str(digits["images"]), eval_samples=60, seed=3, out=str(out)))
    (variant,) = json.loads((out / "report.json").read_text())["variants"]
    clf = Classifier(out / Path(variant["path"]).name, Overrides(preset="unit"))
    result = evaluate(clf, digits["images"], samples=60, seed=3, report=out / "report.json", max_drop=0)
    assert result.count == variant["eval_count"] == 60
    assert round(result.top1, 4) == variant["top1"] and not result.over_budget and not result.warnings
    # the report's digest of the host's images says these are they: the drop is exact
    assert result.same_images is True and result.drop_margin_pts == 0.0
    other = evaluate(clf, digits["images"], samples=60, seed=4, report=out / "report.json", max_drop=0)
    assert other.same_images is False
    assert other.drop_margin_pts > 0
    assert other.drop_margin_pts == pytest.approx(unpaired_margin(variant["top1"], 60, other.top1, 60))
    assert any("other images than the host's" in w and "--max-drop 0" in w for w in other.warnings)
    from edgeresnet.cli.device import format_eval

    assert "(the host's images: exact)" in format_eval(result)
    assert f"± {other.drop_margin_pts:.2f} (95 %, other images)" in format_eval(other)


def test_image_set_digest_is_the_files_contents_in_any_order_and_names(tmp_path):
    from edgeresnet.device.image_files import image_set_sha256

    a, b, c = (tmp_path / n for n in ("a.png", "b.png", "c.png"))
    a.write_bytes(b"one"), b.write_bytes(b"two"), c.write_bytes(b"one")
    assert image_set_sha256([a, b]) == image_set_sha256([b, c]) != image_set_sha256([a, c])
    assert image_set_sha256([a, tmp_path / "gone.png"]) is None and image_set_sha256([]) is None


def test_unpaired_margin_on_known_counts():
    # 80 % and 70 % on 100 images each: 1.96 * sqrt(.8 * .2 / 100 + .7 * .3 / 100) = 11.92 points
    assert unpaired_margin(80.0, 100, 70.0, 100) == pytest.approx(11.922, abs=1e-3)
    assert unpaired_margin(100.0, 50, 100.0, 50) == 0.0


def test_against_and_labels_matched_by_name(digits, tmp_path):
    """Folders are matched to label names, so a folder with two classes in any order still scores right."""
    subset = tmp_path / "two"
    for name in ("7", "3"):
        (subset / name).mkdir(parents=True)
        for f in sorted((digits["images"] / name).iterdir())[:10]:
            (subset / name / f.name).symlink_to(f)
    clf = Classifier(digits["model"], Overrides(labels=digits["labels"], preset="unit"))
    result = evaluate(clf, subset, against=clf)
    assert result.labels_matched == "by name" and result.count == 20 and result.classes == 2
    assert result.top1 >= 90.0  # sorted order would call every "3" a 0 and every "7" a 1
    assert result.against["agreement"] == 100.0 and result.against["top1"] == round(result.top1, 4)
    unlabelled = Classifier(digits["model"], Overrides(preset="unit"))
    if unlabelled.setup.labels is None:  # without labels the folder count must match the outputs
        with pytest.raises(Exception, match="2 class folders but the model has 10 outputs"):
            evaluate(unlabelled, subset)


@pytest.fixture(scope="module")
def bad_inputs(digits, tmp_path_factory):
    root = tmp_path_factory.mktemp("bad")
    (root / "text.tflite").write_text("not a model")
    (root / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    (root / "empty").mkdir()
    (root / "three.txt").write_text("a\nb\nc\n")
    (root / "dup.txt").write_text("\n".join(["a"] * 10) + "\n")
    (root / "other.json").write_text(json.dumps({"variants": [{"name": digits["model"].name, "path": f"x/{digits['model'].name}", "sha256": "0" * 64, "top1": 1.0}]}))
    return root


BAD = [
    (["predict", "{root}/missing.tflite", "{img}"], "no such file"),
    (["predict", "{root}/text.tflite", "{img}"], "not a TFLite flatbuffer"),
    (["predict", "{model}", "{root}/broken.jpg"], "cannot read this image"),
    (["predict", "{model}", "{root}/missing.png"], "no such image file"),
    (["eval", "{model}", "--images", "{root}/empty"], "is empty"),
    (["predict", "{model}", "{img}", "--labels", "{root}/three.txt"], "3 class names but the model has 10 outputs"),
    (["predict", "{model}", "{img}", "--labels", "{root}/dup.txt"], "appears twice"),
    (["predict", "{model}", "{img}", "--interpreter", "nope"], "unknown interpreter"),
    (["predict", "{model}", "{img}", "--preset", "unit", "--mean", "1"], "give one of them"),
    (["predict", "{model}", "{img}", "--std", "0"], "--std values must be positive"),
    (["eval", "{model}", "--images", "{images}", "--max-drop", "1"], "add --report"),
    (["eval", "{model}", "--images", "{images}", "--report", "{root}/other.json"], "different sha256"),
    (["eval", "{model}", "--images", "{root}/text.tflite"], "no such folder"),
]


@pytest.mark.parametrize("args,needle", BAD, ids=[b[1] for b in BAD])
def test_bad_input_is_one_line(digits, bad_inputs, args, needle, run_cli):
    fill = {"root": bad_inputs, "model": digits["model"], "images": digits["images"],
            "img": next((digits["images"] / "3").iterdir())}
    code, out, err = run_cli([a.format(**fill) for a in args])
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and err.startswith("error: ") and needle in err, err


DAMAGED = [  # (what is changed in the host's real report, the field the error names)
    (lambda doc, v: v.update(top1=float("nan")), "top1 is nan"),  # would pass any --max-drop if compared
    (lambda doc, v: v.update(top1="99.4"), "top1 is '99.4'"),
    (lambda doc, v: v.update(top5=[100]), "top5 is [100]"),
    (lambda doc, v: v.update(top1=140.0), "top1 is 140.0"),
    (lambda doc, v: v.update(eval_count="many"), "eval_count is 'many'"),
    (lambda doc, v: doc.update(float=5), "float is 5"),
    (lambda doc, v: doc.update(evaluation=[1]), "evaluation is [1]"),
    (lambda doc, v: doc["evaluation"].update(images_sha256=5), "images_sha256 is 5"),
]


@pytest.mark.parametrize("damage,needle", DAMAGED, ids=[d[1] for d in DAMAGED])
def test_a_damaged_host_report_is_refused_naming_the_field(digits, damage, needle, run_cli, tmp_path):
    """eval --report checks the host's numbers before it compares with them: a report edited or damaged since
    convert wrote it is a one-line error naming the field, never a crash or a check passed on a number that is not."""
    doc = json.loads(digits["report"].read_text())
    (variant,) = [v for v in doc["variants"] if v["name"] == digits["model"].name]
    damage(doc, variant)
    report = tmp_path / "report.json"
    report.write_text(json.dumps(doc))
    code, out, err = run_cli(["eval", digits["model"], "--images", digits["images"], "--report", report,
                              "--max-drop", "1", "--json"])
    assert code == 2 and out == "", (out, err)
    assert len(err.strip().splitlines()) == 1 and err.startswith("error: ") and needle in err, err
    assert "edited or damaged" in err


def test_metadata_written_by_hand_equals_the_flags(shared_data, tmp_path):
    """A foreign model (the MLPerf reference int8) given metadata needs no flags, and scores as with flags."""
    reference = shared_data / "mlperf-tiny-resnet8" / "pretrainedResnet_quant.tflite"
    test = shared_data / "cifar10" / "test"
    names = tuple(sorted(d.name for d in test.iterdir() if d.is_dir()))
    assert read_metadata(reference.read_bytes()) is None
    path = tmp_path / "with_metadata.tflite"
    path.write_bytes(add_metadata(reference.read_bytes(), ModelInfo(name="resnet8", mean=(0.0,), std=(1.0,), labels=names)))
    (tmp_path / "labels.txt").write_text("\n".join(names))
    by_metadata = Classifier(path)
    assert by_metadata.setup.labels == names and by_metadata.setup.normalization_from == "metadata"
    assert by_metadata.setup.preset.name == "raw"  # (pixel - 0) / 1 is the host's preset, applied the host's way
    by_flags = Classifier(reference, Overrides(labels=tmp_path / "labels.txt", preset="raw"))
    assert by_metadata.setup.notes == () and by_flags.setup.notes == ()
    bare = Classifier(reference).setup  # nothing stated, nothing given: said, not silently assumed
    assert bare.preset.name == "raw" and bare.labels is None
    assert any("no metadata" in n for n in bare.notes) and any("no labels" in n for n in bare.notes)
    a, b = evaluate(by_metadata, test, samples=200), evaluate(by_flags, test, samples=200)
    assert a.top1 == b.top1 and a.top5 == b.top5 and a.labels_matched == b.labels_matched == "by name"
    assert 50.0 < a.top1 < 95.0


# ---------------------------------------------------------------------- without TensorFlow


def _tf_free_code(model, images, report, extra=(), max_drop="0") -> str:
    """A script that runs predict and eval through the CLI and proves TensorFlow was never imported."""
    args = ["eval", str(model), "--images", str(images), "--report", str(report), "--max-drop", max_drop, "--json", *extra]
    return (
        "import sys, json\n"
        "sys.modules['tensorflow'] = None; sys.modules['tf_keras'] = None\n"
        "from edgeresnet.cli import main\n"
        f"try:\n    main({args!r})\nexcept SystemExit as e:\n    assert e.code == 0, e.code\n"
        "assert 'tensorflow' not in sys.modules or sys.modules['tensorflow'] is None\n"
    )


@pytest.fixture(scope="session")
def tflrt_python(python_from_env) -> str:
    """Session-scoped, so a missing venv skips before any model is converted."""
    return python_from_env(TFLRT_ENV, "tflite-runtime 2.14, pillow and click")


def _run_device(python, code, interpreter=None):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    env.pop("EDGERESNET_INTERPRETER", None)
    if interpreter:
        env["EDGERESNET_INTERPRETER"] = interpreter
    return subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=300, env=env, cwd=REPO.parent)


def _builtin_kernels_top1(model, images, preset, samples=None, names=None) -> float:
    """Top-1 with the interpreter's built-in kernels (XNNPACK off), computed here with ai-edge-litert; each class
    folder is output ``names.index(folder)`` when ``names`` are given, else its place in sorted folder order."""
    from edgeresnet.device.images import read_image
    from edgeresnet.device.verify import topk_accuracy

    files, labels, folders = list_images(images, samples=samples)
    if names is not None:
        labels = np.array([names.index(folders[i]) for i in labels])
    tfl = TFLiteModel(model, use_xnnpack=False)
    shape = tuple(tfl.input.shape[1:])
    out = tfl.predict(get_preset(preset).apply(np.stack([read_image(f, shape) for f in files])))
    return round(topk_accuracy(out, labels, 1), 4)


def test_eval_without_tensorflow_reproduces_the_host(digits):
    proc = _run_device(sys.executable, _tf_free_code(digits["model"], digits["images"], digits["report"], ["--preset", "unit"]), "ai-edge-litert")
    assert proc.returncode == 0, proc.stderr[-2000:]
    doc = json.loads(proc.stdout)
    assert doc["interpreter"].startswith("ai-edge-litert")
    assert doc["top1"] == digits["variant"]["top1"] and doc["drop_pts"] == 0.0


def test_eval_in_tflite_runtime_venv(tflrt_python, digits):
    """tflite-runtime 2.14 runs this int8 model on its built-in kernels (its XNNPACK takes no int8 ops),
    which round differently from ai-edge-litert's XNNPACK: measured here, one of 500 digits flips
    (either way, depending on the conversion).
    The venv's top-1 must equal the built-in kernels' top-1 exactly, and stay within 0.5 pts of the host."""
    python = tflrt_python
    code = _tf_free_code(digits["model"], digits["images"], digits["report"], ["--preset", "unit"], max_drop="0.5")
    proc = _run_device(python, code)
    assert proc.returncode == 0, proc.stderr[-2000:]
    doc = json.loads(proc.stdout)
    assert doc["interpreter"].startswith("tflite-runtime 2.14") and doc["max_drop"] == 0.5
    assert doc["top1"] == _builtin_kernels_top1(digits["model"], digits["images"], "unit")
    assert abs(doc["drop_pts"]) <= 0.5 and doc["host"]["matched_by"] == "sha256"


def test_predict_in_tflite_runtime_venv(tflrt_python, digits):
    python = tflrt_python
    img = sorted((digits["images"] / "7").iterdir())[0]
    code = (
        "import sys; sys.modules['tensorflow'] = None\n"
        "from edgeresnet.cli import main\n"
        f"main(['predict', {str(digits['model'])!r}, {str(img)!r}, '--preset', 'unit', '--labels', {str(digits['labels'])!r}, '--json', '--top-k', '3'])\n"
    )
    proc = _run_device(python, code)
    assert proc.returncode == 0, proc.stderr[-2000:]
    doc = json.loads(proc.stdout)
    here = predict(Classifier(digits["model"], Overrides(labels=digits["labels"], preset="unit")), [img], 3)[0]
    assert doc["interpreter"].startswith("tflite-runtime 2.14")
    assert [t["label"] for t in doc["predictions"][0]["top"]] == [name for _, name, _ in here.top]
    assert doc["predictions"][0]["top"][0]["label"] == "7"


# ---------------------------------------------------------------------- --labels in another order than the folders

SWAPPED = ("1", "0") + DIGITS[2:]  # the model's output 0 is the digit 0, but this labels file calls it "1"


@pytest.fixture(scope="module")
def swapped(digits, tmp_path_factory, convert_once):
    """`convert --int8 --eval DIGITS --labels L` where L lists the digit folders with 0 and 1 swapped, saved as
    Windows editors save it (byte-order mark, CRLF line ends)."""
    root = tmp_path_factory.mktemp("swapped")
    labels = root / "swapped.txt"
    labels.write_bytes("\ufeff".encode() + "".join(f"{n}\r\n" for n in SWAPPED).encode())
    before = labels.read_bytes(), sorted(p.name for p in digits["images"].rglob("*"))
    run = convert_once(root / "out", ["convert", "--int8", "--eval", digits["images"], "--labels", labels])
    assert (labels.read_bytes(), sorted(p.name for p in digits["images"].rglob("*"))) == before  # inputs untouched
    (variant,) = run["report"]["variants"]
    return {**run, "variant": variant, "model": run["out"] / Path(variant["path"]).name, "report_path": run["out"] / "report.json"}


@pytest.mark.slow
def test_labels_in_another_order_than_the_folders_give_one_top1_on_host_and_device(swapped, digits, run_cli):
    """Folders are matched to the labels file's lines by name in convert, as in eval: the report, the metadata and
    eval on the device agree, and the swapped names cost the 0s and 1s on both sides."""
    warnings = [ln for ln in swapped["stderr"].splitlines() if ln.startswith("warning:")]
    assert len(warnings) == 1 and "Traceback" not in swapped["stderr"], swapped["stderr"]
    assert "another order than the class folders of --eval" in warnings[0] and "labels file's order" in warnings[0]
    assert swapped["report"]["metadata"]["labels_order"] in warnings[0]
    assert read_metadata(swapped["model"].read_bytes()).labels == SWAPPED
    assert (swapped["out"] / "labels.txt").read_text().splitlines() == list(SWAPPED)
    top1 = swapped["variant"]["top1"]
    assert top1 < digits["variant"]["top1"] - 10  # the 0s and 1s (a fifth of the digits) are now wrong
    code, out, err = run_cli(["eval", swapped["model"], "--images", digits["images"],
                              "--report", swapped["report_path"], "--max-drop", "0", "--json"])
    assert code == 0, err
    got = json.loads(out)
    assert got["labels_matched"] == "by name" and got["count"] == swapped["variant"]["eval_count"] == 500
    assert got["top1"] == top1 and got["drop_pts"] == 0.0


@pytest.mark.slow
def test_predict_names_outputs_as_the_metadata_does(swapped, digits, run_cli):
    img = sorted((digits["images"] / "0").iterdir())[0]
    code, out, err = run_cli(["predict", swapped["model"], img, "--top-k", "1", "--json"])
    assert code == 0 and err == "", err
    (top,) = json.loads(out)["predictions"][0]["top"]
    assert top["index"] == 0 and top["label"] == "1"  # a 0, named as line 1 of the labels file names output 0


@pytest.mark.slow
def test_labels_in_another_order_eval_in_tflite_runtime_venv(tflrt_python, swapped, digits):
    """tflite-runtime's built-in kernels match the folders to the metadata's labels by name as the host did."""
    proc = _run_device(tflrt_python, _tf_free_code(swapped["model"], digits["images"], swapped["report_path"], max_drop="0.5"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    doc = json.loads(proc.stdout)
    assert doc["interpreter"].startswith("tflite-runtime 2.14") and doc["labels_matched"] == "by name"
    assert doc["top1"] == _builtin_kernels_top1(swapped["model"], digits["images"], "unit", names=SWAPPED)
    assert abs(doc["drop_pts"]) <= 0.5


# ---------------------------------------------------------------------- the real ResNet-8


@pytest.fixture(scope="module")
def resnet8(shared_data, resnet8_h5, tmp_path_factory):
    """The MLPerf Tiny ResNet-8 converted to int8 by the host pipeline, evaluated on 300 real CIFAR-10 test images."""
    from edgeresnet.host.pipeline import ConvertOptions, run_convert

    out = tmp_path_factory.mktemp("r8") / "out"
    test = shared_data / "cifar10" / "test"
    run_convert(ConvertOptions(model=str(resnet8_h5), int8=True, calib=str(shared_data / "cifar10" / "train"),
                               calib_samples=100, eval=str(test), eval_samples=300, out=str(out)))
    (variant,) = json.loads((out / "report.json").read_text())["variants"]
    return {"model": out / Path(variant["path"]).name, "report": out / "report.json", "variant": variant, "test": test}


@pytest.mark.slow
def test_real_resnet8_eval_equals_the_host_report(resnet8, shared_data):
    clf = Classifier(resnet8["model"])
    reference = Classifier(shared_data / "mlperf-tiny-resnet8" / "pretrainedResnet.tflite", Overrides(preset="raw"))
    result = evaluate(clf, resnet8["test"], samples=300, against=reference, report=resnet8["report"], max_drop=0)
    assert result.host.matched_by == "sha256" and result.count == 300
    assert round(result.top1, 4) == resnet8["variant"]["top1"] and result.drop_pts == pytest.approx(0, abs=1e-9)
    assert 60.0 < result.top1 < 90.0  # a real classifier, not chance and not a lookup
    assert result.against["agreement"] > 90.0


@pytest.mark.slow
def test_real_resnet8_in_tflite_runtime_venv(tflrt_python, resnet8):
    python = tflrt_python
    # tflite-runtime 2.14 runs the int8 model on its reference kernels, which round differently from XNNPACK's:
    # 6-17 of 1,000 CIFAR-10 test images change their answer, either way (benchmarks/RESULTS.md), so the net top-1 on
    # 300 images moves by up to about a point
    code = _tf_free_code(resnet8["model"], resnet8["test"], resnet8["report"], ["--samples", "300"], max_drop="1")
    proc = _run_device(python, code)
    assert proc.returncode == 0, proc.stderr[-2000:]
    doc = json.loads(proc.stdout)
    assert doc["interpreter"].startswith("tflite-runtime 2.14") and doc["host"]["matched_by"] == "sha256"
    assert doc["count"] == 300 and abs(doc["drop_pts"]) <= 1.0 and doc["same_images"] is True


def test_inspect_shows_the_metadata(digits, run_cli):
    from edgeresnet.device.inspection import inspect_tflite

    """The pipeline's model: the digits as labels, the 'unit' preset as (pixel - 0) / 255, RGB input."""
    path = digits["model"]
    meta = inspect_tflite(path, gpu=False, runtimes=False).to_dict()["metadata"]
    assert meta["present"] is True and meta["labels_count"] == 10 and meta["labels"] == list(DIGITS)
    assert meta["mean"] == [0.0] and meta["std"] == [255.0] and meta["color_space"] == "RGB"
    code, out, err = run_cli(["inspect", path, "--no-gpu"])
    assert code == 0, err
    assert "10 labels (labels.txt: 0, 1, 2, 3, 4, ...)" in out and "input RGB" in out and "std [255.0]" in out


def test_inspect_says_when_there_is_no_metadata(shared_data):
    from edgeresnet.device.inspection import format_inspect, inspect_tflite

    report = inspect_tflite(shared_data / "mlperf-tiny-resnet8" / "pretrainedResnet_quant.tflite", gpu=False, runtimes=False)
    assert report.to_dict()["metadata"] == {"present": False}
    assert "metadata    none" in format_inspect(report)


def test_damaged_metadata_is_reported_not_raised(digits):
    """Seeded byte flips in the metadata and the packed labels zip: inspect reports, never crashes."""
    import random

    from edgeresnet.errors import EdgeResNetError
    from edgeresnet.device.inspection import metadata_summary

    data = digits["model"].read_bytes()  # carries the pipeline's metadata and labels.txt
    assert read_metadata(data) is not None
    rng = random.Random(0)
    outcomes = set()
    for _ in range(300):
        b = bytearray(data)
        for _ in range(rng.randint(1, 4)):
            b[rng.randrange(len(b) - 3000, len(b))] = rng.randrange(256)
        summary = metadata_summary(bytes(b))
        outcomes.add("read" if summary["present"] else ("error" if "error" in summary else "none"))
        if "error" in summary:
            assert "\n" not in summary["error"]
            with pytest.raises(EdgeResNetError):  # predict/eval refuse it with the same one-line reason
                read_metadata(bytes(b))
    assert {"read", "error"} <= outcomes


# `eval` inside the emulated Raspberry Pi (tflite-runtime 2.14 on arm64, --report matched by sha256, labels by
# name, --max-drop) is tests/test_pi.py::test_accuracy_on_the_emulated_pi_equals_the_hosts, on all 1,000 CIFAR-10
# test images of the real ResNet-8 and the 500 digits; --samples on tflite-runtime 2.14 is
# test_real_resnet8_in_tflite_runtime_venv.

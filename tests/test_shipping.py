"""What emitted models carry (metadata, labels) and the per-runtime verdicts, on real conversions."""

from __future__ import annotations

import json

import numpy as np
import pytest

from edgeresnet.device.presets import get_preset
from edgeresnet.errors import ConfigError, DataError
from edgeresnet.device.metadata import ModelInfo, read_metadata
from edgeresnet.device.metadata import read_labels_file
from edgeresnet.host.shipping import match_classes, mediapipe_verdict, normalization, prepare, resolve_labels


@pytest.mark.parametrize(
    "preset, folded, channels, mean, std",
    [
        ("raw", False, 3, (0.0,), (1.0,)),
        ("unit", False, 3, (0.0,), (255.0,)),
        ("symmetric", False, 3, (127.5,), (127.5,)),
        ("torch", False, 3, (123.675, 116.28, 103.53), (58.395, 57.12, 57.375)),
        ("caffe", False, 3, None, None),  # BGR: not expressible in the schema
        ("caffe", True, 3, (0.0,), (1.0,)),  # folded: the model takes raw pixels
        ("torch", True, 3, (0.0,), (1.0,)),
        ("unit", False, 1, (0.0,), (255.0,)),
    ],
)
def test_normalization_from_presets(preset, folded, channels, mean, std):
    got_mean, got_std = normalization(get_preset(preset), folded, channels)
    if mean is None:
        assert got_mean is None and got_std is None
    else:
        assert got_mean == pytest.approx(mean, abs=1e-4) and got_std == pytest.approx(std, abs=1e-4)
        # (pixel - mean) / std is exactly what the preset computes
        pixels = np.array([[[[0, 64, 255]]]], dtype=np.uint8)
        if not folded:
            expected = get_preset(preset).apply(pixels[..., :channels])
            stated = (pixels[..., :channels] - np.float32(got_mean[: channels] if len(got_mean) > 1 else got_mean[0])) / (
                np.float32(got_std[: channels] if len(got_std) > 1 else got_std[0]))
            np.testing.assert_allclose(stated, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "text, message",
    [
        ("cat\ndog\n", "has 2 class names but the model has 3 outputs"),
        ("cat\n\ndog\n", "entry 2 is empty"),
        ("cat\ndog\ncat\n", "'cat' appears twice"),
        ("", "are empty"),
    ],
)
def test_bad_labels_files(tmp_path, text, message):
    f = tmp_path / "labels.txt"
    f.write_text(text)
    with pytest.raises(DataError, match=message):
        read_labels_file(f, 3)


def test_labels_file_not_text_or_missing(tmp_path):
    (tmp_path / "bin.txt").write_bytes(b"\xff\xfe\x00cat")
    with pytest.raises(DataError, match="is not UTF-8 text"):
        read_labels_file(tmp_path / "bin.txt", 1)
    with pytest.raises(DataError, match="no such labels file"):
        read_labels_file(tmp_path / "nope.txt", 1)


def test_labels_from_folders_must_agree():
    class Set:
        def __init__(self, names):
            self.class_names, self.labelled = names, True

    assert resolve_labels([("eval", Set(("a", "b"))), ("calib", Set(("a", "b")))], 2) == (("a", "b"), "class folders of eval")
    assert resolve_labels([("eval", None), ("calib", Set(None))], 2) == (None, None)
    # --train's folder scan gives a plain tuple of names; used when nothing else is labelled
    assert resolve_labels([("eval", None), ("--train", ("a", "b"))], 2) == (("a", "b"), "class folders of --train")
    with pytest.raises(ConfigError, match="different class folders"):
        resolve_labels([("eval", Set(("a", "b"))), ("calib", Set(("a", "c")))], 2)
    with pytest.raises(DataError, match="2 class names but the model has 3 outputs"):
        resolve_labels([("eval", Set(("a", "b")))], 3)


def test_class_folders_take_the_output_index_of_their_name_for_training_and_calibration(tmp_path, write_image_folder):
    """--labels listing folders a, b, c as c, a, b: each image's label is the line of its folder's name, in the
    --train stream fine-tuning fits on as in the calibration set; a folder the labels do not name is refused."""
    from pathlib import Path
    from types import SimpleNamespace

    from edgeresnet.device.images import load_images
    from edgeresnet.host.pipeline.data import load_train as _load_train

    folder = write_image_folder(tmp_path / "data", classes=3, per_class=2, size=(8, 8))
    names = ("class2", "class0", "class1")
    opts = SimpleNamespace(train=str(folder), seed=0, resize="crop", labels="names.txt")
    train = _load_train(opts, SimpleNamespace(input_shape=(8, 8, 3), num_classes=3), get_preset("raw"), names=names)
    calib = match_classes(load_images(folder, (8, 8, 3)), names, "--calib", "--labels names.txt")
    for images in (train, calib):
        assert images.class_names == names
        assert [names[label] for label in images.labels] == [Path(p).parent.name for p in images.paths]
        assert sorted(set(images.labels.tolist())) == [0, 1, 2]
    with pytest.raises(DataError, match="--calib has classes 'class2' that --labels names.txt does not name"):
        match_classes(load_images(folder, (8, 8, 3)), ("class0", "class1", "kitten"), "--calib", "--labels names.txt")


@pytest.mark.parametrize(
    "labels, message",
    [("cat\ndog\n", "has 2 class names but the model has 10 outputs"), ("0\n1\n1\n2\n3\n4\n5\n6\n7\n8\n", "appears twice")],
)
def test_cli_bad_labels_is_one_line_before_any_work(tmp_path, labels, message, run_cli):
    f = tmp_path / "labels.txt"
    f.write_text(labels)
    out = tmp_path / "out"
    code, _, err = run_cli(["convert", "--int8", "--labels", str(f), "--out", str(out)])
    assert code == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], err
    assert not out.exists()


@pytest.mark.slow
def test_unlabelled_data_gives_models_without_labels_and_a_warning(tmp_path):
    """fp32 of the built-in model, evaluated on an unlabelled folder: metadata without labels, a warning."""
    from PIL import Image

    from edgeresnet.host import demo
    from edgeresnet.host.pipeline import ConvertOptions, run_convert

    flat = tmp_path / "flat"
    flat.mkdir()
    for i, img in enumerate(demo.digits_images("eval", channels=3).images[:20]):
        Image.fromarray(img).save(flat / f"{i}.png")
    notes = []
    out = tmp_path / "out"
    report = run_convert(ConvertOptions(precision="fp32", eval=str(flat), out=str(out)), notify=notes.append)
    assert any("no class names" in n and "--labels" in n for n in notes)
    (variant,) = report.to_dict()["variants"]
    info = read_metadata((out / variant["path"].split("/")[-1]).read_bytes())
    assert info.labels is None and info.mean == (0.0,) and info.std == (255.0,) and info.color_space == "RGB"
    assert not (out / "labels.txt").exists()
    assert "category names are empty" in variant["runtimes"]["mediapipe"]["why"]
    md = (out / "report.md").read_text()
    assert "## Shipping" in md and "MediaPipe Tasks / Task Library" in md and "category names are empty" in md

    # With --labels the same run names the classes, in the metadata and beside the model.
    (tmp_path / "names.txt").write_text("".join(f"digit {d}\n" for d in range(10)))
    out2 = tmp_path / "out2"
    report = run_convert(ConvertOptions(precision="fp32", eval=str(flat), out=str(out2), labels=str(tmp_path / "names.txt")))
    (variant,) = report.to_dict()["variants"]
    info = read_metadata((out2 / variant["path"].split("/")[-1]).read_bytes())
    assert info.labels == tuple(f"digit {d}" for d in range(10))
    assert (out2 / "labels.txt").read_text().splitlines() == list(info.labels)
    assert json.loads((out2 / "report.json").read_text())["metadata"]["labels_from"].startswith("--labels")


@pytest.fixture(scope="module")
def dark_uint8_model(tiny_model_h5):
    """A tiny model calibrated on dark images only (pixels 0..127), uint8 io: its input scale is 2x too fine."""
    from edgeresnet.host.converter import ConversionSpec, convert
    from edgeresnet.host.models.loading import load_model

    rng = np.random.default_rng(0)
    dark = rng.integers(0, 128, (32, 16, 16, 3)).astype(np.float32)
    dark[0, 0, 0, 0] = 127.5  # the calibrated range is exactly [0, 0.5] after the unit preset
    loaded = load_model(tiny_model_h5)
    return convert(loaded.tflite_converter, ConversionSpec("int8", "uint8", "minmax"), dark / 255.0).model


def test_uint8_input_is_made_to_take_raw_pixels_exactly(dark_uint8_model):
    from edgeresnet.device.runtime import TFLiteModel

    info = ModelInfo(name="tiny", mean=(0.0,), std=(255.0,), labels=("a", "b", "c", "d"))
    plain = TFLiteModel(dark_uint8_model)
    assert plain.input.scale == pytest.approx(0.5 / 255, rel=1e-5)
    assert mediapipe_verdict(dark_uint8_model, info)["ok"] is False

    shipped, note = prepare(dark_uint8_model, info)
    assert "raw pixels" in note
    fixed = TFLiteModel(shipped)
    assert fixed.input.scale == pytest.approx(1 / 255, rel=1e-6) and fixed.input.zero_point == 0
    assert mediapipe_verdict(shipped, info)["ok"] is True and read_metadata(shipped) == info
    # Pixel p fed raw to the shipped model is the value the plain model got as 2p: same outputs, bit for bit.
    rng = np.random.default_rng(1)
    for _ in range(5):
        p = rng.integers(0, 128, (1, 16, 16, 3)).astype(np.uint8)
        np.testing.assert_array_equal(fixed.invoke_raw(p), plain.invoke_raw((2 * p).astype(np.uint8)))


def test_uint8_input_cannot_be_exact_for_a_half_pixel_mean(dark_uint8_model):
    info = ModelInfo(name="tiny", mean=(127.5,), std=(127.5,))
    shipped, note = prepare(dark_uint8_model, info)
    assert "not a whole pixel value" in note
    verdict = mediapipe_verdict(shipped, info)
    assert verdict["ok"] is False and "--fold-preprocessing" in verdict["why"]


def test_edgetpu_verdict_from_tensor_types(shared_data):
    from edgeresnet.host.shipping import edgetpu_verdict

    r8 = shared_data / "mlperf-tiny-resnet8"
    assert edgetpu_verdict((r8 / "pretrainedResnet.tflite").read_bytes(), {})["ok"] is False  # float model
    integer = edgetpu_verdict((r8 / "pretrainedResnet_quant.tflite").read_bytes(), {})
    assert integer["ok"] is None and "edgetpu_compiler" in integer["why"]  # int8: the compiler decides
    checked = {"edgetpu": {"ok": True, "summary": "17/17 ops would map to the Edge TPU"}}
    assert edgetpu_verdict(b"", checked) == {"ok": True, "why": "17/17 ops would map to the Edge TPU"}

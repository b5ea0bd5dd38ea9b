"""Training input that is bad or means nothing: images that are not images, class folders without images, a
one-class classifier, an input size or fine-tuning setting out of range. Each is one `error:` line naming the
file or the limit, a non-zero exit, no traceback, no output, and --train left as it was; a file found broken
only while training (in this process or in the fine-tuning child) is the same one line."""

from __future__ import annotations

import io
import shutil

import numpy as np
import pytest
from PIL import Image



def _jpeg_cut_in_its_pixels() -> bytes:
    """A JPEG whose header is whole (it opens) but whose pixel data stops half way (it does not decode)."""
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(buf, "JPEG")
    data = buf.getvalue()
    start = data.index(b"\xff\xda")  # start of scan: the pixel data follows
    return data[: (start + len(data)) // 2]


def _flatten(d):
    """Every image loose in ``d``: no class folders."""
    for c in range(4):
        for f in (d / f"class{c}").iterdir():
            f.rename(d / f"{c}_{f.name}")
        (d / f"class{c}").rmdir()


# How each --train folder differs from a good one (4 class folders of 6 colour-coded 16x16 images).
DAMAGE = {
    "good": lambda d: None,
    "pdf_as_jpg": lambda d: (d / "class2" / "doc.jpg").write_bytes(b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF\n"),
    "zero_byte_jpg": lambda d: (d / "class1" / "empty.jpg").write_bytes(b""),
    "truncated_jpg": lambda d: (d / "class3" / "cut.jpg").write_bytes(_jpeg_cut_in_its_pixels()),
    "empty_class": lambda d: (d / "class4").mkdir(),
    "class_of_non_images": lambda d: ((d / "class4").mkdir(), (d / "class4" / "notes.txt").write_text("x")),
    "class_of_a_folder_named_jpg": lambda d: (d / "class4" / "x.jpg").mkdir(parents=True),
    "one_class": lambda d: [shutil.rmtree(d / f"class{c}") for c in (1, 2, 3)],
    "flat": lambda d: _flatten(d),
}


@pytest.fixture(scope="module")
def folders(tmp_path_factory, write_image_folder):
    root = tmp_path_factory.mktemp("train_input")
    made = {}
    for kind, damage in DAMAGE.items():
        damage(write_image_folder(root / kind, classes=4, per_class=6, seed=4))
        made[kind] = root / kind
    made["calib"] = write_image_folder(root / "calib", classes=4, per_class=6, seed=5)
    return made


def _run_refused(run_cli, snapshot, argv: list, folders, tmp_path, before_work: bool = True) -> str:
    """Run the CLI with ``{name}`` in ``argv`` replaced by that folder; it must fail with one clean `error:` line
    (the only line at all when refused ``before_work``; else after the progress of the stages it reached), write
    nothing and leave every input folder as it was. Returns that line."""
    out = tmp_path / "out"
    before = {k: snapshot(v) for k, v in folders.items()}
    code, _, err = run_cli([a.format(**folders) for a in argv] + ["--out", str(out)])
    assert code == 2, err
    assert "Traceback" not in err and "internal error" not in err, err
    lines = err.strip().splitlines()
    assert lines[-1].startswith("error: ") and [x for x in lines if x.startswith(("error:", "warning:"))] == lines[-1:]
    assert len(lines) == 1 or not before_work, err
    assert not out.exists() and list(tmp_path.iterdir()) == []
    assert {k: snapshot(v) for k, v in folders.items()} == before
    return lines[-1]


NEW_CLASSIFIER = ["convert", "resnet8", "--input-size", "16", "--int8", "--calib", "{calib}", "--epochs", "1"]


@pytest.mark.parametrize(
    "train, extra, message",
    [
        ("pdf_as_jpg", ["--classes", "4"], "pdf_as_jpg/class2/doc.jpg: cannot read this image"),
        ("zero_byte_jpg", ["--classes", "4"], "zero_byte_jpg/class1/empty.jpg: cannot read this image"),
        ("empty_class", ["--classes", "5"], "--train class folder {empty_class}/class4 holds no JPEG/PNG/BMP images"),
        ("class_of_non_images", ["--classes", "5"], "class_of_non_images/class4 holds no JPEG/PNG/BMP images"),
        ("class_of_a_folder_named_jpg", ["--classes", "5"], "class_of_a_folder_named_jpg/class4 holds no JPEG"),
        ("one_class", ["--classes", "1"], "a classifier needs a whole number of at least 2 classes"),
        ("one_class", ["--classes", "2"], "--train has a single class folder (class0)"),
        ("flat", ["--classes", "4"], "has no class sub-folders; --train needs one sub-folder of images per class"),
        ("good", ["--classes", "1"], "at least 2 classes"),
        ("good", ["--classes", "0"], "at least 2 classes"),
        ("good", ["--classes", "5"], "--classes 5 but --train {good} has 4 class folders"),
        ("good", ["--classes", "1000000000"], "pass --classes 4"),
        ("good", ["--classes", "4", "--input-size", "100000"], "--input-size 100000 is over the limit of 1024 px"),
        ("good", ["--classes", "4", "--input-size", "0"], "--input-size must be at least 1"),
        ("good", ["--classes", "4", "--epochs", "0"], "--epochs (new classifier) must be at least 1"),
        ("good", ["--classes", "4", "--batch-size", "0"], "--batch-size must be at least 1"),
        ("good", ["--classes", "4", "--learning-rate", "0"], "--learning-rate must be above 0 and below 1"),
        ("good", ["--classes", "4", "--learning-rate", "-1"], "--learning-rate must be above 0 and below 1"),
        ("good", ["--classes", "4", "--learning-rate", "5"], "--learning-rate must be above 0 and below 1"),
        ("good", ["--classes", "4", "--learning-rate", "nan"], "'nan' is not a finite number"),
    ],
)
def test_a_new_classifier_refuses_bad_or_meaningless_training_input_before_any_work(
        train, extra, message, folders, tmp_path, run_cli, snapshot):
    err = _run_refused(run_cli, snapshot, NEW_CLASSIFIER + ["--train", "{" + train + "}"] + extra, folders, tmp_path)
    assert message.format(**folders) in err, err


@pytest.mark.parametrize(
    "argv, message",
    [  # pruning and quantization-aware training read --train the same way (here on the built-in model)
        (["convert", "--int8", "--prune", "0.5", "--train", "{pdf_as_jpg}"], "doc.jpg: cannot read this image"),
        (["convert", "--int8", "--qat", "--train", "{empty_class}"], "class4 holds no JPEG/PNG/BMP images"),
        (["convert", "--int8", "--prune", "0.5", "--train", "{good}", "--batch-size", "0"], "--batch-size must be at least 1"),
        (["convert", "--int8", "--prune", "0.5", "--train", "{good}", "--learning-rate", "0"], "--learning-rate must be above 0"),
    ],
)
def test_pruning_and_qat_refuse_bad_training_input_before_any_work(argv, message, folders, tmp_path, run_cli, snapshot):
    assert message in _run_refused(run_cli, snapshot, argv, folders, tmp_path)


def test_bench_refuses_an_input_size_over_the_limit(run_cli):
    code, _, err = run_cli(["bench", "resnet8", "--input-size", "100000"])
    assert code == 2 and "--input-size 100000 is over the limit of 1024 px" in err, err
    assert "Traceback" not in err and err.strip().count("\n") == 0


@pytest.mark.slow  # TensorFlow starts training (and at 96 px a fine-tuning child process starts) before the file is read
@pytest.mark.parametrize("side, in_child", [(16, False), (96, True)])
def test_an_image_cut_short_stops_training_with_the_file_named(side, in_child, folders, tmp_path, monkeypatch, run_cli,
                                                              snapshot):
    """A JPEG whose header is whole but whose pixels are cut short passes the header check and is found only
    when the training stream decodes it (inside tf.data, and at 96 px in the fine-tuning child): the one-line
    error names it, as calibration and evaluation do."""
    from edgeresnet._util import isolation as _isolate

    children = []
    real = _isolate.run_in_child
    monkeypatch.setattr(_isolate, "run_in_child", lambda *a, **k: children.append(a[0]) or real(*a, **k))
    argv = ["convert", "resnet8", "--input-size", str(side), "--int8", "--calib", "{calib}", "--epochs", "1",
            "--batch-size", "8", "--classes", "4", "--train", "{truncated_jpg}"]
    err = _run_refused(run_cli, snapshot, argv, folders, tmp_path, before_work=False)
    assert err.startswith(f"error: {folders['truncated_jpg']}/class3/cut.jpg: cannot read this image (image file is "
                          "truncated"), err
    assert bool(children) is in_child  # the child really trained (and failed) at 96 px, this process at 16 px


def test_every_kind_of_pixel_a_training_folder_may_hold_is_read(tmp_path, write_image_folder):
    """Greyscale (PNG and JPEG), RGBA, 16-bit, CMYK, 1-bit and palette images pass the header check and decode
    to the model's RGB input, as in calibration."""
    from edgeresnet.device.images import check_image_files, stream_images, training_folder

    root = write_image_folder(tmp_path / "train", classes=2, per_class=2)
    pixels = np.random.default_rng(1).integers(0, 256, (20, 24, 3), dtype=np.uint8)
    rgb = Image.fromarray(pixels)
    Image.fromarray(pixels[..., 0]).save(root / "class0" / "grey.png")
    Image.fromarray(pixels[..., 0]).save(root / "class0" / "grey.jpg")
    Image.fromarray(np.dstack([pixels, pixels[..., :1]])).save(root / "class0" / "rgba.png")
    Image.fromarray(pixels[..., 0].astype(np.uint16) * 257).save(root / "class1" / "sixteen.png")
    rgb.convert("CMYK").save(root / "class1" / "cmyk.jpg")
    rgb.convert("1").save(root / "class1" / "bw.png")
    rgb.convert("P").save(root / "class1" / "palette.bmp")
    with Image.open(io.BytesIO(_jpeg_cut_in_its_pixels())):  # the header check lets it through: training finds it
        pass
    files, names = training_folder(root)
    assert names == ("class0", "class1") and len(files) == 11
    check_image_files(files)
    stream = stream_images(root, (16, 16, 3))
    x = stream.inputs(range(len(stream)))
    assert x.shape == (11, 16, 16, 3) and np.isfinite(x).all()

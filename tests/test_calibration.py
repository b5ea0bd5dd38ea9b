"""Calibration data: folders and arrays in, presets, sampling, records, folding into the model."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgeresnet.device import images as cal
from edgeresnet.device.images import load_images
from edgeresnet.device.imageset import ImageSet
from edgeresnet.device.presets import Preset, get_preset, load_presets, presets_path
from edgeresnet.defaults import DEFAULT_SAMPLES
from edgeresnet.host.calibration import (
    MIN_RECOMMENDED_SAMPLES,
    CalibrationRecord,
    calibration_record,
    representative_dataset,
)
from edgeresnet.errors import ConfigError, DataError

RGB = (32, 32, 3)


def _save(path: Path, pixels, mode=None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(pixels, dtype=np.uint8), mode).save(path)
    return path


def _solid(h, w, color):
    return np.broadcast_to(np.asarray(color, dtype=np.uint8), (h, w, len(color))).copy()


def _flat_folder(root: Path, n: int, size=8) -> Path:
    rng = np.random.default_rng(123)
    for i in range(n):
        _save(root / f"img{i:03d}.png", rng.integers(0, 256, (size, size, 3)))
    return root


def _class_folder(root: Path, counts: dict, size=8) -> Path:
    for label, (name, k) in enumerate(counts.items()):
        for i in range(k):
            _save(root / name / f"{i:03d}.png", _solid(size, size, (label * 20, i, 7)))
    return root


# ---------------------------------------------------------------------- formats and colour


@pytest.mark.parametrize("ext", [".png", ".bmp", ".PNG", ".jpg", ".JPEG"])
def test_each_format_loads_as_rgb(tmp_path, ext):
    _save(tmp_path / f"a{ext}", _solid(6, 6, (200, 100, 50)))
    s = load_images(tmp_path, (6, 6, 3))
    assert s.images.shape == (1, 6, 6, 3) and s.images.dtype == np.uint8
    lossy = ext.lower() in (".jpg", ".jpeg")
    np.testing.assert_allclose(s.images[0].reshape(-1, 3).mean(0), (200, 100, 50), atol=3 if lossy else 0)
    assert not s.labelled and s.source == str(tmp_path)


def test_greyscale_repeats_and_rgba_composites_on_black(tmp_path):
    _save(tmp_path / "grey.png", np.full((4, 4), 90), "L")
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., :3] = (200, 100, 50)
    rgba[..., 3] = 128
    _save(tmp_path / "rgba.png", rgba, "RGBA")
    s = load_images(tmp_path, (4, 4, 3))
    by_name = {Path(p).name: img for p, img in zip(s.paths, s.images)}
    assert np.all(by_name["grey.png"] == 90)
    # alpha 128/255 over black: about half of each channel
    np.testing.assert_allclose(by_name["rgba.png"][0, 0], (100, 50, 25), atol=1)


def test_rgb_to_one_channel_uses_luminance(tmp_path):
    _save(tmp_path / "red.png", _solid(4, 4, (255, 0, 0)))
    _save(tmp_path / "white.bmp", _solid(4, 4, (255, 255, 255)))
    s = load_images(tmp_path, (4, 4, 1))
    assert s.images.shape == (2, 4, 4, 1)
    values = sorted(int(img[0, 0, 0]) for img in s.images)
    assert values == [76, 255]  # ITU-R 601-2: 0.299 * 255


def test_sixteen_bit_png_is_scaled_not_clipped(tmp_path):
    arr = np.full((4, 4), 32768, dtype=np.uint16)
    Image.fromarray(arr).save(tmp_path / "deep.png")
    s = load_images(tmp_path / "deep.png", (4, 4, 3))
    assert int(s.images[0, 0, 0, 0]) == 128


def test_single_image_file_is_a_one_image_set(tmp_path):
    f = _save(tmp_path / "one.png", _solid(8, 8, (1, 2, 3)))
    s = load_images(f, (8, 8, 3), samples=5)
    assert len(s) == 1 and s.paths == (os.path.abspath(f),)
    rec = calibration_record(s, "raw", 0, "crop")
    assert "only 1 samples; at least 100 recommended" in rec.warnings
    assert any("asked for 5" in w for w in rec.warnings)


def test_hidden_and_non_image_files_are_ignored(tmp_path):
    _flat_folder(tmp_path, 3)
    (tmp_path / ".DS_Store").write_bytes(b"junk")
    (tmp_path / "notes.txt").write_text("not an image")
    _save(tmp_path / ".hidden" / "x.png", _solid(8, 8, (0, 0, 0)))  # hidden folder: not a class
    s = load_images(tmp_path, (8, 8, 3))
    assert len(s) == 3 and not s.labelled


# ---------------------------------------------------------------------- resize


def _bands(h=20, w=40):
    """Red left edge (6 columns), green middle, blue right edge (6 columns)."""
    img = np.zeros((h, w, 3), np.uint8)
    img[:, :6] = (255, 0, 0)
    img[:, 6:34] = (0, 255, 0)
    img[:, 34:] = (0, 0, 255)
    return img


def test_crop_keeps_the_centre(tmp_path):
    _save(tmp_path / "wide.png", _bands())
    s = load_images(tmp_path, (10, 10, 3), resize="crop")
    assert s.images.shape == (1, 10, 10, 3) and s.resized == 1
    # 40x20 -> 20x10 (shorter side to 10); the centre 10 columns come from source columns 10..29: green
    assert np.all(s.images[0, :, :, 1] == 255) and np.all(s.images[0, :, :, [0, 2]] == 0)


def test_stretch_keeps_everything(tmp_path):
    _save(tmp_path / "wide.png", _bands())
    s = load_images(tmp_path, (10, 10, 3), resize="stretch")
    img = s.images[0]
    assert img.shape == (10, 10, 3)
    assert img[5, 0, 0] > 200 and img[5, 0, 1] < 50  # red edge survives
    assert img[5, 9, 2] > 200 and img[5, 9, 1] < 50  # blue edge survives


@pytest.mark.parametrize(
    "src_hw, target, resize",
    [((32, 32), (8, 16, 3), "crop"), ((5, 10), (10, 10, 3), "crop"), ((7, 30), (9, 4, 3), "stretch"),
     ((7, 30), (9, 4, 1), "crop")],
)
def test_resize_gives_exact_target_shape(tmp_path, src_hw, target, resize):
    _save(tmp_path / "x.png", np.random.default_rng(0).integers(0, 256, (*src_hw, 3)))
    s = load_images(tmp_path, target, resize=resize)
    assert s.images.shape == (1, *target)


def test_images_at_target_size_are_untouched(tmp_path):
    pixels = np.random.default_rng(5).integers(0, 256, (12, 10, 3)).astype(np.uint8)
    _save(tmp_path / "exact.png", pixels)
    for policy in ("crop", "stretch"):
        s = load_images(tmp_path, (12, 10, 3), resize=policy)
        np.testing.assert_array_equal(s.images[0], pixels)
        assert s.resized == 0


# ---------------------------------------------------------------------- sampling


def test_seeded_sampling_is_deterministic(tmp_path):
    _flat_folder(tmp_path, 30)
    a = load_images(tmp_path, (8, 8, 3), samples=10, seed=0)
    b = load_images(tmp_path, (8, 8, 3), samples=10, seed=0)
    c = load_images(tmp_path, (8, 8, 3), samples=10, seed=1)
    assert a.paths == b.paths and np.array_equal(a.images, b.images)
    assert set(a.paths) != set(c.paths)
    assert len(set(a.paths)) == 10
    assert len(load_images(tmp_path, (8, 8, 3), samples=None)) == 30


def test_progress_counts_decoded_images(tmp_path):
    _flat_folder(tmp_path, 12)
    calls = []
    load_images(tmp_path, (8, 8, 3), samples=5, progress=lambda d, t: calls.append((d, t)))
    assert calls == [(i, 5) for i in range(1, 6)]


def test_only_the_chosen_files_are_decoded(shared_data, monkeypatch):
    decoded = []
    real = cal._decode
    monkeypatch.setattr(cal, "_decode", lambda path, *a: decoded.append(path) or real(path, *a))
    s = load_images(shared_data / "cifar10" / "train", RGB, samples=300, seed=0)
    assert len(s) == 300 and len(decoded) == 300 == len(set(decoded))


def test_balanced_round_robin_with_uneven_classes(tmp_path):
    _class_folder(tmp_path, {"a": 5, "b": 12, "c": 3})
    s = load_images(tmp_path, (8, 8, 3), samples=9, seed=0)
    assert s.class_names == ("a", "b", "c") and s.per_class() == {"a": 3, "b": 3, "c": 3}
    s = load_images(tmp_path, (8, 8, 3), samples=12, seed=0)
    counts = s.per_class()
    assert counts["c"] == 3 and counts["a"] + counts["b"] == 9 and abs(counts["a"] - counts["b"]) <= 1
    rec = calibration_record(s, "unit", 0, "crop")
    assert rec.balanced and rec.per_class == counts
    # 5 + 12 + 3: asking for everything leaves the classes uneven, and the record says so
    rec = calibration_record(load_images(tmp_path, (8, 8, 3)), "unit", 0, "crop")
    assert any(w.startswith("uneven classes: 3 to 12") for w in rec.warnings)


def test_labels_follow_sorted_class_folders(tmp_path):
    _class_folder(tmp_path, {"zebra": 2, "ant": 2, "moth": 2})
    s = load_images(tmp_path, (8, 8, 3))
    assert s.class_names == ("ant", "moth", "zebra")
    for p, label in zip(s.paths, s.labels):
        assert Path(p).parent.name == s.class_names[label]


def test_empty_class_folder_keeps_label_order_and_warns(tmp_path):
    _class_folder(tmp_path, {"a": 3, "c": 3})
    (tmp_path / "b").mkdir()
    s = load_images(tmp_path, (8, 8, 3))
    assert s.class_names == ("a", "b", "c") and s.per_class() == {"a": 3, "b": 0, "c": 3}
    assert set(s.labels.tolist()) == {0, 2}
    assert any("no samples of 1 class(es): b" in w for w in calibration_record(s, "raw", 0, "crop").warnings)


def test_cifar_train_balanced_sample(shared_data):
    root = shared_data / "cifar10" / "train"
    s = load_images(root, RGB, samples=50, seed=0)
    names = tuple(sorted(d.name for d in root.iterdir() if d.is_dir()))
    assert s.class_names == names and len(names) == 10
    assert set(s.per_class().values()) == {5}
    for p, label in zip(s.paths, s.labels):
        assert Path(p).parent.name == names[label]
    rec = calibration_record(s, "raw", 0, "crop").to_dict()
    assert rec["count"] == 50 and rec["balanced"] and rec["available"] == 5000 and rec["resized"] == 0
    assert rec["warnings"] == ["only 50 samples; at least 100 recommended"]


def test_exclude_keeps_sets_disjoint(tmp_path):
    _class_folder(tmp_path, {"a": 6, "b": 6})
    calib = load_images(tmp_path, (8, 8, 3), samples=8, seed=0)
    rest = load_images(tmp_path, (8, 8, 3), seed=1, exclude=set(calib.paths))
    assert len(rest) == 4 and not set(rest.paths) & set(calib.paths)
    with pytest.raises(DataError, match="excluded"):
        load_images(tmp_path, (8, 8, 3), exclude=set(calib.paths) | set(rest.paths))


def test_split_is_stratified_and_disjoint(tmp_path):
    _class_folder(tmp_path, {"a": 10, "b": 20})
    s = load_images(tmp_path, (8, 8, 3))
    first, rest = s.split(0.2, seed=3)
    assert first.per_class() == {"a": 2, "b": 4} and rest.per_class() == {"a": 8, "b": 16}
    assert not set(first.paths) & set(rest.paths)
    assert first.paths == s.split(0.2, seed=3)[0].paths


# ---------------------------------------------------------------------- arrays


def test_npy_uint8_rows_are_picked_by_seed(tmp_path):
    x = np.random.default_rng(0).integers(0, 256, (20, 4, 4, 3)).astype(np.uint8)
    np.save(tmp_path / "x.npy", x)
    s = load_images(tmp_path / "x.npy", (4, 4, 3), samples=7, seed=2)
    rows = [int(p.rsplit("#", 1)[1]) for p in s.paths]
    np.testing.assert_array_equal(s.images, x[rows])
    assert s.raw_is_pixels and not s.labelled and len(set(rows)) == 7
    rest = load_images(tmp_path / "x.npy", (4, 4, 3), exclude=set(s.paths))
    assert len(rest) == 13


def test_npy_float_is_kept_and_flagged(tmp_path):
    x = np.random.default_rng(0).random((6, 4, 4, 3))  # float64 in [0, 1): already preprocessed?
    np.save(tmp_path / "x.npy", x)
    s = load_images(tmp_path / "x.npy", (4, 4, 3))
    assert s.images.dtype == np.float32 and not s.raw_is_pixels
    rows = [int(p.rsplit("#", 1)[1]) for p in s.paths]
    np.testing.assert_allclose(s.images, x[rows].astype(np.float32))
    assert any("not 0..255 pixels" in w for w in calibration_record(s, "unit", 0, "crop").warnings)
    assert not any("pixels" in w for w in calibration_record(s, "raw", 0, "crop").warnings)


@pytest.mark.parametrize("keys", [("x", "y"), ("images", "labels")])
def test_npz_with_labels_is_balanced(tmp_path, keys):
    x = np.random.default_rng(0).integers(0, 256, (30, 4, 4, 1)).astype(np.uint8)
    y = np.repeat(np.arange(3), 10)
    np.savez(tmp_path / "d.npz", **{keys[0]: x, keys[1]: y, "class_names": np.array(["r", "g", "b"])})
    s = load_images(tmp_path / "d.npz", (4, 4, 1), samples=6)
    assert s.labelled and s.class_names == ("r", "g", "b") and s.per_class() == {"r": 2, "g": 2, "b": 2}
    rows = [int(p.rsplit("#", 1)[1]) for p in s.paths]
    np.testing.assert_array_equal(s.images, x[rows])
    np.testing.assert_array_equal(s.labels, y[rows])


def test_npz_one_hot_labels(tmp_path):
    y = np.eye(4)[[0, 1, 2, 3, 3]]
    np.savez(tmp_path / "d.npz", x=np.zeros((5, 2, 2, 3), np.uint8), y=y)
    s = load_images(tmp_path / "d.npz", (2, 2, 3))
    assert sorted(s.labels.tolist()) == [0, 1, 2, 3, 3]


# ---------------------------------------------------------------------- bad inputs


@pytest.fixture(scope="module")
def bad_root(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("bad")
    (tmp / "notes.txt").write_text("x")
    (tmp / "empty").mkdir()
    (tmp / "texts").mkdir()
    for i in range(2):
        (tmp / "texts" / f"{i}.txt").write_text("x")
    (tmp / "texts" / "a.csv").write_text("x")
    _flat_folder(tmp / "mixed", 2)
    (tmp / "mixed" / "sub").mkdir()
    (tmp / "corrupt").mkdir()
    (tmp / "corrupt" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    _class_folder(tmp / "dataset" / "train", {"a": 1})  # a dataset root, one level too high
    np.save(tmp / "small.npy", np.zeros((3, 16, 16, 3), np.uint8))
    np.save(tmp / "two.npy", np.zeros((3, 32, 32, 2), np.uint8))
    np.save(tmp / "flat.npy", np.zeros((3, 32), np.uint8))
    np.save(tmp / "none.npy", np.zeros((0, 32, 32, 3), np.uint8))
    np.save(tmp / "big.npy", np.full((2, 32, 32, 3), 300, np.int32))
    np.save(tmp / "nan.npy", np.full((2, 32, 32, 3), np.nan, np.float32))
    np.savez(tmp / "nokey.npz", a=np.zeros((3, 32, 32, 3), np.uint8))
    np.savez(tmp / "badlabels.npz", x=np.zeros((3, 32, 32, 3), np.uint8), y=np.zeros(4))
    (tmp / "garbage.npy").write_bytes(b"not numpy")
    _flat_folder(tmp / "ok", 2)
    return tmp


BAD_INPUTS = [
    # (path under bad_root, extra kwargs, error, text in the message; {p} is the full path)
    ("missing", {}, DataError, "{p}: no such file or folder"),
    ("notes.txt", {}, DataError, "is a .txt file"),
    ("empty", {}, DataError, "{p} is empty"),
    ("texts", {}, DataError, "3 file(s), none JPEG/PNG/BMP (2 .txt, 1 .csv)"),
    ("mixed", {}, DataError, "mixes 2 loose image(s) with 1 sub-folder(s) (sub)"),
    ("corrupt", {}, DataError, "broken.jpg: cannot read this image"),
    ("dataset", {}, DataError, "holds folders, not images; point at {p}/train"),
    ("small.npy", {}, DataError, "wrong image shape: {p} holds (16, 16, 3) images but the model takes (32, 32, 3)"),
    ("two.npy", {}, DataError, "2 channels"),
    ("flat.npy", {}, DataError, "must be (N, H, W, C)"),
    ("none.npy", {}, DataError, "holds no images"),
    ("big.npy", {}, DataError, "outside 0..255"),
    ("nan.npy", {}, DataError, "NaN"),
    ("nokey.npz", {}, DataError, "no 'x' or 'images' array (keys: a)"),
    ("badlabels.npz", {}, DataError, "labels have shape (4,)"),
    ("garbage.npy", {}, DataError, "cannot read this array file"),
    ("ok", {"samples": 0}, ConfigError, "samples must be a positive number"),
    ("ok", {"samples": -3}, ConfigError, "got -3"),
    ("ok", {"resize": "fit"}, ConfigError, "resize must be crop or stretch, got 'fit'"),
    ("ok", {"input_shape": (32, 32, 4)}, ConfigError, "1 or 3 channels"),
    ("ok", {"input_shape": (32, 32)}, ConfigError, "three positive sizes"),
]


@pytest.mark.parametrize("name, kwargs, error, text", BAD_INPUTS, ids=[f"{c[0]}-{i}" for i, c in enumerate(BAD_INPUTS)])
def test_bad_inputs_raise_one_line_errors(bad_root, name, kwargs, error, text):
    p = bad_root / name
    with pytest.raises(error) as info:
        load_images(p, **{"input_shape": RGB, **kwargs})
    msg = str(info.value)
    assert text.format(p=p) in msg
    assert "\n" not in msg
    if error is DataError:
        assert ";" in msg  # the part after it says what to do


# ---------------------------------------------------------------------- presets


def test_bundled_presets_found_through_resources():
    from edgeresnet._util.resources import resource_dir

    assert presets_path() == resource_dir("calibration") / "presets.toml"
    assert set(load_presets()) == {"raw", "unit", "symmetric", "caffe", "torch"}
    for p in load_presets().values():
        assert Preset(**p.to_dict()) == p and p.matches


PIXEL = np.array([[[[0, 128, 255]]]], dtype=np.uint8)


@pytest.mark.parametrize(
    "name, expected",
    [
        ("raw", [0, 128, 255]),
        ("unit", [0, 128 / 255, 1]),
        ("symmetric", [-1, 128 / 127.5 - 1, 1]),
        ("caffe", [255 - 103.939, 128 - 116.779, 0 - 123.68]),  # BGR order
        ("torch", [(0 - 0.485) / 0.229, (128 / 255 - 0.456) / 0.224, (1 - 0.406) / 0.225]),
    ],
)
def test_preset_values(name, expected):
    out = get_preset(name).apply(PIXEL)
    assert out.dtype == np.float32 and out.shape == PIXEL.shape
    np.testing.assert_allclose(out[0, 0, 0], expected, rtol=1e-6, atol=1e-6)


def test_preset_on_greyscale_uses_first_values():
    grey = np.array([[[[100]]]], dtype=np.uint8)
    assert get_preset("caffe").apply(grey)[0, 0, 0, 0] == pytest.approx(100 - 103.939, abs=1e-4)
    assert get_preset("torch").apply(grey)[0, 0, 0, 0] == pytest.approx((100 / 255 - 0.485) / 0.229, abs=1e-5)


def test_preset_refuses_floats_that_are_not_pixels():
    with pytest.raises(DataError, match="use --preset raw"):
        get_preset("torch").apply(np.full((1, 2, 2, 3), -0.5, np.float32))
    # raw passes anything through, as float32
    x = np.full((1, 2, 2, 3), -0.5, np.float64)
    assert get_preset("raw").apply(x).dtype == np.float32


@pytest.mark.parametrize(
    "kwargs, text",
    [
        ({"scale": 0}, "scale must be a positive number, got 0"),
        ({"std": [1, -2, 1]}, "std values must be positive"),
        ({"mean": [1, 2]}, "mean must be 1 or 3 finite numbers"),
        ({"mean": [float("nan")]}, "mean must be 1 or 3"),
        ({"channel_order": "gbr"}, "channel_order must be rgb or bgr, got 'gbr'"),
        ({"name": "my preset"}, "plain word"),
        ({"description": " "}, "needs a description"),
    ],
)
def test_preset_validation(kwargs, text):
    with pytest.raises(ConfigError, match=text.replace("(", r"\(").replace("[", r"\[")):
        Preset(**{"name": "p", "description": "d", **kwargs})


def test_unknown_preset_lists_choices():
    with pytest.raises(ConfigError, match="unknown preset 'imagenet'; choose one of raw, unit, symmetric, caffe, torch"):
        get_preset("imagenet")
    assert get_preset(" Torch ").name == "torch"


def test_preset_file_errors(tmp_path):
    bad = tmp_path / "p.toml"
    bad.write_text('[presets.x]\ndescription = "d"\noffset = 3\n')
    with pytest.raises(ConfigError, match="unknown key"):
        load_presets(bad)
    bad.write_text('[presets.x]\ndescription = "d"\nstd = [0]\n')
    with pytest.raises(ConfigError, match="std values must be positive"):
        load_presets(bad)


# ---------------------------------------------------------------------- records and the converter side


def test_record_round_trips_to_dict(tmp_path):
    _class_folder(tmp_path, {"a": 60, "b": 60})
    s = load_images(tmp_path, (8, 8, 3), samples=DEFAULT_SAMPLES, seed=4, resize="stretch")
    rec = calibration_record(s, get_preset("torch"), 4, "stretch")
    assert isinstance(rec, CalibrationRecord)
    d = rec.to_dict()
    assert d["count"] == 120 and d["requested"] == DEFAULT_SAMPLES and d["preset"] == "torch"
    assert d["per_class"] == {"a": 60, "b": 60} and d["resize"] == "stretch" and d["seed"] == 4
    # 120 >= MIN_RECOMMENDED_SAMPLES: no "only N samples" warning, just the shortfall
    assert 120 >= MIN_RECOMMENDED_SAMPLES
    assert d["warnings"] == [f"asked for {DEFAULT_SAMPLES} samples but the source has only 120"]


def test_in_memory_imageset_checks_and_subsets():
    images = np.arange(4 * 2 * 2 * 1, dtype=np.uint8).reshape(4, 2, 2, 1)
    s = ImageSet(images, labels=[1, 0, 1, 1], class_names=["a", "b"], source="mem")
    assert s.labels.dtype == np.int64 and s.shape == (2, 2, 1) and s.per_class() == {"a": 1, "b": 3}
    sub = s.subset([3, 1])
    np.testing.assert_array_equal(sub.images, images[[3, 1]])
    assert sub.labels.tolist() == [1, 0] and sub.class_names == ("a", "b") and not sub.balanced
    assert ImageSet(images.astype(np.float64)).images.dtype == np.float32
    for bad in ({"labels": [0, 1]}, {"labels": [0, 1, -1, 0]}, {"paths": ("x",)}):
        with pytest.raises(DataError):
            ImageSet(images, **bad)
    with pytest.raises(DataError, match="an ImageSet needs an \\(N, H, W, C\\) array"):
        ImageSet(images[0])


def test_representative_dataset_yields_single_float_samples():
    x = np.arange(5 * 2 * 2 * 3, dtype=np.uint8).reshape(5, 2, 2, 3)
    seen = []
    gen = representative_dataset(x, progress=lambda d, t: seen.append((d, t)))
    batches = list(gen())
    assert len(batches) == 5 and all(len(b) == 1 and b[0].shape == (1, 2, 2, 3) for b in batches)
    assert all(b[0].dtype == np.float32 for b in batches)
    np.testing.assert_array_equal(np.concatenate([b[0] for b in batches]), x)
    assert seen[-1] == (5, 5) and len(seen) == 5
    with pytest.raises(DataError):
        representative_dataset(np.zeros((0, 2, 2, 3)))


def _tiny_model(channels: int):
    from edgeresnet._util import tf as _tf

    keras = _tf.tf_keras()
    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 8, channels))
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu")(inp)
    x = keras.layers.GlobalAveragePooling2D()(x)
    out = keras.layers.Dense(3)(x)  # logits: a softmax would saturate on caffe-sized inputs and hide errors
    return keras.Model(inp, out, name="tiny")


def _assert_close(got, expected, frac):
    """Equal within ``frac`` of the spread of ``expected`` (logits vary in scale between presets)."""
    spread = float(expected.max() - expected.min())
    assert spread > 0
    np.testing.assert_allclose(got, expected, rtol=0, atol=frac * spread)


def _to_tflite(model, int8_calib=None):
    from edgeresnet._util import tf as _tf
    from edgeresnet.host.models.loading import LoadedModel

    tf = _tf.tf()
    converter = LoadedModel.from_keras(model, "tiny").tflite_converter()
    if int8_calib is not None:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = representative_dataset(int8_calib)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.int8
        converter.inference_output_type = tf.int8
    return converter.convert()


@pytest.mark.parametrize("preset, channels", [("caffe", 3), ("torch", 3), ("symmetric", 3), ("raw", 3), ("caffe", 1)])
def test_folded_model_in_tflite_matches_preset_then_model(preset, channels):
    from edgeresnet.host.calibration import fold_preprocessing
    from edgeresnet.device.runtime import TFLiteModel

    model = _tiny_model(channels)
    p = get_preset(preset)
    pixels = np.random.default_rng(1).integers(0, 256, (6, 8, 8, channels)).astype(np.uint8)
    expected = model.predict(p.apply(pixels), verbose=0)
    if channels == 3 and not p.is_identity:  # the check below can see a wrong channel order
        flipped = model.predict(p.apply(pixels[..., ::-1]), verbose=0)
        assert np.abs(flipped - expected).max() > 0.01 * float(expected.max() - expected.min())
    folded = fold_preprocessing(model, preset)
    assert folded.input_shape == (None, 8, 8, channels)
    _assert_close(folded.predict(pixels.astype(np.float32), verbose=0), expected, 1e-5)
    tfl = TFLiteModel(_to_tflite(folded))
    _assert_close(tfl.predict(pixels.astype(np.float32)), expected, 1e-5)
    assert ("CONV_2D" in tfl.ops()) and not any("FLEX" in op.upper() for op in tfl.ops())
    assert sum(op == "CONV_2D" for op in tfl.ops()) == (1 if p.is_identity else 2)


def test_folded_caffe_model_quantizes_to_int8():
    from edgeresnet.host.calibration import fold_preprocessing
    from edgeresnet.device.runtime import TFLiteModel

    model = _tiny_model(3)
    pixels = np.random.default_rng(2).integers(0, 256, (64, 8, 8, 3)).astype(np.float32)
    folded = fold_preprocessing(model, "caffe")
    tfl = TFLiteModel(_to_tflite(folded, int8_calib=pixels))
    assert tfl.input.dtype == np.int8 and tfl.input.scale == pytest.approx(1.0, rel=0.01)  # raw 0..255 pixels
    expected = model.predict(get_preset("caffe").apply(pixels), verbose=0)
    _assert_close(tfl.predict(pixels), expected, 0.03)

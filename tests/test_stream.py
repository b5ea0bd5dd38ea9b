"""Streamed data: same images, pixels and order as load_images; zoo names as MODEL on the CLI."""

import json

import numpy as np
import pytest
from PIL import Image

from edgeresnet.device.images import load_images, read_image, stream_images
from edgeresnet.device.presets import get_preset
from edgeresnet.errors import ConfigError, ModelLoadError


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """3 classes x 8 images of various sizes (so crop-resize runs), deterministic noise."""
    root = tmp_path_factory.mktemp("imgs")
    rng = np.random.default_rng(1)
    for c, name in enumerate(("cat", "dog", "owl")):
        (root / name).mkdir()
        for i in range(8):
            h, w = (40 + 3 * i, 48) if i % 2 else (32, 32)
            arr = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            arr[..., c] = 255 - 10 * i  # a class signal
            Image.fromarray(arr).save(root / name / f"{i}.png")
    return root


def test_stream_gives_load_images_pixels_labels_and_order(folder):
    loaded = load_images(folder, (32, 32, 3), samples=17, seed=3)
    stream = stream_images(folder, (32, 32, 3), samples=17, seed=3)
    assert stream.paths == loaded.paths and stream.class_names == loaded.class_names
    np.testing.assert_array_equal(stream.labels, loaded.labels)
    preset = get_preset("torch")
    xs, ys = zip(*stream.with_preset(preset).batches(batch_size=5))
    assert [len(x) for x in xs] == [5, 5, 5, 2]
    np.testing.assert_array_equal(np.concatenate(xs), preset.apply(loaded.images))  # bit-identical inputs
    np.testing.assert_array_equal(np.concatenate(ys), loaded.labels)
    # the device-side single-image reader gives the same pixels
    np.testing.assert_array_equal(read_image(stream.paths[4], (32, 32, 3)), loaded.images[4])
    # predict keeps only outputs, in stream order
    out = stream.with_preset(preset).predict(lambda x: x.mean(axis=(1, 2)), batch_size=4)
    np.testing.assert_allclose(out, preset.apply(loaded.images).mean(axis=(1, 2)), rtol=1e-6)


def test_stream_excludes_like_load_images(folder):
    calib = load_images(folder, (32, 32, 3), samples=6, seed=0)
    rest = stream_images(folder, (32, 32, 3), seed=1, exclude=calib.paths)
    assert len(rest) == 24 - 6 and not set(rest.paths) & set(calib.paths)


def test_zoo_weights_load_by_name_and_name_the_first_mismatch(tmp_path):
    from edgeresnet.host.models import build_model
    from edgeresnet.host.models.zoo import build_zoo_model, load_weights_by_name, zoo_spec

    src = build_model("resnet8", classes=4)
    path = tmp_path / "w.h5"
    src.save_weights(str(path))
    got = build_zoo_model(zoo_spec("resnet8"), weights=str(path))  # head size taken from the file
    x = np.random.default_rng(0).random((2, 32, 32, 3), np.float32) * 255
    np.testing.assert_array_equal(got(x).numpy(), src(x).numpy())
    new_head = build_zoo_model(zoo_spec("resnet8"), weights=str(path), classes=7)
    assert new_head.output_shape[-1] == 7
    np.testing.assert_array_equal(new_head.get_layer("conv1_conv").get_weights()[0], src.get_layer("conv1_conv").get_weights()[0])
    other = build_model("resnet8", classes=4, input_shape=(32, 32, 1))  # first conv has 1 input channel
    with pytest.raises(ModelLoadError, match="layer conv1_conv has weights"):
        load_weights_by_name(other, path)
    with pytest.raises(ConfigError, match="did you mean resnet50"):
        zoo_spec("resnt50")


@pytest.mark.parametrize(
    "args, message",
    [
        (["resnt50", "--int8"], "did you mean resnet50"),
        (["resnet50", "--int8", "--calib", "{d}"], "random weights"),
        (["resnet8", "--classes", "3", "--calib", "{d}"], "add --train"),
        (["{d}/cat/0.png", "--weights", "{d}/cat/1.png", "--calib", "{d}"], "--weights applies to a built-in"),
    ],
)
def test_zoo_bad_input_is_one_line_and_writes_nothing(folder, tmp_path, args, message, run_cli):
    out = tmp_path / "out"
    code, _, err = run_cli(["convert", *[a.format(d=folder) for a in args], "--out", str(out)])
    assert code != 0 and message in err, err
    assert err.strip().count("\n") == 0 and err.startswith("error: ")
    assert not out.exists() and list(tmp_path.iterdir()) == []


@pytest.mark.slow  # end to end: a report sweep (four conversions, each run and timed); the refusals stay quick
def test_report_times_a_zoo_model_without_weights_and_measures_no_accuracy(tmp_path, run_cli):
    """`report resnet8` with random weights: every variant converted, run and timed; accuracy not measured (said
    why, in every format), no drift verdict."""
    from edgeresnet.report.schema import validate_report
    from edgeresnet.device.runtime import TFLiteModel

    out = tmp_path / "out"
    res = run_cli(["report", "resnet8", "--input-size", "16", "--target", "cpu", "--target", "edgetpu",
                   "--bench-repeats", "3", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "accuracy not measured: resnet8 has random weights" in res.output
    report = json.loads((out / "report.json").read_text())
    validate_report(report)
    assert report["evaluation"]["count"] == 0 and "random weights" in report["evaluation"]["not_measured"]
    assert report["max_drop"] is None and report["float"]["top1"] is None
    assert {v["precision"] for v in report["variants"]} == {"int8", "fp32", "dynamic", "int16x8"}
    for v in report["variants"]:
        assert v["status"] == "ok" and v["top1"] is None and v["agreement"] is None and v["drop_pts"] is None
        assert v["latency"]["median_ms"] > 0 and v["size_bytes"] == (out / v["name"]).stat().st_size
        assert TFLiteModel((out / v["name"]).read_bytes()).input.shape[1:3] == (16, 16)
    assert "accuracy: not measured: resnet8 has random weights" in (out / "report.md").read_text()
    assert "not measured" in (out / "report.html").read_text()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--eval", "{d}"], "--eval asks for accuracy"),
        (["--max-drop", "1"], "--max-drop asks for accuracy"),
    ],
)
def test_report_of_a_zoo_model_without_weights_refuses_accuracy_work(folder, tmp_path, args, message, run_cli):
    out = tmp_path / "out"
    code, _, err = run_cli(["report", "resnet8", *[a.format(d=folder) for a in args], "--out", str(out)])
    assert code != 0 and message in err and "random weights" in err, err
    assert err.strip().count("\n") == 0 and err.startswith("error: ")
    assert list(tmp_path.iterdir()) == []


def test_bench_times_a_zoo_model_without_weights(tmp_path, run_cli):
    res = run_cli(["bench", "resnet8", "--input-size", "16", "--precision", "int8", "--repeats", "3",
                   "--warmup", "1", "--json"])
    assert res.exit_code == 0, res.output
    result = json.loads(res.output[res.output.index("{"):])
    assert result["model"] == "resnet8 (int8, random weights: timing only)"
    assert result["input_shape"] == [1, 16, 16, 3] and result["input_dtype"] == "uint8"
    assert result["repeats"] == 3 and result["median_ms"] > 0 and result["size_bytes"] > 50_000
    bad = run_cli(["bench", str(tmp_path / "m.tflite"), "--precision", "int8"])
    assert bad.exit_code == 2 and "--precision applies to a built-in architecture" in bad.output


@pytest.mark.slow  # end to end: a new head, a pruning and a QAT fine-tune (each in a child), three conversions
def test_zoo_transfer_learning_from_the_command_line(folder, tmp_path, run_cli):
    """resnet8 + a new 3-class head fine-tuned on a folder (streamed), pruned, quantization-aware trained, int8,
    verified: one command. At 96 px every fine-tuning runs in a child process, and the report says so."""
    from edgeresnet.host.models import build_model
    from edgeresnet.device.runtime import TFLiteModel

    weights = tmp_path / "resnet8.h5"
    build_model("resnet8", classes=10).save_weights(str(weights))
    out = tmp_path / "out"
    res = run_cli([
        "convert", "resnet8", "--weights", str(weights), "--classes", "3", "--input-size", "96", "--train", str(folder),
        "--epochs", "2", "--batch-size", "8", "--prune", "0.5", "--qat", "--int8", "--calib", str(folder),
        "--calib-samples", "12", "--eval", str(folder), "--out", str(out),
    ])
    assert res.exit_code == 0, res.output
    report = json.loads((out / "report.json").read_text())
    assert report["model"]["classes"] == 3 and report["model"]["weights"] == str(weights)
    assert report["model"]["transfer"]["frozen_backbone_epochs"] == 1 and report["model"]["transfer"]["train_samples"] == 24
    assert report["model"]["transfer"]["process"] == "child" and report["prune"]["process"] == "child"
    pruned = next(v for v in report["variants"] if v["name"].startswith("resnet8_pruned50_cpu"))  # the same stream
    assert pruned["prune"]["train_samples"] == 24 and pruned["weight_sparsity"] > 0.4
    pqat = next(v for v in report["variants"] if v["name"].startswith("resnet8_pruned50_qat_cpu"))
    assert pqat["fine_tune"]["process"] == "child" and pqat["fine_tune"]["after_pruning"]["process"] == "child"
    assert pqat["weight_sparsity"] > 0.4  # the zeros survived quantization-aware training in the child
    assert report["evaluation"]["count"] == 24
    model = TFLiteModel((out / report["variants"][0]["path"].split("/")[-1]).read_bytes())
    assert model.output.shape[-1] == 3
    assert (out / "labels.txt").read_text().split() == ["cat", "dog", "owl"]


def test_stream_is_load_images_on_real_cifar(shared_data):
    """The 1,000 CIFAR-10 test photographs: same files, order, labels and model inputs either way."""
    folder = shared_data / "cifar10" / "test"
    loaded = load_images(folder, (32, 32, 3), seed=0)
    stream = stream_images(folder, (32, 32, 3), seed=0)
    assert stream.paths == loaded.paths and len(stream) == 1000
    preset = get_preset("unit")
    x = np.concatenate([b for b, _ in stream.with_preset(preset).batches(batch_size=64)])
    np.testing.assert_array_equal(x, preset.apply(loaded.images))


@pytest.mark.slow
def test_zoo_transfer_learning_on_real_cifar(shared_data, tmp_path, run_cli):
    """resnet8 from the zoo, a new 10-class head, two epochs on 5,000 CIFAR photographs (streamed):
    the fine-tuned float model is far above chance on the held-out test set, and the int8 model follows it."""
    out = tmp_path / "out"
    cifar = shared_data / "cifar10"
    main_args = ["convert", "resnet8", "--classes", "10", "--train", cifar / "train", "--epochs", "2",
                 "--int8", "--calib", cifar / "train", "--eval", cifar / "test", "--out", out]
    code, _, err = run_cli(main_args)
    assert code == 0, err
    report = json.loads((out / "report.json").read_text())
    assert report["model"]["transfer"]["train_samples"] == 5000
    assert report["float"]["top1"] > 20.0  # chance is 10 %; measured 25.5 (random init, one head-only epoch)
    assert abs(report["variants"][0]["drop_pts"]) < 5.0

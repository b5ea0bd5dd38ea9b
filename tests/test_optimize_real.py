"""`edgeresnet optimize` on real models (slow): the MLPerf ResNet-8 acceptance run, and the built-in resnet8's
input-size family under memory and download budgets, with resume.

In a file of their own so that pytest-xdist (--dist loadfile) can run them beside tests/test_optimize.py.
"""

from __future__ import annotations

import json
import zlib

import numpy as np
import pytest

from edgeresnet.host.optimize import Budgets, OptimizeOptions


@pytest.mark.slow
def test_resnet8_at_60_percent_of_the_int8_download_beats_uniform_sparsity(run_cli, shared_data, resnet8_h5, tmp_path):
    """The acceptance run: the real MLPerf ResNet-8, --train/--eval from the shared CIFAR-10, 3 epochs."""
    from edgeresnet.device.images import load_images
    from edgeresnet.device.runtime import TFLiteModel

    from edgeresnet.device.sparsity import compressed_size
    from edgeresnet.host.optimize.evaluate import convert_int8, load_search_data

    train, test = shared_data / "cifar10" / "train", shared_data / "cifar10" / "test"
    opts = OptimizeOptions(model=str(resnet8_h5), train=str(train), eval=str(test), budgets=Budgets(size=1))
    search_data = load_search_data(opts)
    budget = int(0.6 * compressed_size(convert_int8(search_data.loaded.model, opts, search_data.calib)))
    out = tmp_path / "opt"
    code, _, err = run_cli(["optimize", resnet8_h5, "--train", train, "--eval", test, "--max-download", budget,
                            "--out", out])
    assert code == 0, err
    summary = json.loads((out / "optimize.json").read_text())
    plain = next(c for c in summary["candidates"] if c["settings"]["family"] == "int8")
    assert budget == int(0.6 * plain["measured"]["download"])  # the same plain int8 model as the search's
    chosen = next(c for c in summary["candidates"] if c["key"] == summary["chosen"])
    data = (out / "optimized.tflite").read_bytes()
    assert len(zlib.compress(data, 9)) == chosen["measured"]["download"] <= budget
    ev = load_images(test, (32, 32, 3))
    pred = TFLiteModel(data).predict(ev.images.astype(np.float32)).argmax(-1)
    assert 100.0 * float(np.mean(pred == ev.labels)) == pytest.approx(chosen["score"], abs=1e-6)
    # the uniform-sparsity variant (fine-tuned with the same epochs) of no larger zlib size than the chosen model
    from edgeresnet.host.optimize.candidates import LayerInfo, candidate
    from edgeresnet.host.optimize.evaluate import evaluate
    from edgeresnet.host.optimize.search import _Prober, find_level

    layers = [LayerInfo(**row) for row in summary["layers"]]
    plain_model = (out / "candidates" / f"{plain['key']}.tflite")
    plain_bytes = plain_model.read_bytes() if plain_model.is_file() else convert_int8(
        search_data.loaded.model, opts, search_data.calib)
    level = find_level(_Prober(plain_bytes, layers), 0.0, Budgets(download=chosen["measured"]["download"]))
    for _ in range(4):
        _, uniform = evaluate(candidate("uniform", layers, level), opts, search_data)
        if uniform["measured"]["download"] <= chosen["measured"]["download"]:
            break
        level += 0.01
    assert uniform["measured"]["download"] <= chosen["measured"]["download"]
    assert chosen["score"] >= uniform["score"] + 1.0, (chosen, uniform)


@pytest.fixture(scope="module")
def zoo_resnet8(shared_data, tmp_path_factory):
    """resnet8 (the smallest CIFAR-style zoo ResNet) with seeded weights in a .h5, and --train: 20 CIFAR-10 training
    images a class, linked (not copied) from the shared data."""
    from edgeresnet._util import tf as _tf
    from edgeresnet.host.models import build_model

    root = tmp_path_factory.mktemp("zoo")
    _tf.tf_keras().utils.set_random_seed(0)
    build_model("resnet8", classes=10).save_weights(str(root / "resnet8.h5"))
    for folder in sorted((shared_data / "cifar10" / "train").iterdir()):
        (root / "train" / folder.name).mkdir(parents=True)
        for image in sorted(folder.iterdir())[:20]:
            (root / "train" / folder.name / image.name).symlink_to(image)
    return {"weights": root / "resnet8.h5", "train": root / "train", "eval": shared_data / "cifar10" / "test"}


@pytest.mark.slow
def test_a_zoo_model_over_memory_and_download_budgets_gets_a_smaller_pruned_input_that_meets_them_and_resumes(
        run_cli, zoo_resnet8, tmp_path, monkeypatch):
    from edgeresnet.device.images import load_images
    from edgeresnet.device.runtime import TFLiteModel
    from edgeresnet.device.sparsity import tflite_weight_sparsity
    from edgeresnet.host.models.zoo import zoo_spec
    from edgeresnet.host.optimize import inputs, search
    from edgeresnet.host.optimize.evaluate import convert_int8, load_search_data

    opts = OptimizeOptions(model="resnet8", weights=str(zoo_resnet8["weights"]), train=str(zoo_resnet8["train"]),
                           eval=str(zoo_resnet8["eval"]), eval_samples=100, calib_samples=32, threads=1,
                           int8_method="minmax", budgets=Budgets(memory=2**30))
    data = load_search_data(opts)
    budget = int(0.8 * inputs.probe(opts, data, 32)["memory"])  # the plain int8 model's, less 20 %
    download = int(0.8 * len(zlib.compress(convert_int8(data.loaded.model, opts, data.calib), 9)))  # and its zlib size
    monkeypatch.setattr(search, "plan_candidates", lambda *a, **k: [])  # the input family alone (and int8)
    monkeypatch.setattr(search, "plan_mixed", lambda *a, **k: [])
    monkeypatch.setattr(search, "plan_on_best", lambda *a, **k: [])
    out = tmp_path / "opt"
    common = ["optimize", "resnet8", "--weights", zoo_resnet8["weights"], "--train", zoo_resnet8["train"], "--eval",
              zoo_resnet8["eval"], "--eval-samples", "100", "--calib-samples", "32", "--epochs", "1", "--batch-size",
              "32", "--int8-method", "minmax", "--threads", "1", "--max-memory", budget, "--max-download", download,
              "--out", out]
    # 1. killed while fine-tuning the input candidate: the plain model and the probes are in the resume state
    real = search.evaluate

    def dies_on_input(cand, *a, **k):
        if cand.input_size:
            raise KeyboardInterrupt
        return real(cand, *a, **k)

    monkeypatch.setattr(search, "evaluate", dies_on_input)
    code, _, err = run_cli(common)
    assert code != 0 and not out.exists()
    # 2. started again: nothing probed or built twice; the input candidate is built, measured and chosen
    probed = []
    monkeypatch.setattr(search, "evaluate", real)
    monkeypatch.setattr(inputs, "probe", lambda *a, **k: probed.append(a[2]))
    code, _, err = run_cli(common)
    assert code == 0, err
    assert "reusing 1 finished candidate(s)" in err and probed == []
    summary = json.loads((out / "optimize.json").read_text())
    plain, *family = summary["candidates"]  # one measured over the download budget is rebuilt sparser, same size
    resized = next(c for c in family if c["key"] == summary["chosen"])
    assert all(c["settings"]["input_size"] == resized["settings"]["input_size"] for c in family)
    size = resized["settings"]["input_size"]
    assert plain["settings"]["family"] == "int8" and resized["settings"]["family"] == "input" and size < 32
    assert f"-{size}px-" in resized["key"] and summary["chosen"] == resized["key"]
    assert resized["input_shape"] == summary["input_shape"] == [size, size, 3] and resized["fine_tuned_epochs"] == 1
    spec = zoo_spec("resnet8")
    assert inputs.macs(spec, size, 3, 10) < inputs.macs(spec, 32, 3, 10)
    assert resized["measured"]["memory"] <= budget < plain["measured"]["memory"]
    # a smaller input leaves the file as it is: the download budget made the search prune it too
    level = resized["settings"]["level"]
    assert level > 0 and f"+ uniform {level:.2f}" in resized["label"] and "pruned to uniform" in summary["input"]
    assert resized["measured"]["download"] <= download < plain["measured"]["download"]
    assert tflite_weight_sparsity((out / "optimized.tflite").read_bytes())["fraction"] > 0.5 * level
    assert f"{size}x{size}" in summary["input"] and f"input {size}x{size}x3" in (out / "optimize.md").read_text()
    # the output model really takes that size, and scores what the search said on --eval at that size
    model = TFLiteModel((out / "optimized.tflite").read_bytes())
    assert tuple(model.input.shape) == (1, size, size, 3)
    ev = load_images(zoo_resnet8["eval"], (size, size, 3), samples=100)
    pred = model.predict(ev.images.astype(np.float32)).argmax(-1)
    assert 100.0 * float(np.mean(pred == ev.labels)) == pytest.approx(resized["score"], abs=1e-6)

"""The public Python API (``import edgeresnet``): each function on real models, and no TensorFlow on import."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import edgeresnet
from edgeresnet.device.runtime import TFLiteModel

REPO = Path(__file__).resolve().parents[1]
PUBLIC = {"convert", "report", "optimize", "inspect", "predict", "Classifier", "benchmark", "ConvertOptions",
          "EdgeResNetError", "__version__"}


@pytest.fixture(scope="module")
def converted(tmp_path_factory) -> dict:
    """``edgeresnet.convert(int8=True)``: the built-in reference model, cpu int8, verified on its held-out digits."""
    out = tmp_path_factory.mktemp("api") / "out"
    run = edgeresnet.convert(int8=True, out=out)
    (variant,) = run.variants
    return {"run": run, "variant": variant, "model": Path(variant.path), "out": out}


def test_convert_returns_the_report_of_a_variant_that_ran_in_the_interpreter(converted):
    run, v = converted["run"], converted["variant"]
    assert v.status.value == "ok" and v.target == "cpu" and v.precision == "int8"
    assert v.interpreter.startswith("ai-edge-litert")
    assert run.evaluation["count"] == 500 and 90.0 < v.drift.top1 <= 100.0  # measured 99.2 on the 500 digits
    assert converted["model"].parent == converted["out"] and converted["model"].stat().st_size == v.size_bytes
    written = json.loads((converted["out"] / "report.json").read_text())
    assert written["variants"][0]["top1"] == v.drift.top1  # the returned report is the one written


def test_convert_raises_the_projects_errors_and_prints_nothing(tmp_path, capsys):
    with pytest.raises(edgeresnet.ConfigError, match="unknown option 'int9'"):
        edgeresnet.convert(int9=True, out=tmp_path / "a")
    with pytest.raises(edgeresnet.TargetError, match="npu"):
        edgeresnet.convert(int8=True, targets="npu", out=tmp_path / "b")
    with pytest.raises(edgeresnet.ModelLoadError, match="no such file"):
        edgeresnet.convert(tmp_path / "missing.h5", int8=True, out=tmp_path / "c")
    with pytest.raises(edgeresnet.ConfigError, match="--cluster takes 2 to 256"):
        edgeresnet.convert(int8=True, cluster=300, out=tmp_path / "d")
    with pytest.raises(edgeresnet.ConfigError, match="cluster must be a ClusterConfig"):
        edgeresnet.convert(int8=True, cluster="8", out=tmp_path / "e")
    with pytest.raises(edgeresnet.ConfigError, match="nested models"):  # the reference ResNet-8 wraps its body
        edgeresnet.convert(int8=True, cluster=8, out=tmp_path / "f")
    assert capsys.readouterr() == ("", "")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow  # a sweep: two conversions, each evaluated and timed (~25 s on 2 busy cores)
def test_report_sweeps_the_precisions_of_a_target(tmp_path):
    out = tmp_path / "sweep"
    run = edgeresnet.report(targets="gpu", out=out, bench_repeats=2)
    assert sorted(v.precision for v in run.variants) == ["fp16", "fp32"]
    for v in run.variants:
        assert v.status.value == "ok" and v.drift.top1 > 90.0, v.to_dict()
        assert v.latency["repeats"] == 2 and v.latency["median_ms"] > 0
    assert {"report.json", "report.md", "report.csv", "report.html", "accuracy_vs_size.png"} <= {
        p.name for p in out.iterdir()}


def _download(data: bytes) -> int:
    import zlib

    return len(zlib.compress(data, 9))


@pytest.mark.slow  # a real search on the tiny model: fine-tuned pruned and clustered candidates (~80 s on 2 busy cores)
def test_optimize_returns_a_model_within_the_budget_that_runs(tiny_model_h5, tiny_data, tmp_path, capsys):
    from edgeresnet.device.images import load_images
    from edgeresnet.device.presets import get_preset
    from edgeresnet.host.converter import ConversionSpec, convert
    from edgeresnet.host.models.loading import load_model

    unit = get_preset("unit")
    calib = unit.apply(load_images(tiny_data["calib"], (16, 16, 3), samples=32).images)
    plain = convert(load_model(tiny_model_h5).tflite_converter, ConversionSpec("int8", "int8", "minmax"), calib).model
    budget = int(0.8 * _download(plain))  # the plain int8 model is over it: pruning or clustering must pay
    out = tmp_path / "opt"
    notes = []
    result = edgeresnet.optimize(tiny_model_h5, train=tiny_data["calib"], eval=tiny_data["eval"], out=out,
                                 max_download=budget, preset="unit", epochs=1, batch_size=16, int8_method="minmax",
                                 calib_samples=32, target="edgetpu", notify=notes.append)  # edgetpu: no mixed family
    assert capsys.readouterr() == ("", "")  # the library never prints; notices went to notify
    chosen = result.chosen
    assert result.primary == "download" and result.why
    data = (out / "optimized.tflite").read_bytes()
    assert _download(data) == chosen["measured"]["download"] <= budget < _download(plain)
    assert len(data) == chosen["measured"]["size"]
    ev = load_images(tiny_data["eval"], (16, 16, 3))
    top1 = 100.0 * float(np.mean(TFLiteModel(data).predict(unit.apply(ev.images)).argmax(-1) == ev.labels))
    assert top1 == pytest.approx(chosen["score"], abs=1e-6) and top1 > 25.0  # 4 classes: better than chance
    records = {c["key"]: c for c in result.candidates}
    assert result.front and set(result.front) <= set(records)
    for key in result.front:  # each front model is the file its record measured
        assert _download((out / "candidates" / f"{key}.tflite").read_bytes()) == records[key]["measured"]["download"]
    assert json.loads((out / "optimize.json").read_text())["chosen"] == chosen["key"]


def test_optimize_raises_the_projects_errors_and_prints_nothing(tiny_model_h5, tiny_data, tmp_path, capsys):
    common = {"train": tiny_data["calib"], "eval": tiny_data["eval"]}
    with pytest.raises(edgeresnet.ConfigError, match="--max-download"):
        edgeresnet.optimize(tiny_model_h5, **common, out=tmp_path / "a", max_download=-5)
    with pytest.raises(edgeresnet.ConfigError, match="at least one budget"):
        edgeresnet.optimize(tiny_model_h5, **common, out=tmp_path / "b")
    with pytest.raises(edgeresnet.TargetError, match="tpu"):
        edgeresnet.optimize(tiny_model_h5, **common, out=tmp_path / "c", max_size=100_000, target="tpu")
    with pytest.raises(edgeresnet.DataError, match="--train"):
        edgeresnet.optimize(tiny_model_h5, train=tmp_path / "none", eval=tiny_data["eval"], out=tmp_path / "d",
                            max_size=100_000)
    with pytest.raises(edgeresnet.ModelLoadError, match="no such file"):
        edgeresnet.optimize(tmp_path / "missing.h5", **common, out=tmp_path / "e", max_size=100_000)
    for bad in ({"max_sise": 100_000}, {"budgets": None, "max_size": 100_000}):  # a typo; a field the API sets
        with pytest.raises(edgeresnet.ConfigError, match=f"unknown option {next(iter(bad))!r}.*max_size"):
            edgeresnet.optimize(tiny_model_h5, **common, out=tmp_path / "f", **bad)
    assert capsys.readouterr() == ("", "")
    assert list(tmp_path.iterdir()) == []


def test_inspect_a_converted_model(converted):
    info = edgeresnet.inspect(converted["model"])
    assert info.precision == "int8" and info.size_bytes == converted["variant"].size_bytes
    assert info.verdicts["cpu"].ok and info.verdicts["edgetpu"].ok
    assert info.inputs[0]["shape"] == list(TFLiteModel(converted["model"].read_bytes()).input.shape)
    assert info.metadata["labels"] == [str(d) for d in range(10)]
    from_bytes = edgeresnet.inspect(converted["model"].read_bytes(), gpu=False, runtimes=False)
    assert from_bytes.op_histogram == info.op_histogram


@pytest.fixture(scope="module")
def digit_files(converted, tmp_path_factory) -> tuple[list, list]:
    """The first 12 held-out digits the host evaluated on, as PNG files, and their labels."""
    from PIL import Image

    from edgeresnet.host import demo

    held_out = demo.digits_images("eval")
    root = tmp_path_factory.mktemp("digits")
    files = []
    for i, img in enumerate(held_out.images[:12]):
        files.append(root / f"{i:02d}.png")
        Image.fromarray(img[..., 0], "L").save(files[-1])
    return files, [str(label) for label in held_out.labels[:12]]


def test_classifier_and_predict_on_digit_images(converted, digit_files):
    files, labels = digit_files
    results = edgeresnet.predict(converted["model"], files, k=3)
    assert [r.image for r in results] == [str(f) for f in files]
    top1 = [r.top[0][1] for r in results]
    assert sum(p == t for p, t in zip(top1, labels)) >= 11, (top1, labels)  # the model is 99.2 % right
    clf = edgeresnet.Classifier(converted["model"])
    scores = clf.scores(np.stack([clf.read(f) for f in files]))
    assert [clf.name_of(int(i)) for i in scores.argmax(axis=1)] == top1
    assert [len(r.top) for r in edgeresnet.predict(clf, files[0], k=2)] == [2]
    with pytest.raises(edgeresnet.ConfigError, match="preset"):
        edgeresnet.predict(clf, files, preset="unit")


def test_benchmark_times_two_runs(converted):
    result = edgeresnet.benchmark(converted["model"], repeats=2, warmup=1)
    assert result.repeats == 2 and len(result.times_ms) == 2 and result.median_ms > 0
    assert result.size_bytes == converted["variant"].size_bytes
    with pytest.raises(edgeresnet.ConfigError, match="repeats"):
        edgeresnet.benchmark(converted["model"], repeats=0)


def test_the_index_lists_the_api():
    assert PUBLIC <= set(edgeresnet.__all__) <= set(dir(edgeresnet))
    for name in edgeresnet.__all__:
        value = getattr(edgeresnet, name)
        if callable(value) and name != "report":
            assert value.__doc__, name
    assert callable(edgeresnet.report) and edgeresnet.report.RunReport  # the package, callable
    assert issubclass(edgeresnet.DriftBudgetExceeded, edgeresnet.EdgeResNetError)
    with pytest.raises(AttributeError):
        edgeresnet.no_such_name  # noqa: B018


_NO_TF = """
import json, sys
for name in ("tensorflow", "tf_keras", "keras", "tensorflow_model_optimization"):
    sys.modules[name] = None  # `import tensorflow` now raises ImportError
import edgeresnet
info = edgeresnet.inspect(sys.argv[1], gpu=False, runtimes=False)
print(json.dumps({"classifier": edgeresnet.Classifier.__name__, "precision": info.precision,
                  "callable": [callable(getattr(edgeresnet, n)) for n in ("predict", "benchmark", "report")],
                  "tf": [n for n in sys.modules if n.split(".")[0] == "tensorflow" and sys.modules[n] is not None]}))
"""


def test_import_and_device_api_without_tensorflow(shared_data):
    model = shared_data / "mlperf-tiny-resnet8" / "pretrainedResnet_quant.tflite"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    res = subprocess.run([sys.executable, "-c", _NO_TF, str(model)], capture_output=True, text=True, env=env,
                         timeout=120)
    assert res.returncode == 0, res.stderr
    got = json.loads(res.stdout.strip().splitlines()[-1])
    assert got == {"classifier": "Classifier", "precision": "int8", "callable": [True, True, True], "tf": []}

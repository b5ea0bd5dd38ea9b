"""Quantization-aware fine-tuning (--qat): full-int8 output for every int8 target, zeros kept, bad input."""

import json
from pathlib import Path

import numpy as np
import pytest

from edgeresnet._util import tf as _tf
from edgeresnet.errors import ConfigError, QATError
from edgeresnet.host.models import build_model
from edgeresnet.host.training.qat import QATConfig, check_quantizable, convert_qat, quantize_aware_train
from edgeresnet.device.runtime import TFLiteModel
from edgeresnet.device.tflite_graph import parse_tflite

# minmax keeps the post-training side cheap; QAT's own conversion does not calibrate.
TINY = ["--preset", "unit", "--calib-samples", "60", "--epochs", "1", "--batch-size", "32", "--int8-method", "minmax"]


def _float_tensors(data: bytes) -> list:
    return [t.name for t in parse_tflite(data).tensors if t.dtype == "float32"]


@pytest.fixture(scope="module")
def qat_run(tmp_path_factory, tiny_model_h5, tiny_data, run_cli):
    """`convert --qat` on the tiny ResNet for cpu and edgetpu: (report dict, output folder)."""
    out = tmp_path_factory.mktemp("qat") / "out"
    code, _, _ = run_cli([
        "convert", tiny_model_h5, "--int8", "--qat", "--train", tiny_data["calib"], "--calib", tiny_data["calib"],
        "--eval", tiny_data["eval"], "--target", "cpu", "--target", "edgetpu", "--out", out, *TINY,
    ])
    assert code in (None, 0), f"convert --qat exited {code}"
    return json.loads((out / "report.json").read_text()), out


@pytest.mark.slow  # a QAT fine-tune (13 s); the quick loop keeps QAT's plan and bad-input tests
def test_qat_emits_full_int8_for_cpu_and_edgetpu_next_to_ptq(qat_run, tiny_model_h5, tiny_data):
    report, out = qat_run
    by = {(v["target"], (v.get("fine_tune") or {}).get("method")): v for v in report["variants"]}
    assert set(by) == {("cpu", None), ("edgetpu", None), ("cpu", "qat"), ("edgetpu", "qat")}
    from edgeresnet.device.images import load_images
    from edgeresnet.host.models import load_model

    loaded = load_model(tiny_model_h5)
    x = load_images(tiny_data["eval"], (16, 16, 3)).images.astype(np.float32) / 255.0
    want = np.argmax(loaded.predict(x), -1)
    for target in ("cpu", "edgetpu"):
        v, io = by[(target, "qat")], by[(target, None)]["io_type"]  # the io the target asks for, as PTQ
        assert target != "edgetpu" or io == "uint8"
        assert v["status"] == "ok" and v["precision"] == "int8" and v["io_type"] == io
        assert v["int8_method"] == "qat" and "_qat_" in v["name"]
        ft = v["fine_tune"]
        assert ft["epochs"] == 1 and ft["learning_rate"] == pytest.approx(1e-4) and ft["batch_size"] == 32
        assert ft["schedule"] == "cosine"  # the default recipe, recorded
        assert ft["data"] == str(tiny_data["calib"]) and ft["train_samples"] == 120
        data = (out / Path(v["path"]).name).read_bytes()
        assert _float_tensors(data) == [], f"{target}: float tensors left"
        tfl = TFLiteModel(data)
        assert tfl.input.dtype == np.dtype(io) and tfl.output.dtype == np.dtype(io)
        got = np.argmax(tfl.predict(x), -1)
        # The report's numbers are the interpreter's: recompute them from the emitted file.
        assert v["agreement"] == pytest.approx(100 * np.mean(got == want), abs=0.01)
        # Fine-tuning may move the tiny model's decisions, but not make it worse than the float one by much.
        assert v["top1"] >= report["float"]["top1"] - 10, (v["top1"], report["float"]["top1"])
        assert v["checks"], "the target checks did not run"
        assert all(c.get("ok") is not False for c in v["checks"].values()), v["checks"]
    # The Edge TPU op mapping of the QAT model is the PTQ model's.
    ptq_tpu = by[("edgetpu", None)]["checks"]["edgetpu"]
    qat_tpu = by[("edgetpu", "qat")]["checks"]["edgetpu"]
    assert qat_tpu.get("summary") == ptq_tpu.get("summary")
    md = (out / "report.md").read_text()
    assert "qat" in md.lower()


@pytest.mark.slow  # a full report sweep with three fine-tunes (prune, QAT, PQAT): slow on 2 shared cores
def test_report_sweeps_qat_and_pqat_side_by_side_and_pqat_keeps_the_zeros(tmp_path, tiny_model_h5, tiny_data, run_cli):
    out = tmp_path / "out"
    code, _, err = run_cli([
        "report", tiny_model_h5, "--sparsity", "0.6", "--qat", "--train", tiny_data["calib"], "--target", "cpu",
        "--calib", tiny_data["calib"], "--eval", tiny_data["eval"], "--no-latency", "--out", out, *TINY,
    ])
    assert code == 0, err
    report = json.loads((out / "report.json").read_text())
    methods = [(v["precision"], v.get("prune") is not None, (v.get("fine_tune") or {}).get("method")) for v in report["variants"]]
    assert ("int8", False, None) in methods and ("int8", False, "qat") in methods
    assert ("int8", True, "prune") in methods and ("int8", True, "pqat") in methods
    by = {m: v for m, v in zip(methods, report["variants"])}
    pruned, pqat = by[("int8", True, "prune")], by[("int8", True, "pqat")]
    assert pruned["weight_sparsity"] > 0.4
    assert abs(pqat["weight_sparsity"] - pruned["weight_sparsity"]) <= 0.01  # the zeros survive QAT
    assert pqat["fine_tune"]["after_pruning"]["method"] == "prune" and pqat["prune"]["sparsity"] == 0.6
    # Method "pqat" is tfmot's prune-preserving scheme (QATResult.to_dict); after pruning the default rate is
    # pruning's own, without pruning QAT's.
    assert pqat["fine_tune"]["learning_rate"] == pytest.approx(3e-4)
    assert by[("int8", False, "qat")]["fine_tune"]["learning_rate"] == pytest.approx(1e-4)
    assert _float_tensors((out / Path(pqat["path"]).name).read_bytes()) == []
    # Same table, CSV and plot labels, told apart.
    csv_text = (out / "report.csv").read_text()
    assert "cpu/int8 QAT" in csv_text and "cpu/int8 pruned 60% QAT" in csv_text and "PQAT 1 ep" in csv_text
    assert "PQAT 1 ep" in (out / "report.html").read_text() and "QAT 1 ep" in (out / "report.md").read_text()
    assert (out / "accuracy_vs_size.png").stat().st_size > 0


def test_convert_plan_with_prune_and_qat_fine_tunes_the_pruned_model():
    from edgeresnet.host.pipeline import ConvertOptions
    from edgeresnet.host.pipeline.plan import convert_plan as _plan
    from edgeresnet.host.training.prune import PruneConfig

    opts = ConvertOptions(model="m.h5", targets=("cpu", "edgetpu", "gpu"), int8=True, prune=PruneConfig(0.5),
                          train="t", qat=QATConfig())
    plan = [(v.target.name, v.spec.precision, v.spec.method, v.sparsity, v.qat) for v in _plan(opts)]
    qat = [p for p in plan if p[4]]
    assert qat == [("cpu", "int8", "qat", 0.5, True), ("edgetpu", "int8", "qat", 0.5, True)]  # gpu runs float16
    assert ("gpu", "fp16", "auto", None, False) in plan


@pytest.mark.slow  # tfmot wraps even the smallest zoo ResNet in about 10 s
@pytest.mark.parametrize("name", ["resnet8", "resnet20", "resnet18", "resnet50"])
def test_zoo_resnets_quantize_with_conv_bn_relu_folded(name):
    """tfmot wraps every layer of the zoo ResNets; BatchNormalization carries no fake quant of its own."""
    mot = _tf.tfmot()
    for shape in ((32, 32, 3),):
        model = build_model(name, input_shape=shape, classes=10)
        check_quantizable(model)
        q = mot.quantization.keras.quantize_model(model)
        bn = [w for w in q.layers if type(getattr(w, "layer", None)).__name__ == "BatchNormalization"]
        assert bn and all(type(w.quantize_config).__name__ in ("NoOpQuantizeConfig", "Default8BitOutputQuantizeConfig") for w in bn)


@pytest.mark.slow  # a QAT fine-tune and a conversion under a strategy; the full suite also runs `convert --qat` (qat_run)
def test_strategy_is_honoured_and_converts(tiny_model_h5, tiny_data):
    from edgeresnet.device.images import load_images
    from edgeresnet.host.models import load_model

    tf = _tf.tf()
    loaded = load_model(tiny_model_h5)
    ds = load_images(tiny_data["calib"], (16, 16, 3))
    x = ds.images.astype(np.float32) / 255.0
    seen = []
    with tf.distribute.MirroredStrategy(["/cpu:0"]).scope():
        result = quantize_aware_train(loaded, QATConfig(epochs=1, batch_size=40), (x, ds.labels),
                                      progress=lambda d, t: seen.append((d, t)))
    assert result.strategy == "MirroredStrategy" and result.replicas == 1 and result.steps == 3
    assert seen[0] == (0, 3) and seen[-1] == (3, 3)
    from edgeresnet.host.models.loading import LoadedModel

    data = convert_qat(LoadedModel.from_keras(result.model, "q").tflite_converter, "int8", x)
    assert _float_tensors(data) == []
    # The int8 file computes what the fake-quantized Keras model computes (ranges from training).
    keras_out = result.model.predict(x, verbose=0)
    tfl_out = TFLiteModel(data).predict(x)
    assert np.mean(np.argmax(keras_out, -1) == np.argmax(tfl_out, -1)) >= 0.95
    assert np.max(np.abs(keras_out - tfl_out)) < 0.1
    # Those ranges were measured again on the trained weights: re-measuring the float twin of the returned
    # model gives them back, while the ranges chosen before training (on the untrained weights) differ.
    from edgeresnet.host.training.fit import train_stream as _train_stream
    from edgeresnet.host.training.qat import _float_twin, _quantize, _set_ranges

    stream = _train_stream((x, ds.labels), loaded.model, 4)
    before = _quantize(loaded.model, preserve_sparsity=False)
    _set_ranges(before, loaded.model, stream, 40, 0)
    again = _quantize(_float_twin(result.model, loaded.model), preserve_sparsity=False)
    _set_ranges(again, _float_twin(result.model, loaded.model), stream, 40, 0)
    got, want, untrained = _activation_ranges(result.model), _activation_ranges(again), _activation_ranges(before)
    assert len(got) >= 4 and set(got) == set(want) == set(untrained)
    assert all(got[k] == pytest.approx(want[k], rel=1e-5, abs=1e-6) for k in got), (got, want)
    assert any(abs(got[k] - untrained[k]) > 1e-3 for k in got)


def _activation_ranges(qmodel) -> dict:
    """(layer, min/max) -> value of every activation range of a quantization-aware model."""
    out = {}
    for wrapper in qmodel.layers:
        for v in getattr(wrapper, "non_trainable_weights", []):
            short = v.name.rsplit("/", 1)[-1].split(":")[0]
            if short.rsplit("_", 1)[0] in ("output", "post_activation", "pre_activation") and v.shape.rank == 0:
                out[(wrapper.layer.name, short)] = float(v.numpy())
    return out


@pytest.mark.slow  # a float fine-tune and a conversion; the full suite runs it
def test_float_fine_tune_is_the_recipe_without_fake_quantization(tiny_model_h5, tiny_data):
    from edgeresnet.device.images import load_images
    from edgeresnet.host.models import load_model
    from edgeresnet.host.training.qat import float_fine_tune

    mot = _tf.tfmot()
    loaded = load_model(tiny_model_h5)
    original = [w.copy() for w in loaded.model.get_weights()]
    ds = load_images(tiny_data["calib"], (16, 16, 3))
    x = ds.images.astype(np.float32) / 255.0
    tuned = float_fine_tune(loaded, QATConfig(epochs=1, batch_size=40), (x, ds.labels))
    assert not any(isinstance(layer, mot.quantization.keras.QuantizeWrapperV2) for layer in tuned.layers)
    assert all(np.array_equal(a, b) for a, b in zip(original, loaded.model.get_weights()))  # input untouched
    assert any(not np.allclose(a, b) for a, b in zip(original, tuned.get_weights()))  # it was trained
    with pytest.raises(ConfigError, match="--train"):
        float_fine_tune(loaded, QATConfig(), None)


# --------------------------------------------------------------------------- bad input


def _unquantizable_h5(tmp_path) -> Path:
    keras = _tf.tf_keras()
    inp = keras.Input((16, 16, 3))
    h = keras.layers.Conv2D(4, 3, name="conv")(inp)
    h = keras.layers.LayerNormalization(name="odd_norm")(h)
    h = keras.layers.GlobalAveragePooling2D()(h)
    h = keras.layers.BatchNormalization(name="free_bn")(h)
    out = keras.layers.Dense(4, activation="softmax")(h)
    path = tmp_path / "odd.h5"
    keras.Model(inp, out).save(path)
    return path


def _keras3_file(tmp_path) -> Path:
    _tf.tf()
    import keras

    if not keras.__version__.startswith("3"):
        pytest.skip("Keras 3 is not installed")
    inp = keras.Input((16, 16, 3))
    out = keras.layers.Dense(4, activation="softmax")(keras.layers.GlobalAveragePooling2D()(inp))
    path = tmp_path / "k3.keras"
    keras.Model(inp, out).save(path)
    return path


@pytest.mark.parametrize(
    "case, fragment",
    [
        ("no train", "--qat fine-tunes on labelled images; add --train"),
        ("keras 3", "Keras 3 model"),
        ("unquantizable", "cannot quantize 2 layer(s)"),
        ("float precision", "drop --precision fp32"),
        ("gpu only", "none of the targets (gpu) runs int8"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(case, fragment, tmp_path, tiny_model_h5, tiny_data, run_cli):
    model, extra = tiny_model_h5, []
    if case == "keras 3":
        model = _keras3_file(tmp_path)
    elif case == "unquantizable":
        model = _unquantizable_h5(tmp_path)
    elif case == "float precision":
        extra = ["--precision", "fp32"]
    elif case == "gpu only":
        extra = ["--target", "gpu"]
    train = [] if case == "no train" else ["--train", tiny_data["calib"]]
    out = tmp_path / "out"
    before = sorted(p.name for p in tmp_path.iterdir())
    code, stdout, err = run_cli(
        ["convert", model, "--qat", *train, "--calib", tiny_data["calib"], "--out", out, *extra, *TINY]
    )
    assert code == 2
    assert err.startswith("error: ") and err.count("\n") == 1, err  # before any progress: nothing was loaded
    assert fragment in err
    if case == "unquantizable":
        assert "odd_norm (LayerNormalization)" in err and "free_bn" in err
    assert "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written


def test_library_names_every_layer_tfmot_cannot_quantize(tmp_path):
    from edgeresnet.host.models import load_model

    with pytest.raises(QATError, match=r"odd_norm \(LayerNormalization\).*free_bn"):
        check_quantizable(load_model(_unquantizable_h5(tmp_path)))


def test_config_is_validated():
    with pytest.raises(ConfigError, match="--epochs"):
        QATConfig(epochs=0)
    with pytest.raises(ConfigError, match="--learning-rate"):
        QATConfig(learning_rate=2.0)
    with pytest.raises(ConfigError, match="--batch-size"):
        QATConfig(batch_size=True)
    with pytest.raises(ConfigError, match="cosine, constant"):
        QATConfig(schedule="linear")
    assert QATConfig(schedule="constant").learning_rate_for(100) == pytest.approx(1e-4)
    assert QATConfig().for_model(pruned=False).learning_rate == pytest.approx(1e-4)
    assert QATConfig().for_model(pruned=True).learning_rate == pytest.approx(3e-4)
    assert QATConfig(learning_rate=5e-5).for_model(pruned=True).learning_rate == pytest.approx(5e-5)  # given: kept
    cosine = QATConfig(learning_rate=2e-4).learning_rate_for(100)  # the default: decays to 0 over the steps
    assert float(cosine(0)) == pytest.approx(2e-4) and float(cosine(50)) == pytest.approx(1e-4)
    assert float(cosine(100)) == pytest.approx(0.0, abs=1e-12)


def test_int8_method_qat_alone_is_refused(tiny_model_h5, tiny_data, tmp_path, run_cli):
    code, _, err = run_cli(
        ["convert", tiny_model_h5, "--int8", "--int8-method", "qat", "--calib", tiny_data["calib"],
         "--out", tmp_path / "o"]
    )
    assert code == 2 and "use --qat --train DIR" in err and not (tmp_path / "o").exists()


def test_edgetpu_over_budget_suggests_qat(outlier_model_h5, tiny_data, tmp_path, run_cli):
    out = tmp_path / "out"
    code, _, err = run_cli([
        "convert", outlier_model_h5, "--int8", "--int8-method", "minmax", "--target", "edgetpu", "--preset", "unit",
        "--calib", tiny_data["calib"], "--eval", tiny_data["eval"], "--max-drop", "0", "--out", out,
    ])
    assert code == 3, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: ") and "--qat --train TRAIN_DIR" in last and "--target edgetpu" in last
    failed = next(tmp_path.glob("out*failed*"))
    report = json.loads((failed / "report.json").read_text())
    v = report["variants"][0]
    assert v["status"] == "over_budget" and "--qat" in v["suggestion"] and "--qat" in v["error"]
    assert "--qat" in (failed / "report.md").read_text()


# --------------------------------------------------------------------------- the real model


@pytest.mark.slow
def test_real_resnet8_qat_converts_and_agrees_with_float(resnet8_h5, shared_data, tmp_path):
    from edgeresnet.device.images import load_images
    from edgeresnet.host.models import load_model
    from edgeresnet.host.models.loading import LoadedModel

    loaded = load_model(resnet8_h5)
    check_quantizable(loaded)
    train = load_images(shared_data / "cifar10" / "train", (32, 32, 3), samples=300, seed=0)
    test = load_images(shared_data / "cifar10" / "test", (32, 32, 3), samples=300, seed=0)
    x, xt = train.images.astype(np.float32), test.images.astype(np.float32)
    result = quantize_aware_train(loaded, QATConfig(epochs=1), (x, train.labels))
    for io in ("int8", "uint8"):
        data = convert_qat(LoadedModel.from_keras(result.model, "q").tflite_converter, io, x)
        assert _float_tensors(data) == []
        got = np.argmax(TFLiteModel(data).predict(xt), -1)
        want = np.argmax(loaded.predict(xt), -1)
        agreement = np.mean(got == want)
        top1 = np.mean(got == test.labels)
        assert agreement >= 0.85, f"QAT int8 ({io}) agrees with the float ResNet-8 on only {agreement:.1%}"
        assert top1 >= 0.65, f"QAT int8 ({io}) top-1 {top1:.1%}"

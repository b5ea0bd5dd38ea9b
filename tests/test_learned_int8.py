"""Learned rounding (``mse+learned``), learned ranges (``mse+gptq+ranges``), the default's choice between methods
(``auto``) and the pool rewrite."""

from __future__ import annotations

import numpy as np
import pytest

from edgeresnet.device import verify
from edgeresnet.device.runtime import TFLiteModel
from edgeresnet.host.quantize import Int8Session, QuantOptConfig, choice, engine, get_method
from edgeresnet.host.quantize import graph as qg

FAST = dict(learn_iters=150, learn_samples=64, range_iters=100)  # enough steps to learn on a tiny model in seconds


@pytest.fixture(scope="module")
def tiny(tiny_model_h5, tiny_data):
    from edgeresnet.device.images import load_images
    from edgeresnet.host.models.loading import load_model

    loaded = load_model(tiny_model_h5)
    calib = load_images(tiny_data["calib"], (16, 16, 3)).images.astype(np.float32) / 255.0
    held = load_images(tiny_data["eval"], (16, 16, 3)).images.astype(np.float32) / 255.0
    return loaded, calib, held


def _ops(model: bytes) -> list[int]:
    from tensorflow.lite.tools import flatbuffer_utils

    m = flatbuffer_utils.convert_bytearray_to_object(bytearray(model))
    return [qg.op_code(m, op) for op in m.subgraphs[0].operators]


@pytest.mark.slow  # learned rounding of every block (10-14 s)
def test_learned_rounding_lowers_the_blocks_output_error_and_keeps_the_structure(tiny):
    loaded, calib, held = tiny
    session = Int8Session(loaded.tflite_converter, calib, "int8", "mse+learned", config=QuantOptConfig(**FAST))
    d = session.details
    assert d["learned_layers"] == d["layers"] > 0 and d["blocks"] >= 2, d
    assert d["block_error_learned"] < 0.95 * d["block_error_nearest"], d
    plain = Int8Session(loaded.tflite_converter, calib, "int8", "mse+bias").model
    assert _ops(session.model) == _ops(plain)  # the quantizer's own model, other weights
    engine.check_full_integer(session.model, "int8")
    ref = loaded.predict(held)
    assert verify.agreement(ref, TFLiteModel(session.model).predict(held)) >= 95.0


@pytest.mark.slow
def test_learned_weights_sit_on_the_quantizers_grid(tiny):
    """Each written weight is an int8 step times the channel's scale, so the quantizer keeps it exactly."""
    from tensorflow.lite.tools import flatbuffer_utils

    loaded, calib, _ = tiny
    session = Int8Session(loaded.tflite_converter, calib, "int8", "mse+learned", config=QuantOptConfig(**FAST))
    graph = qg.Graph(session.calibrated())
    m = flatbuffer_utils.convert_bytearray_to_object(bytearray(session.model))
    quantized = {}
    for op in m.subgraphs[0].operators:
        if qg.op_code(m, op) in qg.WEIGHT_OPS:
            t = m.subgraphs[0].tensors[op.inputs[1]]
            q = np.frombuffer(bytes(m.buffers[t.buffer].data), np.int8).reshape(tuple(t.shape)).astype(np.float64)
            quantized[t.name] = q * np.asarray(t.quantization.scale).reshape((-1,) + (1,) * (q.ndim - 1))
    layers = graph.weight_layers(True, True)
    assert layers
    for layer in layers:
        w = graph.const(layer.w)
        match = [q for q in quantized.values() if q.shape == w.shape and np.allclose(q, w, atol=1e-6)]
        assert match, graph.sg.tensors[layer.w].name


def test_learned_rounding_keeps_a_pruned_weight_at_zero(tiny_model_h5, tiny):
    """A weight that pruning set to zero stays zero whatever the learning says (here: round every weight up),
    or the int8 model would lose the sparsity it was pruned for."""
    from edgeresnet._util import tf as _tf
    from edgeresnet.host.models.loading import load_model
    from edgeresnet.host.quantize import learned

    _, calib, _ = tiny
    pruned = load_model(tiny_model_h5)  # its own copy: half of every kernel set to zero
    rng = np.random.default_rng(0)
    for layer in pruned.model.layers:
        weights = layer.get_weights()
        if weights and weights[0].ndim in (2, 4):
            weights[0][rng.random(weights[0].shape) < 0.5] = 0.0
            layer.set_weights(weights)
    graph = qg.Graph(Int8Session(pruned.tflite_converter, calib, "int8", "mse").calibrated())
    tf = _tf.tf()
    for layer in graph.weight_layers(True, True):
        zero = graph.const(layer.w) == 0
        rounding = learned._Rounding(tf, graph, layer)
        rounding.v.assign(tf.fill(tf.shape(rounding.v), 10.0))  # h = 1: every free weight one step up
        steps, soft = rounding.steps(), rounding.soft_weights(tf).numpy()
        assert zero.mean() > 0.4 and np.all(steps[zero] == 0) and np.all(soft[zero] == 0)
        free = ~zero & ~rounding.fixed
        assert np.all(steps[free] == np.clip(rounding.floor[free] + 1, -127, 127))  # the others did go up


def _tf_keras_model(inputs, outputs):
    from edgeresnet._util import tf as _tf

    return _tf.tf_keras().Model(inputs, outputs)


def _int8_logits(model: bytes, x: np.ndarray) -> np.ndarray:
    """The int8 model's logits (its softmax's int8 input, dequantized) for float images ``x``, from the interpreter."""
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_content=model, experimental_preserve_all_tensors=True)
    inp = it.get_input_details()[0]
    it.resize_tensor_input(inp["index"], x.shape)
    it.allocate_tensors()
    scale, zero = inp["quantization"]
    it.set_tensor(inp["index"], np.clip(np.round(x / scale + zero), -128, 127).astype(np.int8))
    it.invoke()
    softmax = [op for op in it._get_ops_details() if op["op_name"] == "SOFTMAX"][-1]
    t = [d for d in it.get_tensor_details() if d["index"] == softmax["inputs"][0]][0]
    scale, zero = t["quantization"]
    return (it.get_tensor(t["index"]).astype(np.float64) - zero) * scale


def _divergence(float_logits: np.ndarray, int8_logits: np.ndarray) -> float:
    """Mean KL divergence of the class probabilities of ``int8_logits`` from those of ``float_logits``."""
    def log_softmax(z):
        z = z - z.max(-1, keepdims=True)
        return z - np.log(np.exp(z).sum(-1, keepdims=True))

    p, q = log_softmax(float_logits), log_softmax(int8_logits)
    return float(np.mean(np.sum(np.exp(p) * (p - q), -1)))


@pytest.fixture(scope="module")
def sharp_model(tmp_path_factory):
    """Two convolutions, a global pool and a softmax over large logits: its int8 answers depend on every range
    (the tiny ResNet's int8 model is already as good as exact)."""
    from edgeresnet._util import tf as _tf
    from edgeresnet.host.models.loading import load_model

    keras = _tf.tf_keras()
    keras.utils.set_random_seed(1)
    x = inp = keras.Input((16, 16, 3))
    x = keras.layers.Conv2D(16, 3, padding="same", activation="relu")(x)
    x = keras.layers.Conv2D(16, 3, padding="same", activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    dense = keras.layers.Dense(4)
    x = keras.layers.Softmax()(dense(x))
    model = keras.Model(inp, x)
    dense.set_weights([w * 40.0 for w in dense.get_weights()])
    path = tmp_path_factory.mktemp("sharp") / "sharp.h5"
    model.save(path)
    return load_model(path)


@pytest.mark.slow  # three conversions, one with learned ranges (10-12 s)
def test_learned_ranges_lower_the_divergence_on_held_out_images_and_change_only_the_ranges(sharp_model, tiny, weight_tensors):
    _, calib, held = tiny
    loaded = sharp_model
    cfg = QuantOptConfig(**FAST)
    learned = Int8Session(loaded.tflite_converter, calib, "int8", "mse+gptq+ranges", config=cfg)
    d = learned.details
    assert d["ranges_learned"] > 0 and 0 < d["range_steps"] <= 100, d
    # on the fifth of the calibration images held out of the learning, int8 as simulated
    assert d["range_held_out"] == len(calib) // 5 and d["range_kl_after"] < 0.9 * d["range_kl_before"], d
    base = Int8Session(loaded.tflite_converter, calib, "int8", "mse+gptq", config=cfg)
    assert _ops(learned.model) == _ops(base.model)
    assert weight_tensors(learned.model) == weight_tensors(base.model)  # gptq's weights and scales, bit for bit
    # held-out images, the real int8 models in the interpreter: their logits against the float model's
    keras_logits = loaded.model.layers[-2].output
    ref = _tf_keras_model(loaded.model.input, keras_logits).predict(held, verbose=0)
    kl = {name: _divergence(ref, _int8_logits(s.model, held)) for name, s in (("learned", learned), ("gptq", base))}
    assert kl["learned"] < 0.8 * kl["gptq"], kl  # measured: 6.7e-5 against 2.8e-4
    again = Int8Session(loaded.tflite_converter, calib, "int8", "mse+gptq+ranges", config=cfg)
    assert again.model == learned.model  # the same seed gives the same model, bit for bit


def _more_samples(calib, held, n=200):
    """``n`` samples (the tiny sets hold 180): flipped copies fill up the rest."""
    x = np.concatenate([calib, held, calib[:, :, ::-1]])
    return x[:n]


@pytest.mark.slow  # three methods twice, learned rounding among them (30 s)
def test_auto_scores_on_held_out_samples_and_is_deterministic_for_a_seed(tiny, monkeypatch):
    loaded, calib, held = tiny
    x = _more_samples(calib, held)
    monkeypatch.setattr(choice, "MIN_LEAD", 0)  # the first agrees everywhere on these: try every method anyway
    runs = [Int8Session(loaded.tflite_converter, x, "int8", "auto", config=QuantOptConfig(seed=3, **FAST))
            for _ in range(2)]
    a, b = (r.choice for r in runs)
    assert a.held_out == len(x) // choice.HELD_EVERY and a.fit == len(x) - a.held_out
    assert [s.method for s in a.scored] == list(choice.CANDIDATES)
    assert a.winner == b.winner == runs[0].method.name
    assert [s.agreement for s in a.scored] == [s.agreement for s in b.scored]
    counts = [round(s.agreement * a.held_out / 100) for s in a.scored]
    kept = 0  # a later method is kept only with MIN_LEAD more held-out images than the one kept before it
    for k in range(1, len(counts)):
        kept = k if counts[k] >= counts[kept] + choice.MIN_LEAD else kept
    assert a.scored[kept].method == a.winner
    assert runs[0].model == runs[1].model  # the same model, bit for bit
    # the scored models were quantized from the four fifths not held out; the kept one is the winner's from all
    fit = np.setdiff1d(np.arange(len(x)), np.arange(choice.HELD_EVERY - 1, len(x), choice.HELD_EVERY))
    assert a.fit == len(fit) and a.kept_fit == len(x)
    alone = Int8Session(loaded.tflite_converter, x, "int8", a.winner, config=QuantOptConfig(seed=3, **FAST))
    assert alone.model == runs[0].model
    record = a.to_dict()
    assert record["kept_fit"] == len(x)
    assert record["winner"] == a.winner and len(record["scored"]) == 3


def test_auto_stops_when_the_first_method_agrees_everywhere_and_falls_back_with_too_few_samples(tiny, monkeypatch):
    loaded, calib, held = tiny
    x = _more_samples(calib, held)
    easy = Int8Session(loaded.tflite_converter, x, "int8", "auto")
    assert [s.method for s in easy.choice.scored] == ["mse+gptq"] and easy.choice.scored[0].agreement == 100.0
    assert [m for m, _ in easy.choice.skipped] == ["mse+bias", "mse+gptq+ranges"]
    assert all("every held-out image" in why for _, why in easy.choice.skipped)
    few = Int8Session(loaded.tflite_converter, calib[:50], "int8", "auto")
    assert few.choice.winner == choice.FALLBACK == few.method.name and not few.choice.scored
    assert "too few" in few.choice.note


def test_auto_leaves_costly_methods_to_small_models(tiny, monkeypatch):
    loaded, calib, held = tiny
    x = _more_samples(calib, held)
    monkeypatch.setattr(get_method("mse+gptq+ranges"), "max_choice_macs", 1.0)
    monkeypatch.setattr(get_method("mse+gptq"), "max_choice_macs", 1.0)
    alone = Int8Session(loaded.tflite_converter, x, "int8", "auto")
    assert alone.method.name == "mse+bias" and alone.choice.fit == 200 and not alone.choice.scored
    assert "nothing to compare" in alone.choice.note
    assert {m for m, why in alone.choice.skipped if "multiply-accumulates" in why} == {"mse+gptq", "mse+gptq+ranges"}
    plain = Int8Session(loaded.tflite_converter, x, "int8", "mse+bias")
    assert alone.model == plain.model  # a big model's default costs what mse+bias costs


@pytest.fixture(scope="module")
def pooled_model(tmp_path_factory):
    """conv -> ReLU -> AveragePooling2D over the whole 16x16 map -> dense: the MLPerf ResNet-8's classifier head."""
    from edgeresnet._util import tf as _tf
    from edgeresnet.host.models.loading import load_model

    keras = _tf.tf_keras()
    keras.utils.set_random_seed(0)
    x = inp = keras.Input((16, 16, 3))
    x = keras.layers.Conv2D(16, 3, padding="same", activation="relu")(x)
    x = keras.layers.AveragePooling2D(pool_size=16)(x)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(4)(x)  # logits: the pooled features' int8 error shows undamped
    path = tmp_path_factory.mktemp("pool") / "pool.h5"
    keras.Model(inp, x).save(path)
    return load_model(path)


def test_whole_input_average_pool_becomes_mean_and_int8_gets_closer_to_float(pooled_model, tiny, monkeypatch):
    _, calib, held = tiny
    ref = pooled_model.predict(held)
    model = Int8Session(pooled_model.tflite_converter, calib, "int8", "mse+bias").model
    assert qg.MEAN in _ops(model) and qg.AVERAGE_POOL_2D not in _ops(model)
    monkeypatch.setattr(engine, "global_pools_as_mean", lambda graph: [])
    kept = Int8Session(pooled_model.tflite_converter, calib, "int8", "mse+bias").model
    assert qg.AVERAGE_POOL_2D in _ops(kept)
    sqnr = {name: verify.sqnr_db(ref, TFLiteModel(m).predict(held)) for name, m in (("mean", model), ("pool", kept))}
    assert sqnr["mean"] > sqnr["pool"] + 1.0, sqnr  # measured: 41.8 against 40.2 dB


def test_the_classifier_moves_before_the_pool_float_exactly(pooled_model, tiny):
    from edgeresnet.host.quantize.rewrite import classifiers_before_pool, global_pools_as_mean

    _, calib, held = tiny
    session = Int8Session(pooled_model.tflite_converter, calib, "int8", "minmax")  # the converter's graph, untouched
    graph = qg.Graph(session.calibrated())
    global_pools_as_mean(graph)
    before, ops_before = choice._float_outputs(graph, held), [code for code, _ in graph.ops]
    (z,) = classifiers_before_pool(graph)
    after = [code for code, _ in graph.ops]
    assert ops_before[-2:] == [qg.MEAN, qg.FULLY_CONNECTED] and after[-2:] == [qg.CONV_2D, qg.MEAN]
    assert list(graph.sg.tensors[z].shape) == [1, 16, 16, 4] and graph.has_range(z)
    np.testing.assert_allclose(choice._float_outputs(graph, held), before, rtol=1e-5, atol=1e-5)
    referenced = {int(i) for _, op in graph.ops for i in list(op.inputs) + list(op.outputs) if i >= 0}
    assert referenced | graph.inputs | graph.outputs == set(range(len(graph.sg.tensors)))  # no tensor left behind
    model = Int8Session(pooled_model.tflite_converter, calib, "int8", "mse+bias").model
    assert _ops(model)[-2:] == [qg.CONV_2D, qg.MEAN]
    engine.check_full_integer(model, "int8")


def test_a_classifier_with_an_activation_stays_where_it_is(tiny):
    from edgeresnet._util import tf as _tf
    from edgeresnet.host.models.loading import LoadedModel

    _, calib, _ = tiny
    keras = _tf.tf_keras()
    keras.utils.set_random_seed(0)
    x = inp = keras.Input((16, 16, 3))
    x = keras.layers.Conv2D(8, 3, activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dense(6, activation="relu")(x)  # not linear: the mean of it is not it of the mean
    x = keras.layers.Dense(4)(x)
    loaded = LoadedModel.from_keras(keras.Model(inp, x), "head")
    plain = Int8Session(loaded.tflite_converter, calib, "int8", "minmax").model
    assert _ops(Int8Session(loaded.tflite_converter, calib, "int8", "mse+bias").model) == _ops(plain)


@pytest.mark.slow  # four ResNet-8 conversions, 4,700 held-out images
def test_the_classifier_before_the_pool_agrees_more_on_the_real_resnet8(resnet8_h5, shared_data, monkeypatch):
    from edgeresnet.device.images import load_images
    from edgeresnet.host.models.loading import load_model

    loaded = load_model(resnet8_h5)
    calib = load_images(shared_data / "cifar10" / "train", (32, 32, 3), samples=300, seed=0)
    held = load_images(shared_data / "cifar10" / "train", (32, 32, 3), exclude=calib.paths).images.astype(np.float32)
    ref = loaded.predict(held)
    x = calib.images.astype(np.float32)
    moved = Int8Session(loaded.tflite_converter, x, "int8", "mse+gptq").model
    monkeypatch.setattr(engine, "classifiers_before_pool", lambda graph: [])
    kept = Int8Session(loaded.tflite_converter, x, "int8", "mse+gptq").model
    agree = {name: verify.agreement(ref, TFLiteModel(m).predict(held)) for name, m in (("moved", moved), ("kept", kept))}
    assert agree["moved"] >= agree["kept"] + 0.15, agree  # measured: 98.62 against 98.40 %

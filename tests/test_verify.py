import numpy as np
import pytest

from edgeresnet.device import verify


def test_topk_and_agreement_on_known_values():
    out = np.array([[0.1, 0.7, 0.2], [0.5, 0.3, 0.2], [0.2, 0.3, 0.5], [0.4, 0.35, 0.25]])
    labels = np.array([1, 1, 2, 2])
    assert verify.topk_accuracy(out, labels, 1) == pytest.approx(50.0)
    assert verify.topk_accuracy(out, labels, 2) == pytest.approx(75.0)
    other = out.copy()
    other[3] = [0.2, 0.5, 0.3]  # changes one top-1 answer
    assert verify.agreement(out, other) == pytest.approx(75.0)


def test_drift_reports_drop_against_float():
    rng = np.random.default_rng(0)
    f = rng.random((200, 10))
    labels = f.argmax(1)  # float model is 100 % right
    q = f.copy()
    q[:10] = q[:10, ::-1]  # flip ten answers
    d = verify.drift(f, q, labels)
    assert d.top1 == pytest.approx(95.0)
    assert d.drop_pts == pytest.approx(5.0)
    assert d.agreement == pytest.approx(95.0)
    assert 0 < d.cosine < 1
    assert verify.over_budget(d, 4.9) and not verify.over_budget(d, 5.0)


def test_identical_outputs_give_capped_sqnr_and_unit_cosine():
    x = np.random.default_rng(1).random((5, 4))
    assert verify.sqnr_db(x, x) == verify.SQNR_CAP_DB
    assert verify.cosine_similarity(x, x) == pytest.approx(1.0)
    noisy = x + 0.01
    assert 20 < verify.sqnr_db(x, noisy) < verify.SQNR_CAP_DB


def test_unlabelled_budget_uses_disagreement():
    f = np.eye(4)[[0, 1, 2, 3] * 5]
    q = f.copy()
    q[0] = np.eye(4)[1]
    d = verify.drift(f, q, None)
    assert d.top1 is None and d.drop_pts is None
    assert verify.over_budget(d, 4.0) and not verify.over_budget(d, 5.0)


# --------------------------------------------------------------------------- batched evaluation


@pytest.mark.slow
@pytest.mark.parametrize("precision, io_type", [("int8", "uint8"), ("fp32", "float32")])
def test_batched_evaluation_gives_every_image_its_own_outputs(shared_data, resnet8_h5, precision, io_type):
    """The real ResNet-8 converted, real CIFAR-10 images: N per invoke (the input's batch resized) = one at a time."""
    from edgeresnet.device.images import load_images
    from edgeresnet.host.converter import ConversionSpec, convert
    from edgeresnet.host.models.loading import load_model
    from edgeresnet.device.runtime import EVAL_BATCH, TFLiteModel

    loaded = load_model(resnet8_h5)
    calib = load_images(shared_data / "cifar10" / "train", (32, 32, 3), samples=40, seed=0).images.astype(np.float32)
    x = load_images(shared_data / "cifar10" / "test", (32, 32, 3), samples=100, seed=0).images.astype(np.float32)
    model = convert(loaded.tflite_converter, ConversionSpec(precision, io_type), calib if precision == "int8" else None).model
    one = TFLiteModel(model).predict(x)
    batched = TFLiteModel(model)
    assert batched.input.shape[0] == 1  # converted with a batch of one ...
    many = np.concatenate([batched.predict(x[:70], batch=EVAL_BATCH), batched.predict(x[70:], batch=EVAL_BATCH)])
    assert batched._batch == EVAL_BATCH > 1  # ... and really run EVAL_BATCH at a time (the last batches padded)
    np.testing.assert_array_equal(many, one)  # every output value (dequantized logits/probabilities), bit for bit
    assert np.array_equal(many.argmax(1), one.argmax(1)) and verify.agreement(one, many) == 100.0


def test_a_model_whose_batch_does_not_resize_runs_one_image_at_a_time():
    """A reshape to a fixed [1, -1] folds a resized batch into one row: refused, the model keeps its batch of 1."""
    from edgeresnet._util import tf as _tf
    from edgeresnet.device.runtime import TFLiteModel

    tf = _tf.tf()

    @tf.function(input_signature=[tf.TensorSpec([1, 4, 4, 3], tf.float32)])
    def fixed(x):
        return tf.nn.relu(tf.reshape(x, [1, -1])) * 2.0

    model = tf.lite.TFLiteConverter.from_concrete_functions([fixed.get_concrete_function()]).convert()
    x = np.random.default_rng(1).normal(size=(7, 4, 4, 3)).astype(np.float32)
    tfl = TFLiteModel(model)
    out = tfl.predict(x, batch=4)
    assert tfl._batch == 1 and 4 in tfl._unbatchable
    np.testing.assert_allclose(out, np.maximum(x.reshape(7, -1), 0) * 2.0, rtol=1e-6)
    np.testing.assert_array_equal(out, TFLiteModel(model).predict(x))


def _paired(b: int, c: int, both: int, neither: int):
    """Float and candidate outputs over 2 classes (label 0): ``b`` images only float gets right, ``c`` only the
    candidate, ``both`` and ``neither`` the rest."""
    right, wrong = [1.0, 0.0], [0.0, 1.0]
    f = np.array([right] * b + [wrong] * c + [right] * both + [wrong] * neither)
    q = np.array([wrong] * b + [right] * c + [right] * both + [wrong] * neither)
    return f, q, np.zeros(len(f), int)


def test_drop_margin_is_the_paired_95_percent_interval():
    f, q, labels = _paired(10, 4, 900, 86)
    d = verify.drift(f, q, labels)
    assert d.drop_pts == pytest.approx(0.6)
    # sqrt(b + c - (b - c)^2 / n) / n, times 1.96, in points
    assert d.drop_margin_pts == pytest.approx(196 * np.sqrt(14 - 36 / 1000) / 1000)
    assert verify.drift(f, f, labels).drop_margin_pts == 0.0  # the same answers: no uncertainty
    assert verify.drift(f, q).drop_margin_pts is None  # unlabelled: no drop, no margin


def test_drop_margin_covers_the_true_drop_about_95_times_in_100():
    # 1,000 images drawn 400 times from a pair of models whose true drop is 0.6 points
    rng = np.random.default_rng(0)
    p = [0.012, 0.006, 0.85]  # only float right, only the candidate right, both right (else neither)
    hits = 0
    for _ in range(400):
        b, c, both, neither = rng.multinomial(1000, p + [1 - sum(p)])
        d = verify.drift(*_paired(b, c, both, neither))
        hits += abs(d.drop_pts - 0.6) <= d.drop_margin_pts
    assert 0.91 <= hits / 400 <= 0.99


def test_a_budget_finer_than_the_margin_is_warned_about():
    from types import SimpleNamespace

    from edgeresnet.host.pipeline.run import _warn_budget_within_margin
    from edgeresnet.report.records import Status

    f, q, labels = _paired(10, 4, 900, 86)  # drop 0.6 ± 0.73 on 1,000 images
    variant = SimpleNamespace(drift=verify.drift(f, q, labels), status=Status.OK)
    report = SimpleNamespace(variants=[variant], evaluation={"count": 1000})
    said = []
    for budget in (None, 0.8, 0.5):
        _warn_budget_within_margin(report, budget, said.append)
    assert len(said) == 1 and "on 1000 evaluation images" in said[0] and "±0.73 points" in said[0]
    assert "--max-drop 0.5" in said[0]
    variant.status = Status.FLOAT_AT_CHANCE  # its drift means nothing anyway: no second warning
    _warn_budget_within_margin(report, 0.5, said.append)
    assert len(said) == 1

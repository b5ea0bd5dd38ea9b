import numpy as np
import pytest

from edgeresnet import verify


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

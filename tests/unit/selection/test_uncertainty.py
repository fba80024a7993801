"""UPS selection against hand-computed means and (unbiased) standard deviations over K = 3 views."""

import numpy as np
import pytest

from pseudostream.server.errors import ConfigError, InvalidInput
from pseudostream.server.selection import PolicyBatch, UncertaintyPolicy


def batch(views):
    v = np.array(views, float).transpose(1, 0, 2)  # given per sample [B, K, C] -> [K, B, C]
    return PolicyBatch(probs=v.mean(axis=0), ids=[str(i) for i in range(v.shape[1])], views=v)


def test_positive_negative_and_reasons():
    views = [
        # 0: mean [0.8, 0.1, 0.1], std 0 -> positive, class 0
        [[0.8, 0.1, 0.1]] * 3,
        # 1: class 0 [0.9, 0.7, 0.8]: mean 0.8, std sqrt((0.01 + 0.01 + 0) / 2) = 0.1 >= 0.05 -> "uncertain"
        #    class 2 = 0.01 in every view: mean 0.01 < 0.05, std 0 < 0.005 -> negative
        #    class 1 [0.09, 0.29, 0.19]: mean 0.19 -> unknown
        [[0.9, 0.09, 0.01], [0.7, 0.29, 0.01], [0.8, 0.19, 0.01]],
        # 2: mean max 0.6 < 0.7 -> "below_class_threshold"; class 2 0.02 with std 0 -> negative
        [[0.6, 0.38, 0.02]] * 3,
        # 3: class 2 [0.01, 0.02, 0.03]: mean 0.02 but std 0.01 >= 0.005 -> not negative
        [[0.5, 0.49, 0.01], [0.5, 0.48, 0.02], [0.5, 0.47, 0.03]],
    ]
    d = UncertaintyPolicy(3, deliver_negatives=False).select(batch(views))
    assert d.accept.tolist() == [True, False, False, False]
    assert d.label.tolist() == [0, 0, 0, 0]
    assert d.reason.tolist() == ["", "uncertain", "below_class_threshold", "below_class_threshold"]
    np.testing.assert_allclose(d.confidence, [0.8, 0.8, 0.6, 0.5], rtol=1e-6)
    assert d.negative.tolist() == [
        [False, False, False],
        [False, False, True],
        [False, False, True],
        [False, False, False],
    ]
    assert d.positive is None


def test_negative_only_samples_are_delivered_by_default():
    views = [
        [[0.8, 0.1, 0.1]] * 3,  # positive, class 0
        [[0.6, 0.38, 0.02]] * 3,  # not positive (0.6 < 0.7); class 2: mean 0.02, std 0 -> negative
        [[0.5, 0.49, 0.01], [0.5, 0.48, 0.02], [0.5, 0.47, 0.03]],  # nothing decided
    ]
    d = UncertaintyPolicy(3).select(batch(views))
    assert d.accept.tolist() == [True, True, False]
    assert d.label.tolist() == [0, -1, 0]
    assert d.weight.tolist() == [1.0, 1.0, 0.0]
    assert d.reason.tolist() == ["", "", "below_class_threshold"]
    assert d.negative[1].tolist() == [False, False, True]


def test_argmax_never_negative():
    # C = 25, all 0.04: every class passes the negative test, argmax (class 0) is excluded
    d = UncertaintyPolicy(25).select(batch([[[0.04] * 25] * 3]))
    assert d.negative[0].tolist() == [False] + [True] * 24


def test_needs_views():
    policy = UncertaintyPolicy(2)
    with pytest.raises(ConfigError, match="views"):
        policy.select(PolicyBatch(probs=np.array([[0.5, 0.5]]), ids=["a"]))
    with pytest.raises(InvalidInput):
        policy.select(PolicyBatch(probs=np.array([[0.5, 0.5]]), ids=["a"], views=np.full((1, 1, 2), 0.5)))

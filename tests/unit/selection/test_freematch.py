"""FreeMatch against hand-computed values (C = 2, m = 0.9 per batch)."""

import numpy as np
import pytest

from pseudostream.server.selection import FreeMatchPolicy, PolicyBatch


def batch(rows):
    return PolicyBatch(probs=np.array(rows, float), ids=[str(i) for i in range(len(rows))])


def test_two_batches_by_hand():
    policy = FreeMatchPolicy(2, momentum=0.9)
    # init: tau_g = 1/C = 0.5, p_tilde = [0.5, 0.5]
    np.testing.assert_allclose(policy.thresholds(), [0.5, 0.5])

    # batch 1: conf [0.8, 0.6], mean 0.7; mean p = [0.6, 0.4]; updated first:
    # tau_g   = 0.9 * 0.5 + 0.1 * 0.7 = 0.52
    # p_tilde = 0.9 * [0.5, 0.5] + 0.1 * [0.6, 0.4] = [0.51, 0.49]
    # thresholds = 0.52 * [0.51, 0.49] / 0.51 = [0.52, 0.52 * 0.49 / 0.51 = 0.4996078...]
    d = policy.select(batch([[0.8, 0.2], [0.4, 0.6]]))
    assert policy.tau_g == pytest.approx(0.52)
    np.testing.assert_allclose(policy.p_tilde, [0.51, 0.49])
    np.testing.assert_allclose(policy.thresholds(), [0.52, 0.2548 / 0.51], rtol=1e-6)
    assert d.accept.tolist() == [True, True]  # 0.8 >= 0.52, 0.6 >= 0.4996
    np.testing.assert_allclose(d.threshold, [0.52, 0.2548 / 0.51], rtol=1e-6)
    assert d.label.tolist() == [0, 1]

    # batch 2: conf [0.52, 0.7], mean 0.61; mean p = [0.41, 0.59]
    # tau_g   = 0.9 * 0.52 + 0.1 * 0.61 = 0.468 + 0.061 = 0.529
    # p_tilde = 0.9 * [0.51, 0.49] + 0.1 * [0.41, 0.59] = [0.5, 0.5]  -> thresholds [0.529, 0.529]
    d = policy.select(batch([[0.52, 0.48], [0.3, 0.7]]))
    assert policy.tau_g == pytest.approx(0.529)
    np.testing.assert_allclose(policy.p_tilde, [0.5, 0.5])
    assert d.accept.tolist() == [False, True]  # 0.52 < 0.529 (the update came first)
    assert d.reason.tolist() == ["below_class_threshold", ""]
    assert d.weight.tolist() == [0.0, 1.0]


def test_quantile_and_clip():
    # quantile 0.8 of conf [0.6, 0.8, 1.0]: position 0.8 * 2 = 1.6 -> 0.8 + 0.6 * 0.2 = 0.92
    # tau_g = 0.9 * 0.5 + 0.1 * 0.92 = 0.542
    policy = FreeMatchPolicy(2, momentum=0.9, quantile=0.8)
    policy.select(batch([[0.6, 0.4], [0.2, 0.8], [1.0, 0.0]]))
    assert policy.tau_g == pytest.approx(0.542)

    # m = 0: tau_g = mean conf = 0.99, clipped to 0.95
    clipped = FreeMatchPolicy(2, momentum=0.0, clip=0.95)
    clipped.select(batch([[0.99, 0.01], [0.01, 0.99]]))
    assert clipped.tau_g == pytest.approx(0.95)


def test_per_sample_momentum():
    # m_sample = 0.9, B = 2 -> m_batch = 0.81; tau_g = 0.81 * 0.5 + 0.19 * 0.7 = 0.405 + 0.133 = 0.538
    policy = FreeMatchPolicy(2, momentum_per_sample=0.9)
    policy.select(batch([[0.8, 0.2], [0.4, 0.6]]))
    assert policy.tau_g == pytest.approx(0.538)


def test_published_default_momentum():
    # default 0.999 per batch: tau_g = 0.999 * 0.5 + 0.001 * 0.7 = 0.5002
    policy = FreeMatchPolicy(2)
    policy.select(batch([[0.8, 0.2], [0.4, 0.6]]))
    assert policy.tau_g == pytest.approx(0.5002)

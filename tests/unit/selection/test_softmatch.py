"""SoftMatch against hand-computed values (C = 2, n_sigma = 2: w = exp(-2 d^2 / var))."""

import math

import numpy as np
import pytest

from pseudostream.server.selection import PolicyBatch, SoftMatchPolicy


def batch(rows):
    return PolicyBatch(probs=np.array(rows, float), ids=[str(i) for i in range(len(rows))])


def test_global_gaussian_two_batches():
    policy = SoftMatchPolicy(2, momentum=0.5, dist_align=False)
    rows = [[0.9, 0.1], [0.5, 0.5], [0.3, 0.7]]
    # conf [0.9, 0.5, 0.7]: mean 0.7, unbiased var (0.2^2 + 0.2^2 + 0) / 2 = 0.04
    # mu  = 0.5 * 0.5 + 0.5 * 0.7  = 0.6  (init 1/C)
    # var = 0.5 * 1   + 0.5 * 0.04 = 0.52 (init 1)
    # w = exp(-min(conf - mu, 0)^2 / (2 var / 4)); sample 1: d = -0.1 -> exp(-2 * 0.01 / 0.52)
    d = policy.select(batch(rows))
    assert float(policy.mu) == pytest.approx(0.6)
    assert float(policy.var) == pytest.approx(0.52)
    np.testing.assert_allclose(d.weight, [1.0, math.exp(-0.02 / 0.52), 1.0], rtol=1e-6)
    assert d.accept.all()
    np.testing.assert_allclose(d.threshold, [0.6, 0.6, 0.6])
    np.testing.assert_allclose(policy.thresholds(), [0.6, 0.6])

    # same batch again: mu = 0.5 * 0.6 + 0.5 * 0.7 = 0.65; var = 0.5 * 0.52 + 0.5 * 0.04 = 0.28
    # sample 1: d = -0.15 -> exp(-2 * 0.0225 / 0.28); sample 2: conf 0.7 >= 0.65 -> 1
    d = policy.select(batch(rows))
    np.testing.assert_allclose(d.weight, [1.0, math.exp(-0.045 / 0.28), 1.0], rtol=1e-6)


def test_min_weight_rejects_low_weight():
    # first batch as above: sample 1 weight exp(-0.02 / 0.52) = 0.96227
    policy = SoftMatchPolicy(2, momentum=0.5, dist_align=False, min_weight=0.97)
    d = policy.select(batch([[0.9, 0.1], [0.5, 0.5], [0.3, 0.7]]))
    assert d.accept.tolist() == [True, False, True]
    assert d.reason.tolist() == ["", "low_weight", ""]
    assert d.weight[1] == 0.0


def test_uniform_alignment_weights_but_raw_label():
    # p_model = first batch mean = [0.85, 0.15]; UA(p) = p * 0.5 / p_model, renormalized
    #   sample 0: [0.9/0.85, 0.1/0.15] = [18/17, 2/3] -> q0 = 54 / 88 = 27/44 = 0.61364 (class 0)
    #   sample 1: [0.8/0.85, 0.2/0.15] = [16/17, 4/3] -> q1 = 68 / 116 = 17/29 = 0.58621 (class 1)
    # mu = 0.5 * 0.5 + 0.5 * (27/44 + 17/29) / 2
    # var = 0.5 * 1 + 0.5 * (27/44 - 17/29)^2 / 2,  27/44 - 17/29 = 35/1276
    rows = [[0.9, 0.1], [0.8, 0.2]]
    policy = SoftMatchPolicy(2, momentum=0.5)
    d = policy.select(batch(rows))
    q = [27 / 44, 17 / 29]
    assert float(policy.mu) == pytest.approx(0.25 + 0.25 * sum(q), rel=1e-5)
    assert float(policy.var) == pytest.approx(0.5 + 0.25 * (35 / 1276) ** 2, rel=1e-5)
    np.testing.assert_allclose(d.confidence, q, rtol=1e-5)
    assert d.label.tolist() == [0, 0]  # USB: the label comes from the unaligned p

    aligned_labels = SoftMatchPolicy(2, momentum=0.5, label_from_aligned=True).select(batch(rows))
    assert aligned_labels.label.tolist() == [0, 1]


def test_per_class_updates_only_classes_with_two_samples():
    policy = SoftMatchPolicy(2, momentum=0.5, dist_align=False, per_class=True)
    # class 0 confs [0.9, 0.9, 0.6]: mean 0.8, var (0.01 + 0.01 + 0.04) / 2 = 0.03
    #   mu0 = 0.5 * 0.5 + 0.5 * 0.8 = 0.65; var0 = 0.5 + 0.015 = 0.515
    # class 1: one sample -> unchanged (mu1 = 0.5, var1 = 1)
    # sample 2 (class 0, 0.6): d = -0.05 -> exp(-2 * 0.0025 / 0.515); sample 3 (class 1, 0.6 >= 0.5) -> 1
    d = policy.select(batch([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.4, 0.6]]))
    np.testing.assert_allclose(policy.mu, [0.65, 0.5])
    np.testing.assert_allclose(policy.var, [0.515, 1.0])
    np.testing.assert_allclose(d.weight, [1.0, 1.0, math.exp(-0.005 / 0.515), 1.0], rtol=1e-6)
    np.testing.assert_allclose(d.threshold, [0.65, 0.65, 0.65, 0.5])


def test_batch_of_one_keeps_variance():
    policy = SoftMatchPolicy(2, momentum=0.5, dist_align=False)
    policy.select(batch([[0.9, 0.1]]))  # mu = 0.25 + 0.45 = 0.7; var needs two samples
    assert float(policy.mu) == pytest.approx(0.7)
    assert float(policy.var) == 1.0

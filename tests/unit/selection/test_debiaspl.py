"""DebiasPL against hand-computed values (C = 2, tau = 0.7, tau_la = 0.4, m = 0.9)."""

import math

import numpy as np
import pytest

from pseudostream.server.errors import ConfigError
from pseudostream.server.selection import DebiasPLPolicy, PolicyBatch


def batch(logits):
    z = np.array(logits, float)
    p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    return PolicyBatch(probs=p, ids=[str(i) for i in range(len(z))], logits=z)


def sigmoid(x):
    return 1.0 / (1.0 + math.exp(-x))


def run_two_batches():
    policy = DebiasPLPolicy(2, momentum=0.9)
    # q_hat uniform: z - 0.4 log q_hat shifts both classes equally, p_deb = softmax(z)
    # z = [2, 0] -> sigmoid(2) = 0.88080 (accept); z = [0.5, 0] -> sigmoid(0.5) = 0.62246 (reject)
    first = policy.select(batch([[2.0, 0.0], [0.5, 0.0]]))
    # q_hat = 0.9 * 0.5 + 0.1 * mean softmax(z)
    #       = 0.45 + 0.1 * [(0.88080 + 0.62246) / 2, (0.11920 + 0.37754) / 2]
    #       = [0.45 + 0.075163, 0.45 + 0.024837] = [0.525163, 0.474837]
    # z = [0.86, 0]: debiased margin 0.86 - 0.4 * (log 0.525163 - log 0.474837) = 0.81971
    #   -> p_deb = sigmoid(0.81971) = 0.69417 < 0.7: rejected (raw sigmoid(0.86) = 0.70266 would pass)
    second = policy.select(batch([[0.86, 0.0]]))
    return policy, first, second


def test_two_batches_by_hand():
    policy, first, second = run_two_batches()
    assert first.accept.tolist() == [True, False]
    np.testing.assert_allclose(first.confidence, [sigmoid(2.0), sigmoid(0.5)], rtol=1e-6)
    s0, s1 = sigmoid(2.0), sigmoid(0.5)
    q0 = 0.45 + 0.1 * (s0 + s1) / 2
    q1 = 0.45 + 0.1 * ((1 - s0) + (1 - s1)) / 2
    assert second.accept.tolist() == [False]
    margin = 0.86 - 0.4 * (math.log(q0) - math.log(q1))
    assert second.confidence[0] == pytest.approx(sigmoid(margin), rel=1e-6)
    assert second.confidence[0] == pytest.approx(0.69417, abs=1e-5)


def test_per_class_marginal_matters():
    # USB's port updates a scalar q_hat with probs.mean(), which is always 1/C, so its q_hat stays
    # uniform and p_deb = softmax(z): sigmoid(0.86) = 0.70266 >= 0.7 would be accepted.
    _, _, second = run_two_batches()
    scalar_port_confidence = sigmoid(0.86)
    assert scalar_port_confidence >= 0.7
    assert not second.accept[0]


def test_label_is_debiased_argmax():
    policy = DebiasPLPolicy(2, tau=0.0, tau_la=1.0, momentum=0.0)
    # m = 0: q_hat = softmax([3, 0]) = [0.95257, 0.04743]; z = [1, 0] debiased by
    # -log q_hat: margin 1 - (log 0.95257 - log 0.04743) = 1 - 3 = -2 -> class 1 wins
    policy.select(batch([[3.0, 0.0]]))
    d = policy.select(batch([[1.0, 0.0]]))
    assert d.label.tolist() == [1]
    assert d.confidence[0] == pytest.approx(sigmoid(2.0), rel=1e-6)


def test_needs_logits():
    policy = DebiasPLPolicy(2)
    no_logits = PolicyBatch(probs=np.array([[0.5, 0.5]]), ids=["a"])
    with pytest.raises(ConfigError, match="logits"):
        policy.select(no_logits)

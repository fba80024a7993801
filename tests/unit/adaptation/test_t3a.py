"""T3A against a hand computation (matsuolab/T3A, domainbed/adapt_algorithms.py)."""

from __future__ import annotations

import json
import math

import numpy as np

from pseudostream.server.adaptation import ADAPTERS, AdapterInput, T3AAdapter

R = 1 / math.sqrt(2)
PROBS = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])
FEATS = np.array([[3.0, 4.0], [0.0, 2.0], [1.0, -1.0]])


def h(p):
    return -sum(q * math.log(q) for q in p)


def test_prototypes_match_hand_computation():
    adapter = T3AAdapter(2, head_weight=np.eye(2), filter_k=-1)
    out = adapter.adapt(AdapterInput(PROBS, features=FEATS))
    # class 0: head row e1 + [3,4]/5 + [1,-1]/sqrt2; class 1: e2 + [0,2]/2
    s0 = np.array([1 + 0.6 + R, 0.8 - R])
    w0 = s0 / math.hypot(*s0)
    w1 = np.array([0.0, 1.0])
    np.testing.assert_allclose(adapter.prototypes(), [w0, w1], atol=1e-12)
    logits = np.array([[z @ w0, z @ w1] for z in FEATS])
    expected = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(out, expected, atol=1e-12)
    np.testing.assert_allclose(out.sum(axis=1), 1.0)


def test_filter_keeps_lowest_entropy_supports():
    adapter = ADAPTERS.get("t3a")(2, head_weight=np.eye(2), filter_k=1)
    adapter.adapt(AdapterInput(PROBS, features=FEATS))
    # warm-up entropies: softmax([1, 0]) -> h(0.731, 0.269) = 0.582 for both head rows
    e = math.exp(1) / (1 + math.exp(1))
    assert h([0.9, 0.1]) < h([0.6, 0.4]) and h([0.9, 0.1]) < h([e, 1 - e])
    assert h([0.2, 0.8]) < h([e, 1 - e])
    state = adapter.state_dict()
    assert state["labels"] == [0, 1]
    np.testing.assert_allclose(state["supports"], [[0.6, 0.8], [0.0, 1.0]], atol=1e-12)
    np.testing.assert_allclose(state["entropy"], [h([0.9, 0.1]), h([0.2, 0.8])], atol=1e-12)


def test_filter_k_two_keeps_two_per_class_and_reset():
    adapter = T3AAdapter(2, head_weight=np.eye(2), filter_k=2)
    adapter.adapt(AdapterInput(PROBS, features=FEATS))
    labels = adapter.state_dict()["labels"]
    assert sorted(labels) == [0, 0, 1, 1]  # class 0 drops the 0.6/0.4 sample (highest entropy)
    np.testing.assert_allclose(adapter.state_dict()["supports"][:2], [[0.6, 0.8], [1.0, 0.0]],
                               atol=1e-12)
    adapter.reset()
    np.testing.assert_allclose(adapter.state_dict()["supports"], np.eye(2))


def test_state_round_trip():
    rng = np.random.default_rng(0)
    w = rng.normal(size=(3, 4))
    adapter = T3AAdapter(3, head_weight=w, head_bias=[0.1, 0.0, -0.1], filter_k=5)
    for _ in range(3):
        z = rng.normal(size=(8, 4))
        adapter.adapt(AdapterInput(np.exp(z @ w.T) / np.exp(z @ w.T).sum(1, keepdims=True),
                                   features=z))
    other = T3AAdapter(3, head_weight=w, filter_k=5)
    other.load_state_dict(json.loads(json.dumps(adapter.state_dict())))
    z = rng.normal(size=(4, 4))
    batch = AdapterInput(np.full((4, 3), 1 / 3), features=z)
    np.testing.assert_array_equal(other.adapt(batch), adapter.adapt(batch))

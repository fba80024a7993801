"""LAME (fiveai/LAME, src/adaptation/lame.py): gated off on i.i.d. batches, smooths correlated ones."""

from __future__ import annotations

import json

import numpy as np

from pseudostream.server.adaptation import ADAPTERS, AdapterInput, LAMEAdapter
from pseudostream.server.adaptation.lame import knn_affinity


def test_iid_batch_is_returned_unchanged():
    rng = np.random.default_rng(0)
    p = np.tile(np.eye(3) * 0.8 + 0.1, (20, 1))  # balanced predictions: KL 0 from the prior
    adapter = LAMEAdapter(3)
    out = adapter.adapt(AdapterInput(p, features=rng.normal(size=(60, 4))))
    np.testing.assert_array_equal(out, p)
    assert adapter.last_kl < 1e-12


def test_correlated_batch_moves_toward_neighbour_consensus():
    rng = np.random.default_rng(1)
    # nine confident class-0 samples and one noisy sample, all in one tight feature cluster
    feats = np.array([1.0, 0.0, 0.0]) + 0.01 * rng.normal(size=(10, 3))
    p = np.tile([0.8, 0.1, 0.1], (10, 1))
    p[9] = [0.35, 0.45, 0.2]  # the noisy one predicts class 1
    adapter = ADAPTERS.get("lame")(3)
    out = adapter.adapt(AdapterInput(p, features=feats))
    assert adapter.last_kl > 0.5  # 0.9 ln 2.7 + 0.1 ln 0.3 = 0.77
    assert out[9].argmax() == 0 and out[9, 0] > p[9, 0]
    assert np.all(out[:9, 0] > p[:9, 0])
    np.testing.assert_allclose(out.sum(axis=1), 1.0)
    # a fixed point of Y = softmax(log p + K Y)
    kernel = knn_affinity(feats / np.linalg.norm(feats, axis=1, keepdims=True), 5)
    logits = np.log(p + 1e-10) + kernel @ out
    fixed = np.exp(logits - logits.max(1, keepdims=True))
    np.testing.assert_allclose(out, fixed / fixed.sum(1, keepdims=True), atol=1e-5)


def test_knn_affinity_by_hand():
    x = np.array([[0.0], [1.0], [3.0], [7.0]])
    np.testing.assert_array_equal(knn_affinity(x, 1), [[0, 1, 0, 0], [1, 0, 0, 0],
                                                       [0, 1, 0, 0], [0, 0, 1, 0]])


def test_prior_state_round_trip_and_reset():
    adapter = LAMEAdapter(3)
    p = np.tile([0.8, 0.1, 0.1], (4, 1))
    adapter.adapt(AdapterInput(p, features=np.eye(4, 3)))
    np.testing.assert_allclose(adapter.prior, 0.9 / 3 + 0.1 * np.array([0.8, 0.1, 0.1]))
    other = LAMEAdapter(3)
    other.load_state_dict(json.loads(json.dumps(adapter.state_dict())))
    np.testing.assert_array_equal(other.prior, adapter.prior)
    adapter.reset()
    np.testing.assert_allclose(adapter.prior, np.full(3, 1 / 3))

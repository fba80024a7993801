"""Feature shift (FOA's shift-only variant): an offset test stream is mapped back to the source."""

from __future__ import annotations

import json

import numpy as np

from pseudostream.server.adaptation import ADAPTERS, AdapterInput, FeatureShiftAdapter


def test_constant_offset_is_undone():
    rng = np.random.default_rng(0)
    w, b = rng.normal(size=(3, 4)), rng.normal(size=3)
    source = rng.normal(size=(64, 4))
    source -= source.mean(axis=0)  # each batch below has the source mean
    offset = np.array([2.0, -1.0, 0.5, 3.0])
    adapter = ADAPTERS.get("feature_shift")(3, head_weight=w, head_bias=b, source_mean=np.zeros(4))
    for _ in range(5):
        adapter.adapt(AdapterInput(np.full((64, 3), 1 / 3), features=source + offset))
    np.testing.assert_allclose(adapter.logits(source + offset), source @ w.T + b, atol=1e-12)


def test_ema_converges_with_a_differing_first_batch():
    w = np.eye(2)
    adapter = FeatureShiftAdapter(2, head_weight=w, source_mean=[0.0, 0.0])
    adapter.adapt(AdapterInput(np.full((1, 2), 0.5), features=[[0.0, 0.0]]))
    z = np.array([[1.0, 1.0], [3.0, 1.0]])  # mean (2, 1): the offset
    for _ in range(200):
        out = adapter.adapt(AdapterInput(np.full((2, 2), 0.5), features=z))
    np.testing.assert_allclose(adapter.test_mean, [2.0, 1.0], atol=1e-8)
    expected = np.exp([[-1.0, 0.0], [1.0, 0.0]])
    np.testing.assert_allclose(out, expected / expected.sum(1, keepdims=True), atol=1e-8)


def test_state_round_trip_and_reset():
    adapter = FeatureShiftAdapter(2, head_weight=np.eye(2), source_mean=[0.0, 0.0])
    adapter.adapt(AdapterInput(np.full((2, 2), 0.5), features=[[1.0, 2.0], [3.0, 4.0]]))
    other = FeatureShiftAdapter(2, head_weight=np.eye(2), source_mean=[0.0, 0.0])
    other.load_state_dict(json.loads(json.dumps(adapter.state_dict())))
    np.testing.assert_array_equal(other.test_mean, [2.0, 3.0])
    adapter.reset()
    assert adapter.test_mean is None

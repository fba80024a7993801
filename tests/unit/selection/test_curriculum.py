"""Curriculum Labeling against hand-computed percentiles (np.percentile, linear)."""

import numpy as np
import pytest

from pseudostream.server.selection import CurriculumPolicy, PolicyBatch


def batch(confs):
    return PolicyBatch(probs=np.array([[c, 1 - c] for c in confs]), ids=[str(c) for c in confs])


def test_two_stages_over_a_rolling_window():
    policy = CurriculumPolicy(2, window=8, stage_samples=5, step_percent=20)
    # batch 1 joins the window first; seen = 5 -> stage 1 -> percentile 100 - 20 = 80
    # sorted [0.5, 0.6, 0.7, 0.8, 0.9]: position 0.8 * 4 = 3.2 -> 0.8 + 0.2 * 0.1 = 0.82
    d = policy.select(batch([0.5, 0.6, 0.7, 0.8, 0.9]))
    assert policy.stage == 1
    np.testing.assert_allclose(d.threshold, 0.82, rtol=1e-6)
    assert d.accept.tolist() == [False, False, False, False, True]

    # batch 2: seen = 10 -> stage 2 -> percentile 60; window keeps the last 8:
    # [0.7, 0.8, 0.9, 0.55, 0.65, 0.75, 0.85, 0.95] sorted [0.55, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95]
    # position 0.6 * 7 = 4.2 -> 0.8 + 0.2 * 0.05 = 0.81
    d = policy.select(batch([0.55, 0.65, 0.75, 0.85, 0.95]))
    assert policy.stage == 2
    np.testing.assert_allclose(policy.thresholds(), [0.81, 0.81], rtol=1e-6)
    assert d.accept.tolist() == [False, False, False, True, True]
    assert policy.state_dict()["window"] == pytest.approx([0.7, 0.8, 0.9, 0.55, 0.65, 0.75, 0.85, 0.95])


def test_last_stage_keeps_everything():
    # stage_samples = 1, seen = 5 -> k = min(5, 100 / 20 = 5) -> percentile 0 = the window minimum
    policy = CurriculumPolicy(2, window=8, stage_samples=1)
    d = policy.select(batch([0.5, 0.6, 0.7, 0.8, 0.9]))
    assert policy.stage == 5
    assert d.accept.all()
    policy.select(batch([0.99] * 10))  # stage stays capped at 5
    assert policy.stage == 5


def test_empty_window_threshold_is_one():
    np.testing.assert_array_equal(CurriculumPolicy(3).thresholds(), [1.0, 1.0, 1.0])

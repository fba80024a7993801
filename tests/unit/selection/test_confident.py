"""Confident learning's running per-class thresholds against hand-computed values (C = 3)."""

import numpy as np
import pytest

from pseudostream.server.selection import ConfidentLearningPolicy, PolicyBatch
from pseudostream.server.selection.confident import UNSEEN_THRESHOLD


def batch(pairs):
    rows = []
    for k, c in pairs:
        row = [(1 - c) / 2] * 3
        row[k] = c
        rows.append(row)
    return PolicyBatch(probs=np.array(rows), ids=[str(i) for i in range(len(rows))])


def test_running_mean_by_hand():
    policy = ConfidentLearningPolicy(3)
    # nothing seen: every class's threshold is 2 (cleanlab's BIG_VALUE): the first batch is rejected
    d = policy.select(batch([(0, 0.9), (0, 0.7), (1, 0.6)]))
    assert not d.accept.any()
    # t0 = (0.9 + 0.7) / 2 = 0.8 (n 2); t1 = 0.6 (n 1); class 2 unseen
    np.testing.assert_allclose(policy.thresholds(), [0.8, 0.6, UNSEEN_THRESHOLD])

    d = policy.select(batch([(0, 0.85), (0, 0.75), (1, 0.6), (2, 0.99)]))
    assert d.accept.tolist() == [True, False, True, False]  # 0.85 >= 0.8, 0.75 < 0.8, 0.6 >= 0.6, unseen
    # t0 = (2 * 0.8 + 0.85 + 0.75) / 4 = 0.8; t1 = (1 * 0.6 + 0.6) / 2 = 0.6; t2 = 0.99
    np.testing.assert_allclose(policy.thresholds(), [0.8, 0.6, 0.99], rtol=1e-6)
    assert policy.state_dict()["n"] == [4, 2, 1]


def test_max_count_forgets():
    capped, plain = ConfidentLearningPolicy(3, max_count=1), ConfidentLearningPolicy(3)
    for conf in (0.9, 0.7, 0.6):
        capped.select(batch([(0, conf)]))
        plain.select(batch([(0, conf)]))
    # capped: 0.9 -> (0.9 + 0.7) / 2 = 0.8 -> (0.8 + 0.6) / 2 = 0.7
    # plain:  (0.9 + 0.7 + 0.6) / 3 = 0.73333
    assert capped.thresholds()[0] == pytest.approx(0.7)
    assert plain.thresholds()[0] == pytest.approx(2.2 / 3)

"""Multi-label selection against hand-computed thresholds (C = 2, m = 0.9)."""

import numpy as np
import pytest

from pseudostream.server.selection import MultiLabelPolicy, PolicyBatch


def batch(rows):
    return PolicyBatch(probs=np.array(rows, float), ids=[str(i) for i in range(len(rows))])


def test_positive_ema_and_fixed_negatives():
    policy = MultiLabelPolicy(2, momentum=0.9)
    rows = [[0.9, 0.02], [0.7, 0.3], [0.4, 0.6], [0.3, 0.5]]
    # updated first; predicted positives (p >= 0.5):
    #   class 0: [0.9, 0.7] mean 0.8 -> tau+0 = 0.9 * 0.5 + 0.1 * 0.8 = 0.53
    #   class 1: [0.6, 0.5] mean 0.55 -> tau+1 = 0.9 * 0.5 + 0.1 * 0.55 = 0.505
    d = policy.select(batch(rows))
    np.testing.assert_allclose(policy.thresholds(), [0.53, 0.505], rtol=1e-6)
    # 0: 0.9 >= 0.53 positive, 0.02 <= 0.05 negative; conf mean(0.9, 0.98) = 0.94
    # 1: 0.7 positive, 0.3 unknown; conf 0.7
    # 2: 0.4 unknown, 0.6 >= 0.505 positive; conf 0.6
    # 3: 0.3 unknown, 0.5 < 0.505 unknown -> rejected; conf mean(0.7, 0.5) = 0.6 over all classes
    assert d.positive.tolist() == [[True, False], [True, False], [False, True], [False, False]]
    assert d.negative.tolist() == [[False, True], [False, False], [False, False], [False, False]]
    assert d.accept.tolist() == [True, True, True, False]
    assert d.reason.tolist() == ["", "", "", "all_unknown"]
    assert d.label.tolist() == [-1, -1, -1, -1]
    np.testing.assert_allclose(d.confidence, [0.94, 0.7, 0.6, 0.6], rtol=1e-6)
    np.testing.assert_allclose(d.threshold, (0.53 + 0.505) / 2, rtol=1e-6)


def test_negative_quota_and_positive_precedence():
    policy = MultiLabelPolicy(2, momentum=0.9, neg_quota=0.5, window=4)
    rows = [[0.1, 0.6], [0.2, 0.7], [0.3, 0.8], [0.9, 0.05]]
    # tau-0 = median [0.1, 0.2, 0.3, 0.9] = 0.25;  tau-1 = median [0.05, 0.6, 0.7, 0.8] = 0.65
    # tau+0 = 0.45 + 0.1 * 0.9 = 0.54;  tau+1 = 0.45 + 0.1 * mean(0.6, 0.7, 0.8) = 0.52
    # class 1: 0.6 <= 0.65 but 0.6 >= 0.52 is positive, so not negative
    d = policy.select(batch(rows))
    np.testing.assert_allclose(policy.thresholds(), [0.54, 0.52], rtol=1e-6)
    assert d.positive.tolist() == [[False, True], [False, True], [False, True], [True, False]]
    assert d.negative.tolist() == [[True, False], [True, False], [False, False], [False, True]]


def test_class_without_positives_keeps_threshold():
    policy = MultiLabelPolicy(2, momentum_per_sample=0.5)
    # class 0 two positives [0.9, 0.7]: m = 0.5^2 = 0.25 -> 0.25 * 0.5 + 0.75 * 0.8 = 0.725
    policy.select(batch([[0.9, 0.1], [0.7, 0.2]]))
    assert policy.thresholds()[0] == pytest.approx(0.725)
    assert policy.thresholds()[1] == 0.5

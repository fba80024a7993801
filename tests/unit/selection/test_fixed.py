"""FixMatch's fixed threshold against hand-picked values."""

import numpy as np

from pseudostream.server.selection import FixedThresholdPolicy, PolicyBatch


def test_fixed_threshold():
    # conf [0.95, 0.949, 0.6]: >= 0.95 accepts only the first; the policy is stateless
    probs = np.array([[0.95, 0.05], [0.051, 0.949], [0.4, 0.6]])
    policy = FixedThresholdPolicy(2)
    d = policy.select(PolicyBatch(probs=probs, ids=["a", "b", "c"]))
    assert d.accept.tolist() == [True, False, False]
    assert d.label.tolist() == [0, 1, 1]
    assert d.reason.tolist() == ["", "below_class_threshold", "below_class_threshold"]
    np.testing.assert_allclose(policy.thresholds(), [0.95, 0.95])

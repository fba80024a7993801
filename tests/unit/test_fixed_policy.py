"""FixMatch's fixed threshold against hand-computed decisions."""

from __future__ import annotations

import numpy as np
import pytest

from pseudostream.server.errors import ConfigError
from pseudostream.server.selection import FixedThresholdPolicy, PolicyBatch, make_policy


def test_fixed_threshold_accepts_at_or_above_tau():
    probs = np.array([[0.96, 0.04], [0.50, 0.50], [0.05, 0.95], [0.10, 0.90]], np.float32)
    policy = FixedThresholdPolicy(2, tau=0.95)
    d = policy.select(PolicyBatch(probs, ids=["a", "b", "c", "d"]))
    # max p: 0.96, 0.50, 0.95, 0.90 -> accept, reject, accept (>=), reject
    assert d.accept.tolist() == [True, False, True, False]
    assert d.label.tolist() == [0, 0, 1, 1]
    assert d.confidence.tolist() == pytest.approx([0.96, 0.50, 0.95, 0.90])
    assert d.weight.tolist() == [1.0, 0.0, 1.0, 0.0]
    assert d.threshold.tolist() == pytest.approx([0.95] * 4)
    assert d.reason.tolist() == ["", "below_class_threshold", "", "below_class_threshold"]
    assert policy.thresholds().tolist() == pytest.approx([0.95, 0.95])


def test_fixed_policy_is_stateless_and_round_trips():
    policy = make_policy("fixed", 3, {"tau": 0.7})
    twin = make_policy("fixed", 3)
    twin.load_state_dict(policy.state_dict())
    probs = np.random.default_rng(0).dirichlet(np.ones(3), size=50)
    a, b = policy.select(PolicyBatch(probs, ids=[str(i) for i in range(50)])), twin.decide(
        PolicyBatch(probs, ids=[str(i) for i in range(50)]))
    assert np.array_equal(a.accept, b.accept) and a.accept.sum() == (probs.max(1) >= 0.7).sum()


def test_bad_parameters_and_unknown_policies_are_config_errors():
    with pytest.raises(ConfigError, match=r"tau must be in \[0, 1\]"):
        make_policy("fixed", 2, {"tau": 1.5})
    with pytest.raises(ConfigError, match="bad parameters"):
        make_policy("fixed", 2, {"threshold": 0.9})
    with pytest.raises(ConfigError, match="known: .*fixed"):
        make_policy("no-such-policy", 2)

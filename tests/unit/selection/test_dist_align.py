"""Distribution alignment and the aligned-policy wrapper against hand-computed values (C = 2)."""

import numpy as np
import pytest

from pseudostream.server.errors import ConfigError
from pseudostream.server.selection import (
    AlignedPolicy,
    DistributionAlignment,
    FixedThresholdPolicy,
    PolicyBatch,
)


def test_alignment_by_hand():
    align = DistributionAlignment(2, momentum=0.5)
    # first batch: p_model = its mean [0.8, 0.2]; sample 0: [0.9 * 0.5 / 0.8, 0.1 * 0.5 / 0.2]
    #   = [0.5625, 0.25] -> [9/13, 4/13]
    q = align(np.array([[0.9, 0.1], [0.7, 0.3]]))
    np.testing.assert_allclose(q[0], [9 / 13, 4 / 13], rtol=1e-5)
    # second: p_model = 0.5 * [0.8, 0.2] + 0.5 * [0.6, 0.4] = [0.7, 0.3]
    #   [0.6 / 0.7, 0.4 / 0.3] = [18/21, 28/21] -> [18/46, 28/46] = [9/23, 14/23]
    q = align(np.array([[0.6, 0.4]]))
    np.testing.assert_allclose(align.p_model, [0.7, 0.3])
    np.testing.assert_allclose(q[0], [9 / 23, 14 / 23], rtol=1e-5)


def test_prior_target():
    align = DistributionAlignment(2, momentum=0.5, target=[4, 1])  # normalized to [0.8, 0.2]
    # p_model = [0.5, 0.5]; q = [0.5 * 0.8 / 0.5, 0.5 * 0.2 / 0.5] = [0.8, 0.2]
    q = align(np.array([[0.5, 0.5]]))
    np.testing.assert_allclose(q[0], [0.8, 0.2], rtol=1e-5)
    with pytest.raises(ConfigError):
        DistributionAlignment(2, target=[1.0, 1.0, 1.0])


class Recorder(FixedThresholdPolicy):
    """A fixed policy that keeps the batches it was given."""

    def decide(self, batch):
        self.seen = batch
        return super().decide(batch)


def test_aligned_policy_flips_labels_and_keeps_logits_consistent():
    inner = Recorder(2, tau=0.6)
    policy = AlignedPolicy(inner, DistributionAlignment(2, momentum=0.5))
    z = np.log(np.array([[0.9, 0.1], [0.7, 0.3]]))
    batch = PolicyBatch(probs=np.exp(z), ids=["a", "b"], logits=z)
    # p_model = [0.8, 0.2]: sample 0 -> 9/13 = 0.692 (class 0); sample 1: [0.7/0.8, 0.3/0.2]
    #   = [0.875, 1.5] -> [7/19, 12/19] = 0.632 (class 1); both >= 0.6
    d = policy.select(batch)
    assert d.label.tolist() == [0, 1]
    np.testing.assert_allclose(d.confidence, [9 / 13, 12 / 19], rtol=1e-5)
    aligned_logits = inner.seen.logits
    softmax = np.exp(aligned_logits) / np.exp(aligned_logits).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(softmax, inner.seen.probs, rtol=1e-12)
    state = policy.state_dict()
    assert state["align"]["p_model"] == pytest.approx([0.8, 0.2])

"""FlexMatch against hand-computed values (C = 2, tau = 0.8, a 4-id memory)."""

import json

import numpy as np
import pytest

from pseudostream.server.selection import FlexMatchPolicy, PolicyBatch


def batch(rows, ids):
    return PolicyBatch(probs=np.array(rows, float), ids=ids)


def test_three_batches_with_warmup_and_eviction():
    policy = FlexMatchPolicy(2, tau=0.8, max_memory=4)  # expected_samples = 4
    # empty memory: sigma = [0, 0], #unused = 4, beta = [0, 0] -> tau * M(0) = 0: accept all
    np.testing.assert_allclose(policy.thresholds(), [0.0, 0.0])

    # batch 1: conf [0.9, 0.85, 0.7], yhat [0, 0, 1]; all accepted (thresholds 0).
    # conf >= 0.8: a -> 0, b -> 0. sigma = [2, 0]; #unused = 4 - 2 = 2; max(2, 2) = 2
    # beta = [1, 0]; thresholds = 0.8 * [1 / (2 - 1), 0] = [0.8, 0]
    d = policy.select(batch([[0.9, 0.1], [0.85, 0.15], [0.3, 0.7]], ["a", "b", "c"]))
    assert d.accept.tolist() == [True, True, True]
    np.testing.assert_allclose(policy.thresholds(), [0.8, 0.0])

    # batch 2: d (0.75, class 0) < 0.8 rejected; e (0.9, class 1), a (0.8, class 1) >= 0 accepted.
    # conf >= 0.8: e -> 1, a -> 1 (a moves from class 0 to 1). LRU order [b:0, e:1, a:1]
    # sigma = [1, 2]; #unused = 1; max(2, 1) = 2; beta = [0.5, 1]
    # thresholds = [0.8 * 0.5 / 1.5, 0.8 * 1 / 1] = [0.26667, 0.8]
    d = policy.select(batch([[0.75, 0.25], [0.1, 0.9], [0.2, 0.8]], ["d", "e", "a"]))
    assert d.accept.tolist() == [False, True, True]
    np.testing.assert_allclose(d.threshold, [0.8, 0.0, 0.0])
    np.testing.assert_allclose(policy.thresholds(), [0.8 / 3, 0.8], rtol=1e-6)

    # batch 3: f, g class 0 (0.95, 0.99) >= 0.26667 accepted; both recorded. g is the 5th id:
    # the oldest, b (class 0), is evicted. memory [e:1, a:1, f:0, g:0]; sigma = [2, 2]
    # #unused = 0; beta = [1, 1]; thresholds [0.8, 0.8]
    d = policy.select(batch([[0.95, 0.05], [0.99, 0.01]], ["f", "g"]))
    assert d.accept.tolist() == [True, True]
    assert policy.state_dict() == {"memory": [["e", 1], ["a", 1], ["f", 0], ["g", 0]]}
    np.testing.assert_allclose(policy.thresholds(), [0.8, 0.8])


def test_linear_mapping():
    # M(x) = (x + 1) / 2: beta 0 -> 0.8 * 0.5 = 0.4; after batch 1 of the test above, beta [1, 0]
    policy = FlexMatchPolicy(2, tau=0.8, max_memory=4, mapping="linear")
    np.testing.assert_allclose(policy.thresholds(), [0.4, 0.4])
    policy.select(batch([[0.9, 0.1], [0.85, 0.15], [0.3, 0.7]], ["a", "b", "c"]))
    np.testing.assert_allclose(policy.thresholds(), [0.8, 0.4])


@pytest.mark.parametrize(
    ("warmup", "expected"),
    [
        # warm-up, N = 10: sigma [2, 0], #unused 8 -> beta [2/8, 0]; 0.8 * 0.25 / 1.75 = 0.1142857
        (True, [0.8 * 0.25 / 1.75, 0.0]),
        # no warm-up: beta = sigma / max sigma = [1, 0] -> [0.8, 0]
        (False, [0.8, 0.0]),
    ],
)
def test_warmup_uses_expected_samples(warmup, expected):
    policy = FlexMatchPolicy(2, tau=0.8, max_memory=4, expected_samples=10, warmup=warmup)
    policy.select(batch([[0.9, 0.1], [0.85, 0.15], [0.3, 0.7]], ["a", "b", "c"]))
    np.testing.assert_allclose(policy.thresholds(), expected, rtol=1e-6)


def test_no_warmup_with_nothing_selected_is_zero():
    policy = FlexMatchPolicy(3, warmup=False)
    policy.select(batch([[0.5, 0.3, 0.2]], ["x"]))  # 0.5 < 0.95: nothing recorded
    np.testing.assert_array_equal(policy.thresholds(), [0.0, 0.0, 0.0])


def test_state_restores_counts():
    policy = FlexMatchPolicy(2, tau=0.8, max_memory=4)
    policy.select(batch([[0.9, 0.1], [0.2, 0.8]], ["a", "b"]))
    other = FlexMatchPolicy(2, tau=0.8, max_memory=4)
    other.load_state_dict(json.loads(json.dumps(policy.state_dict())))
    np.testing.assert_array_equal(other.thresholds(), policy.thresholds())

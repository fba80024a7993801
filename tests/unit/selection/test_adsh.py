"""Adsh against hand-computed per-class quantile thresholds (C = 3, tau1 = 0.9)."""

import numpy as np

from pseudostream.server.selection import AdshPolicy, PolicyBatch


def batch(pairs):
    """(class, conf) pairs -> rows with conf on the class and the rest split evenly (C = 3)."""
    rows = []
    for k, c in pairs:
        row = [(1 - c) / 2] * 3
        row[k] = c
        rows.append(row)
    return PolicyBatch(probs=np.array(rows), ids=[str(i) for i in range(len(rows))])


def test_thresholds_match_majority_share():
    policy = AdshPolicy(3, tau1=0.9, window=10)
    first = [(0, 0.99), (0, 0.95), (0, 0.92), (0, 0.85), (0, 0.80), (1, 0.8), (1, 0.7), (1, 0.6), (1, 0.5)]
    # before any data every class uses tau1 = 0.9
    d = policy.select(batch(first))
    assert d.accept.tolist() == [True, True, True, False, False, False, False, False, False]
    # majority class 0 (5 samples): 3 of 5 >= 0.9 -> rho = 3/5
    # class 0: floor(5 * 3/5) = 3 -> C_0[2] of [0.99, 0.95, 0.92, 0.85, 0.80] = 0.92
    # class 1: floor(4 * 3/5) = floor(2.4) = 2 -> C_1[1] of [0.8, 0.7, 0.6, 0.5] = 0.7
    # class 2: no data -> tau1
    np.testing.assert_allclose(policy.thresholds(), [0.92, 0.7, 0.9], rtol=1e-6)

    d = policy.select(batch([(0, 0.93), (0, 0.91), (1, 0.75), (1, 0.65), (2, 0.95)]))
    assert d.accept.tolist() == [True, False, True, False, True]
    np.testing.assert_allclose(d.threshold, [0.92, 0.92, 0.7, 0.7, 0.9], rtol=1e-6)


def test_too_few_samples_for_the_share_falls_back_to_tau1():
    policy = AdshPolicy(3, tau1=0.9)
    # majority class 0: [0.95, 0.85], rho = 1/2 -> class 0: floor(2 * 1/2) = 1 -> C_0[0] = 0.95
    # class 1: one sample, floor(1 * 1/2) = 0 < 1 -> tau1
    policy.select(batch([(0, 0.95), (0, 0.85), (1, 0.6)]))
    np.testing.assert_allclose(policy.thresholds(), [0.95, 0.9, 0.9], rtol=1e-6)


def test_rho_zero_gives_tau1_everywhere():
    policy = AdshPolicy(3, tau1=0.9)
    policy.select(batch([(0, 0.8), (0, 0.7), (1, 0.6)]))  # no majority sample >= 0.9
    np.testing.assert_allclose(policy.thresholds(), [0.9, 0.9, 0.9], rtol=1e-6)


def test_window_keeps_last_entries_per_class():
    policy = AdshPolicy(3, window=2)
    policy.select(batch([(0, 0.99), (1, 0.7), (0, 0.5), (0, 0.4)]))
    policy.select(batch([(1, 0.8), (1, 0.6)]))
    assert policy.state_dict() == {"windows": [[0.5, 0.4], [0.8, 0.6], []]}

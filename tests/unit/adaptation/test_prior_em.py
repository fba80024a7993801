"""prior_em against Saerens et al. (2002): EM recovers a known target prior from exact posteriors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pseudostream.server.adaptation import ADAPTERS, AdapterInput, PriorEMAdapter
from pseudostream.server.adaptation.prior_em import em_prior
from pseudostream.server.errors import ConfigError

MEANS = np.array([-2.0, 0.0, 2.0])


def gaussian_mixture(prior_draw, prior_posterior, n, seed=0):
    """Samples of a 1-d unit-variance mixture drawn with ``prior_draw``; their exact posteriors
    under ``prior_posterior`` (a calibrated classifier trained on that prior)."""
    rng = np.random.default_rng(seed)
    y = rng.choice(3, size=n, p=prior_draw)
    x = rng.normal(MEANS[y], 1.0)
    log_post = -0.5 * (x[:, None] - MEANS) ** 2 + np.log(prior_posterior)
    post = np.exp(log_post - log_post.max(axis=1, keepdims=True))
    return post / post.sum(axis=1, keepdims=True)


def test_em_recovers_known_target_prior():
    source, target = np.array([1 / 3, 1 / 3, 1 / 3]), np.array([0.6, 0.3, 0.1])
    probs = gaussian_mixture(target, source, 6000)
    adapter = PriorEMAdapter(3, source_prior=source, window=6000)
    out = adapter.adapt(AdapterInput(probs))
    np.testing.assert_allclose(adapter.target_prior, target, atol=0.03)
    np.testing.assert_allclose(out.sum(axis=1), 1.0, atol=1e-12)
    # the adapted rows are the exact posteriors under the estimated prior
    expected = probs * adapter.target_prior / source
    np.testing.assert_allclose(out, expected / expected.sum(axis=1, keepdims=True), atol=1e-12)


def test_non_uniform_source_prior():
    source, target = np.array([0.5, 0.3, 0.2]), np.array([0.1, 0.3, 0.6])
    probs = gaussian_mixture(target, source, 6000, seed=1)
    adapter = PriorEMAdapter(3, source_prior=source, window=6000)
    adapter.adapt(AdapterInput(probs))
    np.testing.assert_allclose(adapter.target_prior, target, atol=0.03)


def test_target_equal_to_source_is_identity():
    # column means equal the source prior: EM stops at pi_t = pi_s, the output is the input
    table = np.array([[0.7, 0.2, 0.1], [0.1, 0.7, 0.2], [0.2, 0.1, 0.7]])
    adapter = PriorEMAdapter(3)
    np.testing.assert_allclose(adapter.adapt(AdapterInput(table)), table, atol=1e-12)
    # sampled from the source prior: nearly the identity
    probs = gaussian_mixture(np.full(3, 1 / 3), np.full(3, 1 / 3), 4000, seed=2)
    adapter = PriorEMAdapter(3, window=4000)
    np.testing.assert_allclose(adapter.adapt(AdapterInput(probs)), probs, atol=0.05)


def test_window_keeps_last_rows_and_state_round_trips():
    probs = gaussian_mixture(np.array([0.6, 0.3, 0.1]), np.full(3, 1 / 3), 300, seed=3)
    adapter = ADAPTERS.get("prior_em")(3, window=128)
    for chunk in np.split(probs, 3):
        adapter.adapt(AdapterInput(chunk))
    state = json.loads(json.dumps(adapter.state_dict()))
    assert len(state["rows"]) == 128
    np.testing.assert_array_equal(state["rows"], probs[-128:])
    other = PriorEMAdapter(3, window=128)
    other.load_state_dict(state)
    batch = AdapterInput(probs[:10])
    np.testing.assert_array_equal(other.adapt(batch), adapter.adapt(batch))
    adapter.reset()
    assert adapter.state_dict()["rows"] == []
    np.testing.assert_allclose(adapter.target_prior, np.full(3, 1 / 3))


def test_rejects_bad_source_prior():
    with pytest.raises(ConfigError):
        PriorEMAdapter(3, source_prior=[0.5, 0.5, 0.0])


def test_em_prior_takes_the_published_steps():
    """em_prior's matrix-vector form against the steps written out: p'(c|x) ∝ p(c|x) pi_t(c) /
    pi_s(c), pi_t = mean_x p'(c|x), from pi_s, a fixed number of iterations (tol 0 never stops)."""
    rng = np.random.default_rng(7)
    probs = rng.dirichlet(np.full(10, 0.3), size=512).astype(np.float32)
    source = rng.dirichlet(np.full(10, 5.0))
    for iterations in (1, 3, 25):
        pi_t = source.copy()
        for _ in range(iterations):
            adapted = probs.astype(np.float64) * (pi_t / source)
            pi_t = (adapted / adapted.sum(axis=1, keepdims=True)).mean(axis=0)
        np.testing.assert_allclose(em_prior(probs, source, tol=0.0, max_iter=iterations), pi_t, rtol=1e-12)

"""EATA (Niu et al. 2022) filters on hand cases: entropy below E0 = 0.4 ln C, redundancy by cosine
to the moving average; RDumb's reset after T updates; the Fisher anchor."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pseudostream.models.tta import EATAAdapter
from pseudostream.models.tta.base import entropy_margin
from pseudostream.models.tta.eata import eata_select, update_model_probs
from pseudostream.server.errors import ConfigError


def window(n: int = 48, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, 1, 8, 8)).astype(np.float32)


def test_entropy_margin_is_0_4_ln_c(scaled_cnn):
    assert entropy_margin(10) == pytest.approx(0.4 * math.log(10))
    assert EATAAdapter(scaled_cnn(), num_classes=10).e_margin == pytest.approx(0.92103, abs=1e-5)


def test_filters_on_a_hand_case():
    # Three classes: E0 = 0.4 ln 3 = 0.4394.
    p = torch.tensor([[0.98, 0.01, 0.01],   # H = 0.112: reliable, parallel to m: redundant
                      [1 / 3, 1 / 3, 1 / 3],  # H = ln 3 = 1.099: unreliable
                      [0.01, 0.01, 0.98],   # H = 0.112: reliable, cos(m, p) = 0.0102: kept
                      [0.6, 0.3, 0.1]])      # H = 0.898: unreliable
    logits = p.log()
    e0 = entropy_margin(3)
    h = -(p * p.log()).sum(1)
    np.testing.assert_allclose(h.numpy(), [0.1120, 1.0986, 0.1120, 0.8979], atol=1e-4)
    m = torch.tensor([1.0, 0.0, 0.0])
    cos = (p @ m) / p.norm(dim=1)
    np.testing.assert_allclose(cos[[0, 2]].numpy(), [0.99990, 0.010203], atol=1e-5)
    reliable, kept = eata_select(logits, e0, 0.4, m)
    assert reliable.tolist() == [True, False, True, False]
    assert kept.tolist() == [False, False, True, False]
    _, kept_first = eata_select(logits, e0, 0.4, None)  # no average yet: entropy filter only
    assert kept_first.tolist() == [True, False, True, False]


def test_moving_average_of_probabilities():
    first = update_model_probs(None, torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    np.testing.assert_allclose(first.numpy(), [0.5, 0.5])
    second = update_model_probs(first, torch.tensor([[1.0, 0.0]]))
    np.testing.assert_allclose(second.numpy(), [0.9 * 0.5 + 0.1, 0.9 * 0.5])
    assert update_model_probs(second, torch.zeros((0, 2))) is second
    assert update_model_probs(None, torch.zeros((0, 2))) is None


def test_no_reliable_sample_no_update(scaled_cnn):
    adapter = EATAAdapter(scaled_cnn(), num_classes=10, e_margin=0.0, lr=1e-2)
    before = [p.detach().clone() for p in adapter.params]
    adapter.adapt(window())
    assert adapter.updates == 0 and adapter.last_selected == 0 and adapter.model_probs is None
    assert all(torch.equal(a, b.detach()) for a, b in zip(before, adapter.params))


def test_hard_reset_after_t_updates(scaled_cnn):
    adapter = EATAAdapter(scaled_cnn(), num_classes=10, lr=1e-2, e_margin=2.0, d_margin=1.1,
                          reset_every=3)
    initial = [p.detach().clone() for p in adapter.params]
    for seed in range(2):
        adapter.adapt(window(seed=seed))
    assert adapter.updates == 2 and adapter.resets == 0
    assert not all(torch.equal(a, b.detach()) for a, b in zip(initial, adapter.params))
    adapter.adapt(window(seed=2))  # the third update: back to the source
    assert adapter.resets == 1 and adapter.updates == 0 and adapter.model_probs is None
    assert all(torch.equal(a, b.detach()) for a, b in zip(initial, adapter.params))


def test_fisher_anchor_holds_parameters_near_the_source(scaled_cnn):
    clean = window(64, seed=5)
    probe = EATAAdapter(scaled_cnn(), num_classes=10)
    fisher = probe.compute_fisher(clean)
    assert [f.shape for f in fisher] == [p.shape for p in probe.params]
    assert all(bool((f >= 0).all()) for f in fisher) and sum(float(f.sum()) for f in fisher) > 0

    def drift(adapter: EATAAdapter) -> float:
        for seed in range(5):
            adapter.adapt(window(seed=10 + seed))
        return sum(float(((p.detach() - p0) ** 2).sum()) for p, p0 in zip(adapter.params, adapter.anchor))

    free = EATAAdapter(scaled_cnn(), num_classes=10, lr=1e-2, e_margin=2.0, d_margin=1.1, optimizer="sgd")
    anchored = EATAAdapter(scaled_cnn(), num_classes=10, lr=1e-2, e_margin=2.0, d_margin=1.1, optimizer="sgd",
                           fisher=[f / max(float(f.max()), 1e-12) for f in fisher], fisher_alpha=50.0)
    free_drift, anchored_drift = drift(free), drift(anchored)
    assert anchored_drift < 0.5 * free_drift, (anchored_drift, free_drift)


def test_config_errors(scaled_cnn):
    with pytest.raises(ConfigError):
        EATAAdapter(scaled_cnn(), num_classes=10, reset_every=0)
    with pytest.raises(ConfigError, match="fisher"):
        EATAAdapter(scaled_cnn(), num_classes=10, fisher=[torch.zeros(1)])

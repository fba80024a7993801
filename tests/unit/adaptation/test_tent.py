"""TENT (Wang et al. 2021): only the BN affine parameters train, and the window's entropy drops."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pseudostream.models.tta import TentAdapter
from pseudostream.models.tta.base import softmax_entropy
from pseudostream.server.errors import ConfigError


def window(n: int = 48) -> np.ndarray:
    return np.random.default_rng(0).random((n, 1, 8, 8)).astype(np.float32)


def train_mode_entropy(adapter: TentAdapter, x: np.ndarray) -> float:
    """TENT's objective: mean entropy with batch statistics (train mode)."""
    adapter.model.train()
    with torch.no_grad():
        value = float(softmax_entropy(adapter.model(torch.from_numpy(x))[0]).mean())
    adapter.model.eval()
    return value


def test_only_bn_affine_parameters_change(scaled_cnn):
    adapter = TentAdapter(scaled_cnn(), lr=1e-2)
    before = {k: v.detach().clone() for k, v in adapter.model.named_parameters()}
    adapter.adapt(window())
    assert adapter.updates == 1
    for name, p in adapter.model.named_parameters():
        is_bn = name.startswith("body.") and name.split(".")[1] in {"1", "4", "8"}
        changed = not torch.equal(p.detach(), before[name])
        assert changed == is_bn, name
        assert p.requires_grad == is_bn, name


@pytest.mark.parametrize("optimizer,lr", [("adam", 1e-2), ("sgd", 0.1)])
def test_entropy_on_the_window_drops(optimizer, lr, scaled_cnn):
    x = window()
    adapter = TentAdapter(scaled_cnn(), optimizer=optimizer, lr=lr, steps=5, bn_prior=0)
    start_train, start_served = train_mode_entropy(adapter, x), float(softmax_entropy(
        torch.from_numpy(adapter.logits(x))).mean())
    adapter.adapt(x)
    assert adapter.updates == 5
    assert train_mode_entropy(adapter, x) < start_train - 1e-3
    served = float(softmax_entropy(torch.from_numpy(adapter.logits(x))).mean())
    assert served < start_served


def test_reset_restores_weights_and_optimizer(scaled_cnn):
    adapter = TentAdapter(scaled_cnn(), lr=1e-2)
    initial = adapter.fingerprint()
    x = window()
    adapter.adapt(x)
    after_one = adapter.fingerprint()
    adapter.adapt(x)
    adapter.reset()
    assert adapter.fingerprint() == initial and adapter.updates == 0
    adapter.adapt(x)  # fresh Adam moments: the first step again
    assert adapter.fingerprint() == after_one


def test_state_dict_round_trip(scaled_cnn):
    x = window()
    a, b = TentAdapter(scaled_cnn(), lr=1e-2), TentAdapter(scaled_cnn(), lr=1e-2)
    a.adapt(x)
    b.load_state_dict(a.state_dict())
    a.adapt(x)
    b.adapt(x)
    assert a.fingerprint() == b.fingerprint() and b.updates == 2


def test_bad_optimizer(scaled_cnn):
    with pytest.raises(ConfigError, match="optimizer"):
        TentAdapter(scaled_cnn(), optimizer="rmsprop")

"""SAR (Niu et al. 2023): the reliable-entropy filter, the SAM perturbation by hand, the EMA of
the second loss and model recovery below the floor."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pseudostream.models.tta import SARAdapter
from pseudostream.models.tta.sar import sam_perturbation
from pseudostream.server.errors import ConfigError


def window(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((48, 1, 8, 8)).astype(np.float32)


def params_equal(a: list[torch.Tensor], b: list[torch.nn.Parameter]) -> bool:
    return all(torch.equal(x, y.detach()) for x, y in zip(a, b))


def test_sam_perturbation_by_hand():
    p, q = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))
    p.grad, q.grad = torch.tensor([3.0]), torch.tensor([4.0])  # ||g|| = 5
    e = sam_perturbation([p, q], rho=0.05)
    np.testing.assert_allclose([float(e[0]), float(e[1])], [0.03, 0.04], rtol=1e-6)


def test_defaults_follow_the_paper(scaled_cnn):
    sar = SARAdapter(scaled_cnn(), num_classes=10)
    assert sar.e_margin == pytest.approx(0.4 * math.log(10))
    assert (sar.rho, sar.reset_floor, sar.ema_momentum) == (0.05, 0.2, 0.9)
    assert isinstance(sar.optimizer, torch.optim.SGD) and sar.optimizer.defaults["lr"] == 0.00025
    scaled = SARAdapter(scaled_cnn(), num_classes=10, reset_floor=None)
    assert scaled.reset_floor == pytest.approx(0.2 * math.log(10) / math.log(1000))


def test_no_reliable_sample_no_update(scaled_cnn):
    sar = SARAdapter(scaled_cnn(), num_classes=10, e_margin=0.5, lr=0.1)  # every entropy is > 1
    before = [p.detach().clone() for p in sar.params]
    sar.adapt(window())
    assert sar.updates == 0 and sar.ema is None and params_equal(before, sar.params)


def test_steps_move_bn_affine_and_track_the_ema(scaled_cnn):
    sar = SARAdapter(scaled_cnn(), num_classes=10, e_margin=2.0, lr=0.1, reset_floor=0.0)
    before = [p.detach().clone() for p in sar.params]
    frozen = {n: p.detach().clone() for n, p in sar.model.named_parameters() if not p.requires_grad}
    sar.adapt(window(0))
    first = sar.ema
    assert sar.updates == 1 and 0 < first < 2.0 and not params_equal(before, sar.params)
    assert all(torch.equal(p.detach(), frozen[n]) for n, p in sar.model.named_parameters() if n in frozen)
    sar.adapt(window(1))
    # ema = 0.9 * first + 0.1 * second, with second < E0 = 2.0 (its samples passed the filter)
    second = (sar.ema - 0.9 * first) / 0.1
    assert sar.updates == 2 and 0 < second < 2.0


def test_recovery_when_the_ema_falls_below_the_floor(scaled_cnn):
    sar = SARAdapter(scaled_cnn(), num_classes=10, e_margin=2.0, lr=0.1, reset_floor=10.0)
    initial = [p.detach().clone() for p in sar.params]
    sar.adapt(window())
    assert sar.recoveries == 1 and sar.ema is None and sar.updates == 0
    assert params_equal(initial, sar.params)


def test_config_errors(scaled_cnn):
    with pytest.raises(ConfigError):
        SARAdapter(scaled_cnn(), num_classes=10, rho=-1)
    with pytest.raises(ConfigError):
        SARAdapter(scaled_cnn(), num_classes=10, ema_momentum=1.0)

"""Shared by the weight-level adapter tests."""

from __future__ import annotations

from collections.abc import Callable

import pytest


@pytest.fixture
def scaled_cnn() -> Callable[[], object]:
    """``scaled_cnn()``: a seeded random DigitsCNN in eval mode with its head scaled up by 20, so
    its predictions are not uniform (train-mode entropies about 1.1 to 1.6); a new one per call."""
    import torch

    from pseudostream.models.cnn import DigitsCNN

    def make() -> DigitsCNN:
        torch.manual_seed(0)
        net = DigitsCNN().eval()
        with torch.no_grad():
            net.head.weight.mul_(20)
        return net

    return make

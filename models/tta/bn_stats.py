"""BN statistics adaptation (Schneider, Rusak, Eck, Bringmann, Brendel & Bethge, "Improving
robustness against common corruptions by covariate shift adaptation", NeurIPS 2020, eq. 3;
official code: ``robusta/batchnorm/bn.py`` of bethgelab/robustness).
"""

from __future__ import annotations

import torch

from pseudostream.models.tta.base import WEIGHT_ADAPTERS, WeightAdapter

__all__ = ["BNStatsAdapter"]


@WEIGHT_ADAPTERS.register("bn_stats")
class BNStatsAdapter(WeightAdapter):
    """No weights move: after each window every BN layer normalises with
    mu = lam mu_src + (1 - lam) mu_window, var likewise, lam = N / (N + n), N = ``bn_prior``
    (the paper's prior strength; 16 suits batches of a few dozen), n = the window's size."""

    name = "bn_stats"

    def __init__(self, model: torch.nn.Module, *, temperature: float = 1.0,
                 bn_prior: float = 16.0) -> None:
        super().__init__(model, temperature=temperature, bn_prior=bn_prior, steps=0)
        self._snapshot()

    def _step(self, x: torch.Tensor) -> None:  # pragma: no cover - steps is 0
        raise AssertionError("bn_stats takes no optimisation steps")

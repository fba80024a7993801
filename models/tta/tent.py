"""TENT, test entropy minimisation (Wang, Shelhamer, Liu, Olshausen & Darrell, "Tent: Fully
Test-Time Adaptation by Entropy Minimization", ICLR 2021; official code: ``tent.py`` of
DequanWang/tent: ``forward_and_adapt``, ``configure_model``, ``collect_params``).
"""

from __future__ import annotations

import torch

from pseudostream.models.tta.base import WEIGHT_ADAPTERS, WeightAdapter, make_optimizer, softmax_entropy

__all__ = ["TentAdapter"]


@WEIGHT_ADAPTERS.register("tent")
class TentAdapter(WeightAdapter):
    """Per step: forward in train mode (BN normalises with the window's statistics), loss = mean
    softmax entropy of the logits, one optimiser step on the BN affine parameters only.

    Defaults are the paper's CIFAR setting (Adam, lr 1e-3, one step per batch); ImageNet used
    SGD lr 0.00025 momentum 0.9 at batch 64.
    """

    name = "tent"

    def __init__(self, model: torch.nn.Module, *, temperature: float = 1.0, bn_prior: float = 16.0,
                 steps: int = 1, optimizer: str = "adam", lr: float = 1e-3, momentum: float = 0.9) -> None:
        super().__init__(model, temperature=temperature, bn_prior=bn_prior, steps=steps)
        self.optimizer = make_optimizer(self.configure_model(), optimizer, lr, momentum)
        self._snapshot()

    def _step(self, x: torch.Tensor) -> None:
        loss = softmax_entropy(self._forward(x)).mean()
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad()
        self.updates += 1

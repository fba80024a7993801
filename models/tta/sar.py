"""SAR, sharpness-aware and reliable entropy minimisation (Niu, Wu, Zhang, Wen, Chen, Zhao & Tan,
"Towards Stable Test-Time Adaptation in Dynamic Wild World", ICLR 2023; official code:
``sar.py`` (``forward_and_adapt_sar``, ``update_ema``) and ``sam.py`` of mr-eggplant/SAR; SAM is
Foret et al., "Sharpness-Aware Minimization for Efficiently Improving Generalization", ICLR 2021).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from pseudostream.models.tta.base import (WEIGHT_ADAPTERS, WeightAdapter, entropy_margin,
                                          make_optimizer, softmax_entropy)
from pseudostream.server.errors import ConfigError

__all__ = ["SARAdapter", "sam_perturbation"]


@torch.no_grad()
def sam_perturbation(params: list[torch.nn.Parameter], rho: float) -> list[torch.Tensor]:
    """SAM's first step: e_w = rho * g / (||g||_2 + 1e-12) over all parameters' gradients
    (non-adaptive); returns e_w per parameter (zeros where a gradient is missing)."""
    grads = [torch.zeros_like(p) if p.grad is None else p.grad for p in params]
    norm = torch.norm(torch.stack([g.norm(2) for g in grads]), 2)
    return [g * (rho / (norm + 1e-12)) for g in grads]


@WEIGHT_ADAPTERS.register("sar")
class SARAdapter(WeightAdapter):
    """Per step: reliable entropy (samples with H < E0 = 0.4 ln C) at the weights, SAM ascent by
    rho, reliable entropy again at the perturbed weights (among the first filter's samples, H <
    E0 again), descent with that gradient at the original weights. The EMA (0.9) of the second
    loss below ``reset_floor`` means collapse: the model is recovered (reset) and the EMA cleared.

    The paper uses SGD lr 0.00025 x (batch / 64), momentum 0.9, rho 0.05 and a floor of 0.2 nats
    (ImageNet, ln C = 6.9). ``reset_floor`` None scales that floor by ln C / ln 1000. The official
    code keeps the EMA after a recovery (so it recovers again each step until the EMA climbs
    back); clearing it follows the paper's Algorithm 1.
    """

    name = "sar"

    def __init__(self, model: torch.nn.Module, *, num_classes: int, temperature: float = 1.0,
                 bn_prior: float = 16.0, steps: int = 1, optimizer: str = "sgd", lr: float = 0.00025,
                 momentum: float = 0.9, rho: float = 0.05, e_margin: float | None = None,
                 reset_floor: float | None = 0.2, ema_momentum: float = 0.9) -> None:
        super().__init__(model, temperature=temperature, bn_prior=bn_prior, steps=steps)
        if rho < 0 or not 0 <= ema_momentum < 1:
            raise ConfigError("sar adapter: rho >= 0 and 0 <= ema_momentum < 1")
        self.e_margin = entropy_margin(num_classes) if e_margin is None else float(e_margin)
        self.reset_floor = (0.2 * math.log(num_classes) / math.log(1000) if reset_floor is None
                            else float(reset_floor))
        self.rho, self.ema_momentum = float(rho), float(ema_momentum)
        self.params = self.configure_model()
        self.optimizer = make_optimizer(self.params, optimizer, lr, momentum)
        self.ema: float | None = None
        self.recoveries = 0
        self._snapshot()

    def _step(self, x: torch.Tensor) -> None:
        ent = softmax_entropy(self._forward(x))
        reliable = ent < self.e_margin
        if not bool(reliable.any()):
            return
        ent[reliable].mean().backward()
        shifts = sam_perturbation(self.params, self.rho)
        saved = [p.detach().clone() for p in self.params]
        with torch.no_grad():
            for p, e in zip(self.params, shifts):
                p.add_(e)
        self.optimizer.zero_grad()
        ent2 = softmax_entropy(self._forward(x))[reliable]
        second = ent2[ent2 < self.e_margin]
        if second.numel():
            second.mean().backward()
        with torch.no_grad():
            for p, old in zip(self.params, saved):
                p.copy_(old)
        if second.numel():
            self.optimizer.step()
            self.updates += 1
            value = float(second.detach().mean())
            self.ema = value if self.ema is None else (
                self.ema_momentum * self.ema + (1 - self.ema_momentum) * value)
        self.optimizer.zero_grad()
        if self.ema is not None and self.ema < self.reset_floor:
            recoveries = self.recoveries + 1
            self.reset()
            self.recoveries = recoveries

    def _method_state(self) -> dict[str, Any]:
        return {"ema": self.ema, "recoveries": getattr(self, "recoveries", 0)}

    def _load_method_state(self, state: dict[str, Any]) -> None:
        self.ema, self.recoveries = state["ema"], state["recoveries"]

"""EATA, efficient anti-forgetting test-time adaptation (Niu, Wu, Zhang, Chen, Zheng, Zhao & Tan,
"Efficient Test-Time Model Adaptation without Forgetting", ICML 2022; official code: ``eata.py``
of mr-eggplant/EATA: ``forward_and_adapt_eata``, ``update_model_probs``, the Fisher in
``main.py``), with RDumb's periodic hard reset (Press, Schneider, Kuemmerer & Bethge, "RDumb: A
simple approach that questions our progress in continual test-time adaptation", NeurIPS 2023;
official code: oripress/CCC).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from pseudostream.models.tta.base import (WEIGHT_ADAPTERS, WeightAdapter, entropy_margin,
                                          make_optimizer, softmax_entropy)
from pseudostream.server.errors import ConfigError

__all__ = ["EATAAdapter", "eata_select", "update_model_probs"]


def eata_select(logits: torch.Tensor, e_margin: float, d_margin: float,
                model_probs: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(reliable, kept): boolean masks [B]. reliable: entropy < e_margin; kept: reliable and, if
    there is a moving average ``model_probs``, |cos(model_probs, p)| < d_margin (not redundant)."""
    reliable = softmax_entropy(logits) < e_margin
    kept = reliable.clone()
    if model_probs is not None:
        cos = F.cosine_similarity(model_probs[None, :], logits.softmax(1), dim=1)
        kept &= cos.abs() < d_margin
    return reliable, kept


def update_model_probs(model_probs: torch.Tensor | None, probs: torch.Tensor) -> torch.Tensor | None:
    """m <- 0.9 m + 0.1 mean(probs); started at the first non-empty mean; unchanged if empty."""
    if probs.shape[0] == 0:
        return model_probs
    mean = probs.detach().mean(0)
    return mean if model_probs is None else 0.9 * model_probs + 0.1 * mean


@WEIGHT_ADAPTERS.register("eata")
class EATAAdapter(WeightAdapter):
    """Entropy minimisation on reliable, non-redundant samples, each weighted 1 / exp(H - E0).

    ``e_margin``: E0, default 0.4 ln C. ``d_margin``: the redundancy epsilon (paper: 0.05 for
    ImageNet, 0.4 for CIFAR-10; 10 classes here, so 0.4). ``fisher``: optional diagonal Fisher
    (``compute_fisher``) adding ``fisher_alpha`` * sum F (theta - theta0)^2. ``reset_every``:
    RDumb's hard reset after that many updates (steps that had samples to learn from; RDumb
    uses 1000); None never resets.
    """

    name = "eata"

    def __init__(self, model: torch.nn.Module, *, num_classes: int, temperature: float = 1.0,
                 bn_prior: float = 16.0, steps: int = 1, optimizer: str = "adam", lr: float = 1e-3,
                 momentum: float = 0.9, e_margin: float | None = None, d_margin: float = 0.4,
                 fisher: list[torch.Tensor] | None = None, fisher_alpha: float = 2000.0,
                 reset_every: int | None = 1000) -> None:
        super().__init__(model, temperature=temperature, bn_prior=bn_prior, steps=steps)
        if reset_every is not None and reset_every < 1:
            raise ConfigError(f"eata adapter: reset_every must be >= 1 or None, got {reset_every}")
        self.e_margin = entropy_margin(num_classes) if e_margin is None else float(e_margin)
        self.d_margin, self.fisher_alpha, self.reset_every = float(d_margin), float(fisher_alpha), reset_every
        self.params = self.configure_model()
        if fisher is not None and [f.shape for f in fisher] != [p.shape for p in self.params]:
            raise ConfigError("eata adapter: fisher must match the BN affine parameters")
        self.fisher = fisher
        self.anchor = [p.detach().clone() for p in self.params]
        self.optimizer = make_optimizer(self.params, optimizer, lr, momentum)
        self.model_probs: torch.Tensor | None = None
        self.resets = 0
        self.last_selected = 0
        self._snapshot()

    def _step(self, x: torch.Tensor) -> None:
        logits = self._forward(x)
        _, kept = eata_select(logits, self.e_margin, self.d_margin, self.model_probs)
        self.model_probs = update_model_probs(self.model_probs, logits[kept].softmax(1))
        self.last_selected = int(kept.sum())
        if self.last_selected == 0:
            return
        ent = softmax_entropy(logits[kept])
        loss = (ent / torch.exp(ent.detach() - self.e_margin)).mean()
        if self.fisher is not None:
            loss = loss + self.fisher_alpha * sum(
                (f * (p - p0) ** 2).sum() for f, p, p0 in zip(self.fisher, self.params, self.anchor))
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad()
        self.updates += 1
        if self.reset_every is not None and self.updates >= self.reset_every:
            resets = self.resets + 1
            self.reset()
            self.resets = resets

    def compute_fisher(self, clean: np.ndarray, batch_size: int = 64) -> list[torch.Tensor]:
        """Diagonal Fisher of the BN affine parameters on clean (in-distribution) inputs: the mean
        over batches of squared gradients of the cross-entropy to the model's own predictions,
        in train mode (as EATA's ``main.py``); pass it as ``fisher`` to a new adapter."""
        x = self._tensor(clean)
        fisher = [torch.zeros_like(p) for p in self.params]
        batches = 0
        self.model.train()
        with torch.enable_grad():
            for start in range(0, x.shape[0] - 1, batch_size):
                logits = self._forward(x[start:start + batch_size])
                grads = torch.autograd.grad(F.cross_entropy(logits, logits.argmax(1)), self.params)
                for f, g in zip(fisher, grads):
                    f += g ** 2
                batches += 1
        self.model.eval()
        return [f / max(batches, 1) for f in fisher]

    def _method_state(self) -> dict[str, Any]:
        return {"model_probs": self.model_probs, "resets": getattr(self, "resets", 0)}

    def _load_method_state(self, state: dict[str, Any]) -> None:
        self.model_probs = state["model_probs"]
        self.resets = state["resets"]

"""SoftMatch's truncated-Gaussian sample weighting, with uniform alignment.

Chen et al., "SoftMatch: Addressing the Quantity-Quality Trade-off in Semi-supervised Learning",
ICLR 2023; USB ``semilearn/algorithms/softmatch/utils.py`` (SoftMatchWeightingHook) and
``softmatch.py`` (uniform alignment through DistAlignEMAHook, then the weighting hook).

Order, as in USB (``update_first``): align (update p_model, then q = UA(p)); update
    mu  <- m mu  + (1 - m) mean_b max q
    var <- m var + (1 - m) var_unbiased_b(max q)        (init mu = 1/C, var = 1)
then weight w = exp(-min(max q - mu, 0)^2 / (2 var / n_sigma^2)).
Every sample is accepted with its soft weight; ``min_weight`` > 0 rejects those below it
(reason "low_weight"). The label is argmax of the *unaligned* p, as the official code does
("uniform alignment in softmatch do not use aligned probs for generating pseudo labels": UA only
enters the weight); ``label_from_aligned=True`` labels with argmax q instead. ``confidence`` is
max q, the value the weight was computed on; ``threshold`` is mu (where the weight reaches 1).

Deviations: the unbiased variance needs two samples, so a batch of one leaves var unchanged. With
``per_class`` (mu, var per predicted class), USB folds mu = 0, var = 1 into every class with fewer
than two samples in the batch, dragging idle classes' mu toward 0; here such classes are left
unchanged.

Replicas merge mu, var and the alignment's p_model as EMAs (``base.py``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pseudostream.server.errors import ConfigError
from pseudostream.server.selection._common import EmaTracks, Momentum, batch_probs, merge_ema
from pseudostream.server.selection.base import POLICIES, Decisions, PolicyBatch, ThresholdPolicy
from pseudostream.server.selection.dist_align import DistributionAlignment

__all__ = ["SoftMatchPolicy", "REASON_LOW_WEIGHT"]

REASON_LOW_WEIGHT = "low_weight"


@POLICIES.register("softmatch")
class SoftMatchPolicy(ThresholdPolicy):
    """Soft confidence weights from a running Gaussian fit of the (aligned) confidences."""

    name = "softmatch"
    update_first = True

    def __init__(
        self,
        num_classes: int,
        momentum: float = 0.999,
        momentum_per_sample: float | None = None,
        n_sigma: float = 2.0,
        per_class: bool = False,
        dist_align: bool = True,
        min_weight: float = 0.0,
        label_from_aligned: bool = False,
    ) -> None:
        super().__init__(num_classes)
        if n_sigma <= 0:
            raise ConfigError(f"softmatch policy: n_sigma must be > 0, got {n_sigma!r}")
        self.momentum = Momentum(self.name, momentum, momentum_per_sample)
        self.n_sigma, self.per_class = float(n_sigma), bool(per_class)
        self.min_weight, self.label_from_aligned = float(min_weight), bool(label_from_aligned)
        self.align = None
        if dist_align:  # uniform alignment shares the policy's momentum, as in USB (ema_p)
            self.align = DistributionAlignment(num_classes, momentum, "uniform", momentum_per_sample)
        shape = (num_classes,) if per_class else ()
        self.mu = np.full(shape, 1.0 / num_classes)
        self.var = np.ones(shape)
        self._ema = EmaTracks(mu=self.mu, var=self.var)

    def _aligned(self, probs: np.ndarray) -> np.ndarray:
        return probs if self.align is None else self.align.align(probs)

    def thresholds(self) -> np.ndarray:
        return np.broadcast_to(self.mu, (self.num_classes,)).astype(np.float32)

    def decide(self, batch: PolicyBatch) -> Decisions:
        probs = batch_probs(batch, self.num_classes, self.name)
        q = self._aligned(probs)
        conf, q_label = q.max(axis=1), q.argmax(axis=1)
        mu, var = (self.mu[q_label], self.var[q_label]) if self.per_class else (self.mu, self.var)
        gap = np.minimum(conf - mu, 0.0)
        weight = np.exp(-(gap**2) / (2.0 * np.maximum(var, 1e-12) / self.n_sigma**2))
        label = q_label if self.label_from_aligned else probs.argmax(axis=1)
        return Decisions.from_mask(weight >= self.min_weight, label, conf, mu, weight, REASON_LOW_WEIGHT)

    def update(self, batch: PolicyBatch) -> None:
        probs = batch_probs(batch, self.num_classes, self.name)
        if probs.shape[0] == 0:
            return
        if self.align is not None:
            self.align.update(probs)
        q = self._aligned(probs)
        conf = q.max(axis=1)
        if not self.per_class:
            m = self.momentum.for_batch(conf.size)
            self.mu = m * self.mu + (1.0 - m) * conf.mean()
            self._ema.forget(m, "mu")
            if conf.size > 1:
                self.var = m * self.var + (1.0 - m) * conf.var(ddof=1)
                self._ema.forget(m, "var")
            return
        label = q.argmax(axis=1)
        n = np.bincount(label, minlength=self.num_classes)
        total = np.bincount(label, weights=conf, minlength=self.num_classes)
        mean = total / np.maximum(n, 1)
        sq_dev = np.bincount(label, weights=(conf - mean[label]) ** 2, minlength=self.num_classes)
        m = self.momentum.for_counts(n, min_count=2)
        self.mu = m * self.mu + (1.0 - m) * mean
        self.var = m * self.var + (1.0 - m) * sq_dev / np.maximum(n - 1, 1)
        self._ema.forget(m, "mu", "var")

    def state_dict(self) -> dict[str, Any]:
        return {
            "mu": self.mu.tolist(),
            "var": self.var.tolist(),
            "align": None if self.align is None else self.align.state_dict(),
            "merge": self._ema.state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.mu = np.asarray(state["mu"], np.float64).reshape(self.mu.shape)
        self.var = np.asarray(state["var"], np.float64).reshape(self.var.shape)
        self._ema.load(state.get("merge"), mu=self.mu, var=self.var)
        if self.align is not None and state.get("align") is not None:
            self.align.load_state_dict(state["align"])

    def _merged_state(self, states: list[dict[str, Any]]) -> dict[str, Any]:
        align = None
        if self.align is not None:
            align = self.align.merged_state([{**s["align"], "_samples": s["_samples"]} for s in states])
        mu, var = merge_ema(states, "mu").tolist(), merge_ema(states, "var").tolist()
        return {"mu": mu, "var": var, "align": align}

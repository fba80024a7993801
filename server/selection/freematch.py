"""FreeMatch's self-adaptive thresholds (SAT).

Wang et al., "FreeMatch: Self-adaptive Thresholding for Semi-supervised Learning", ICLR 2023;
USB ``semilearn/algorithms/freematch/utils.py`` (FreeMatchThresholingHook).

The statistics are updated *before* masking (``update_first``):
    tau_g   <- m tau_g + (1 - m) mean_b conf         (or the batch ``quantile`` of conf)
    p_tilde <- m p_tilde + (1 - m) mean_b p
    mask     = conf >= tau_g * p_tilde[yhat] / max_c p_tilde
Initial values follow the paper (and METHODS.md): tau_g = 1/C, p_tilde = 1/C. USB instead starts
p_model at ones and time_p at 1.0 (its ``/ num_classes`` is commented out); the local ratio is
unaffected, but USB's global threshold starts at 1 and falls, where the paper's starts at 1/C
and rises. ``clip`` caps tau_g (USB's ``clip_thresh`` uses 0.95).

Replicas merge tau_g and p_tilde as EMAs (``base.py``), then re-apply ``clip``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pseudostream.server.selection._common import EmaTracks, Momentum, batch_probs, check_fraction, merge_ema
from pseudostream.server.selection.base import POLICIES, PerClassThresholdPolicy, PolicyBatch

__all__ = ["FreeMatchPolicy"]


@POLICIES.register("freematch")
class FreeMatchPolicy(PerClassThresholdPolicy):
    """Global EMA confidence threshold, modulated per class by the EMA class marginal."""

    name = "freematch"
    update_first = True

    def __init__(
        self,
        num_classes: int,
        momentum: float = 0.999,
        momentum_per_sample: float | None = None,
        quantile: float | None = None,
        clip: float | None = None,
    ) -> None:
        super().__init__(num_classes)
        self.momentum = Momentum(self.name, momentum, momentum_per_sample)
        self.quantile = None if quantile is None else check_fraction(self.name, "quantile", quantile)
        self.clip = None if clip is None else check_fraction(self.name, "clip", clip)
        self.tau_g = 1.0 / num_classes
        self.p_tilde = np.full(num_classes, 1.0 / num_classes)
        self._ema = EmaTracks(tau_g=self.tau_g, p_tilde=self.p_tilde)

    def _thresholds(self) -> np.ndarray:
        return self.tau_g * self.p_tilde / self.p_tilde.max()

    def update(self, batch: PolicyBatch) -> None:
        probs = batch_probs(batch, self.num_classes, self.name)
        if probs.shape[0] == 0:
            return
        m = self.momentum.for_batch(probs.shape[0])
        conf = probs.max(axis=1)
        stat = conf.mean() if self.quantile is None else np.quantile(conf, self.quantile)
        self.tau_g = m * self.tau_g + (1.0 - m) * float(stat)
        if self.clip is not None:
            self.tau_g = min(self.tau_g, self.clip)
        self.p_tilde = m * self.p_tilde + (1.0 - m) * probs.mean(axis=0)
        self._ema.forget(m, "tau_g", "p_tilde")

    def state_dict(self) -> dict[str, Any]:
        return {"tau_g": self.tau_g, "p_tilde": self.p_tilde.tolist(), "merge": self._ema.state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.tau_g = float(state["tau_g"])
        self.p_tilde = np.asarray(state["p_tilde"], np.float64).reshape(self.num_classes)
        self._ema.load(state.get("merge"), tau_g=self.tau_g, p_tilde=self.p_tilde)

    def _merged_state(self, states: list[dict[str, Any]]) -> dict[str, Any]:
        tau_g = float(merge_ema(states, "tau_g"))
        if self.clip is not None:
            tau_g = min(tau_g, self.clip)
        return {"tau_g": tau_g, "p_tilde": merge_ema(states, "p_tilde").tolist()}

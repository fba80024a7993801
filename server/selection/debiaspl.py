"""DebiasPL: debiased pseudo-labels by adaptive logit adjustment.

Wang et al., "Debiased Learning from Naturally Imbalanced Pseudo-Labels", CVPR 2022;
frank-xwang/debiased-pseudo-labeling ``main_DebiasPL.py`` (``causal_inference``,
``initial_qhat``, ``update_qhat``):
    p_deb = softmax(z - tau_la * log q_hat)      mask = max p_deb >= tau, label = argmax p_deb
    after masking: q_hat <- m q_hat + (1 - m) mean_b softmax(z)     (q_hat init uniform)
q_hat is the per-class marginal of the teacher's predictions, a [C] vector. USB's port averages
to a scalar (``probs.mean()``), which is always 1/C and so removes nothing: not copied here.
The official ``--masked-qhat`` variant is not offered (its masked branch skips the batch mean).
Needs the teacher's logits. Replicas merge q_hat as an EMA (``base.py``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pseudostream.server.errors import ConfigError, InvalidInput
from pseudostream.server.selection._common import EmaTracks, Momentum, check_fraction, merge_ema, softmax
from pseudostream.server.selection.base import POLICIES, Decisions, PolicyBatch, ThresholdPolicy

__all__ = ["DebiasPLPolicy"]


@POLICIES.register("debiaspl")
class DebiasPLPolicy(ThresholdPolicy):
    """A fixed threshold on logits debiased by the running class marginal q_hat."""

    name = "debiaspl"

    def __init__(
        self,
        num_classes: int,
        tau: float = 0.7,
        tau_la: float = 0.4,
        momentum: float = 0.999,
        momentum_per_sample: float | None = None,
    ) -> None:
        super().__init__(num_classes)
        self.tau = check_fraction(self.name, "tau", tau)
        if tau_la < 0:
            raise ConfigError(f"debiaspl policy: tau_la must be >= 0, got {tau_la!r}")
        self.tau_la = float(tau_la)
        self.momentum = Momentum(self.name, momentum, momentum_per_sample)
        self.q_hat = np.full(num_classes, 1.0 / num_classes)
        self._ema = EmaTracks(q_hat=self.q_hat)

    def _logits(self, batch: PolicyBatch) -> np.ndarray:
        if batch.logits is None:
            raise ConfigError(
                "debiaspl policy needs logits: the topic's teacher must expose logits "
                "(PolicyBatch.logits is None)"
            )
        z = np.asarray(batch.logits, np.float64)
        if z.ndim != 2 or z.shape[1] != self.num_classes:
            raise InvalidInput(f"debiaspl policy: expected logits [B, {self.num_classes}], got {z.shape}")
        return z

    def thresholds(self) -> np.ndarray:
        """tau for every class (the threshold is fixed; the debiasing moves the scores)."""
        return np.full(self.num_classes, self.tau, np.float32)

    def decide(self, batch: PolicyBatch) -> Decisions:
        log_q = np.log(np.maximum(self.q_hat, np.finfo(np.float64).tiny))  # q_hat > 0 unless m = 0
        p_deb = softmax(self._logits(batch) - self.tau_la * log_q)
        conf, label = p_deb.max(axis=1), p_deb.argmax(axis=1)
        return Decisions.from_mask(conf >= self.tau, label, conf, self.tau)

    def update(self, batch: PolicyBatch) -> None:
        z = self._logits(batch)
        if z.shape[0] == 0:
            return
        m = self.momentum.for_batch(z.shape[0])
        self.q_hat = m * self.q_hat + (1.0 - m) * softmax(z).mean(axis=0)
        self._ema.forget(m, "q_hat")

    def state_dict(self) -> dict[str, Any]:
        return {"q_hat": self.q_hat.tolist(), "merge": self._ema.state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.q_hat = np.asarray(state["q_hat"], np.float64).reshape(self.num_classes)
        self._ema.load(state.get("merge"), q_hat=self.q_hat)

    def _merged_state(self, states: list[dict[str, Any]]) -> dict[str, Any]:
        return {"q_hat": merge_ema(states, "q_hat").tolist()}

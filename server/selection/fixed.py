"""FixMatch's fixed confidence threshold.

Sohn et al., "FixMatch: Simplifying Semi-Supervised Learning with Consistency and Confidence",
NeurIPS 2020; USB ``semilearn/algorithms/fixmatch``: mask = max p >= tau (tau = 0.95), hard label
argmax p. Only meaningful on calibrated (temperature-scaled) probabilities.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pseudostream.server.errors import ConfigError
from pseudostream.server.selection.base import POLICIES, Decisions, PolicyBatch, ThresholdPolicy

__all__ = ["FixedThresholdPolicy"]


@POLICIES.register("fixed")
class FixedThresholdPolicy(ThresholdPolicy):
    """Accept a sample when its top class probability reaches ``tau``; stateless."""

    name = "fixed"

    def __init__(self, num_classes: int, tau: float = 0.95) -> None:
        super().__init__(num_classes)
        if not 0.0 <= tau <= 1.0:
            raise ConfigError(f"fixed policy: tau must be in [0, 1], got {tau}")
        self.tau = float(tau)

    def decide(self, batch: PolicyBatch) -> Decisions:
        conf = batch.probs.max(axis=1)
        label = batch.probs.argmax(axis=1)
        return Decisions.from_mask(conf >= self.tau, label, conf, self.tau)

    def update(self, batch: PolicyBatch) -> None:
        return None

    def thresholds(self) -> np.ndarray:
        return np.full(self.num_classes, self.tau, np.float32)

    def state_dict(self) -> dict[str, Any]:
        return {"tau": self.tau}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.tau = float(state.get("tau", self.tau))

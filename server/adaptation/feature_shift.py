"""Feature shift, the shift-only variant of FOA (Niu et al., "Test-Time Model Adaptation with Only
Forward Passes", ICML 2024; official code: the activation-shifting step in ``tta_library/foa.py``
of mr-eggplant/FOA): move test features back to the source feature mean, then apply the head.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pseudostream.server.adaptation.base import ADAPTERS, AdapterInput, OutputAdapter, linear_head, softmax
from pseudostream.server.errors import ConfigError

__all__ = ["FeatureShiftAdapter"]


@ADAPTERS.register("feature_shift")
class FeatureShiftAdapter(OutputAdapter):
    """z' = z + (source_mean - mu_test), probabilities = softmax(head(z') / temperature).

    mu_test is an EMA (``momentum``, 0.9) of the batches' feature means, started at the first
    batch's mean and updated before the batch is shifted. ``temperature``: the teacher's
    calibration temperature, so the output stays calibrated.
    """

    name = "feature_shift"
    needs_features = True

    def __init__(self, num_classes: int, *, head_weight: Any, source_mean: Any, head_bias: Any = None,
                 momentum: float = 0.9, temperature: float = 1.0) -> None:
        super().__init__(num_classes)
        self.weight, self.bias = linear_head(head_weight, head_bias, self.name)
        self.source_mean = np.asarray(source_mean, dtype=np.float64)
        if self.weight.shape[0] != num_classes or self.source_mean.shape != (self.weight.shape[1],):
            raise ConfigError(f"feature_shift adapter: head_weight must be [{num_classes}, F] and "
                              f"source_mean [F], got {self.weight.shape} and {self.source_mean.shape}")
        if not 0 <= momentum < 1 or temperature <= 0:
            raise ConfigError("feature_shift adapter: 0 <= momentum < 1 and temperature > 0")
        self.momentum, self.temperature = float(momentum), float(temperature)
        self.test_mean: np.ndarray | None = None
        self._snapshot()

    def adapt(self, batch: AdapterInput) -> np.ndarray:
        self._probs(batch)
        z = self._features(batch, self.weight.shape[1])
        mean = z.mean(axis=0)
        self.test_mean = mean if self.test_mean is None else (
            self.momentum * self.test_mean + (1 - self.momentum) * mean)
        return softmax(self.logits(z) / self.temperature)

    def logits(self, z: np.ndarray) -> np.ndarray:
        """The head's logits on the shifted features (no state change)."""
        shift = 0.0 if self.test_mean is None else self.source_mean - self.test_mean
        return (z + shift) @ self.weight.T + self.bias

    def state_dict(self) -> dict[str, Any]:
        return {"test_mean": None if self.test_mean is None else self.test_mean.tolist()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        mean = state["test_mean"]
        self.test_mean = None if mean is None else np.asarray(mean, dtype=np.float64)

"""Helpers shared by the selection policies: momentum, parameter checks, input checks.

Online vs. training-loop momentum (METHODS.md): the papers use a per-batch EMA momentum
(m = 0.999) tuned for ~10^6 training steps of a fixed batch size. A service sees batches of
varying size, so every EMA policy also accepts ``momentum_per_sample``; when given, a batch of B
samples uses m_batch = m_sample ** B, so the statistics forget at the same rate per sample
whatever the batching. The constructor default stays the published per-batch value, for exact
reproduction of the papers; topics that see small or uneven batches should set the per-sample one
(e.g. 0.999 ** (1 / 64) ~= 0.99998 matches the paper at batch 64).
"""

from __future__ import annotations

import numpy as np

from pseudostream.server.errors import ConfigError, InvalidInput
from pseudostream.server.selection.base import PolicyBatch

__all__ = ["Momentum", "check_fraction", "batch_probs", "softmax"]


def check_fraction(owner: str, name: str, value: float, *, open_low: bool = False) -> float:
    """``value`` as a float in [0, 1] (or (0, 1] with ``open_low``); ConfigError otherwise."""
    v = float(value)
    if not (0.0 < v <= 1.0 if open_low else 0.0 <= v <= 1.0):
        interval = "(0, 1]" if open_low else "[0, 1]"
        raise ConfigError(f"{owner} policy: {name} must be in {interval}, got {value!r}")
    return v


class Momentum:
    """EMA momentum per batch: the published per-batch value, or ``m_sample ** B``."""

    def __init__(self, owner: str, momentum: float, momentum_per_sample: float | None) -> None:
        self.momentum = check_fraction(owner, "momentum", momentum)
        self.per_sample = (
            None
            if momentum_per_sample is None
            else check_fraction(owner, "momentum_per_sample", momentum_per_sample)
        )

    def for_batch(self, size: int) -> float:
        """The momentum to apply for one batch of ``size`` samples (size >= 1)."""
        return self.momentum if self.per_sample is None else self.per_sample**size

    def for_counts(self, counts: np.ndarray, min_count: int = 1) -> np.ndarray:
        """Per-entry momentum for statistics updated by ``counts`` samples each.

        Entries with fewer than ``min_count`` samples get momentum 1 (left unchanged).
        """
        counts = np.asarray(counts)
        m = np.full(counts.shape, self.momentum) if self.per_sample is None else self.per_sample**counts
        return np.where(counts >= min_count, m, 1.0)


def batch_probs(batch: PolicyBatch, num_classes: int, owner: str) -> np.ndarray:
    """The batch's probabilities as float64 [B, C]; InvalidInput if the shape is wrong."""
    probs = np.asarray(batch.probs, dtype=np.float64)
    if probs.ndim != 2 or probs.shape[1] != num_classes:
        raise InvalidInput(
            f"{owner} policy: expected probabilities of shape [B, {num_classes}], got {probs.shape}"
        )
    return probs


def softmax(z: np.ndarray) -> np.ndarray:
    """Row-wise softmax, numerically stable, float64."""
    z = np.asarray(z, dtype=np.float64)
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)

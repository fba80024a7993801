"""T3A, test-time template adjuster (Iwasawa & Matsuo, "Test-Time Classifier Adjustment Module for
Model-Agnostic Domain Generalization", NeurIPS 2021; official code: class ``T3A`` in
``domainbed/adapt_algorithms.py`` of matsuolab/T3A).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pseudostream.server.adaptation.base import (ADAPTERS, AdapterInput, OutputAdapter, entropy,
                                                 l2_normalize, linear_head, softmax)
from pseudostream.server.errors import ConfigError

__all__ = ["T3AAdapter", "keep_lowest_entropy"]


def keep_lowest_entropy(labels: np.ndarray, ent: np.ndarray, num_classes: int, k: int) -> np.ndarray:
    """Indices of the ``k`` lowest-entropy entries of each class (all if ``k`` == -1), grouped by
    class (``select_supports`` in the official code); ties keep the earlier entry."""
    if k == -1:
        return np.arange(labels.shape[0])
    order = np.lexsort((ent, labels))  # by class, then by entropy
    sorted_labels = labels[order]
    start = np.searchsorted(sorted_labels, np.arange(num_classes))
    rank = np.arange(order.shape[0]) - start[sorted_labels]
    return order[rank < k]


@ADAPTERS.register("t3a")
class T3AAdapter(OutputAdapter):
    """Replaces the linear head by class prototypes: the normalized sum of the (normalized)
    lowest-entropy ``filter_k`` supports each class has been predicted for, starting from the
    head's rows. As in the official code, logits = z . normalize(weights) with raw features z;
    ``normalize_features=True`` uses normalized z (cosine logits, flatter probabilities).
    T3A worsens calibration: recalibrate its output before thresholding.
    """

    name = "t3a"
    needs_features = True

    def __init__(self, num_classes: int, *, head_weight: Any, head_bias: Any = None,
                 filter_k: int = 100, normalize_features: bool = False) -> None:
        super().__init__(num_classes)
        w, b = linear_head(head_weight, head_bias, self.name)
        if w.shape[0] != num_classes:
            raise ConfigError(f"t3a adapter: head_weight has {w.shape[0]} rows, "
                              f"expected {num_classes}")
        if filter_k != -1 and filter_k < 1:
            raise ConfigError(f"t3a adapter: filter_k must be >= 1 or -1 (all), got {filter_k}")
        self.filter_k, self.normalize_features = int(filter_k), bool(normalize_features)
        self.dim = w.shape[1]
        warm = softmax(w @ w.T + b)  # the head's own prediction on its rows (official warm-up)
        self._supports, self._labels, self._ent = l2_normalize(w), warm.argmax(axis=1), entropy(warm)
        self._snapshot()

    def adapt(self, batch: AdapterInput) -> np.ndarray:
        p = self._probs(batch)
        z = self._features(batch, self.dim)
        self._supports = np.concatenate([self._supports, l2_normalize(z)])
        self._labels = np.concatenate([self._labels, p.argmax(axis=1)])
        self._ent = np.concatenate([self._ent, entropy(p)])
        keep = keep_lowest_entropy(self._labels, self._ent, self.num_classes, self.filter_k)
        self._supports, self._labels, self._ent = self._supports[keep], self._labels[keep], self._ent[keep]
        if self.normalize_features:
            z = l2_normalize(z)
        return softmax(z @ self.prototypes().T)

    def prototypes(self) -> np.ndarray:
        """[C, F] normalized per-class sums of the kept supports (zero for a class with none)."""
        onehot = np.eye(self.num_classes)[self._labels]
        return l2_normalize(self._supports.T @ onehot, axis=0).T

    def state_dict(self) -> dict[str, Any]:
        return {"supports": self._supports.tolist(), "labels": self._labels.tolist(),
                "entropy": self._ent.tolist()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._supports = np.asarray(state["supports"], dtype=np.float64).reshape(-1, self.dim)
        self._labels = np.asarray(state["labels"], dtype=np.int64)
        self._ent = np.asarray(state["entropy"], dtype=np.float64)

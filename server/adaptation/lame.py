"""LAME, Laplacian-adjusted maximum-likelihood estimation (Boudiaf, Mueller, Ben Ayed & Bertinetto,
"Parameter-free Online Test-time Adaptation", CVPR 2022; official code: ``laplacian_optimization``,
``entropy_energy`` and ``kNN_affinity`` in ``src/adaptation/lame.py`` of fiveai/LAME).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pseudostream.server.adaptation.base import ADAPTERS, AdapterInput, OutputAdapter, l2_normalize, softmax
from pseudostream.server.errors import ConfigError

__all__ = ["LAMEAdapter", "knn_affinity", "laplacian_optimization"]


def knn_affinity(feats: np.ndarray, k: int) -> np.ndarray:
    """[B, B] 0/1 matrix: W[i, j] = 1 if j is among the k nearest neighbours of i (not i itself)."""
    n = feats.shape[0]
    dist = np.linalg.norm(feats[:, None, :] - feats[None, :, :], axis=-1)
    np.fill_diagonal(dist, np.inf)
    kk = min(k, n - 1)
    w = np.zeros((n, n))
    if kk > 0:
        np.put_along_axis(w, np.argsort(dist, axis=1, kind="stable")[:, :kk], 1.0, axis=1)
    return w


def laplacian_optimization(probs: np.ndarray, kernel: np.ndarray, max_steps: int = 100,
                           rel_tol: float = 1e-8) -> np.ndarray:
    """Y <- softmax(log p + K Y) from Y = p, until the energy's relative change is <= rel_tol."""
    log_p = np.log(probs + 1e-10)
    y, old = softmax(log_p), np.inf
    for i in range(max_steps):
        y = softmax(log_p + kernel @ y)
        energy = float((-log_p * y - (kernel @ y) * y + y * np.log(np.clip(y, 1e-20, None))).sum())
        if i > 1 and abs(energy - old) <= rel_tol * abs(old):
            break
        old = energy
    return y


@ADAPTERS.register("lame")
class LAMEAdapter(OutputAdapter):
    """Smooths each batch's predictions over its kNN graph, when the batch looks class-correlated.

    LAME hurts on i.i.d. batches (METHODS.md: 64.3 % error on CIFAR-10-C i.i.d.), so it runs only
    when KL(predicted-class histogram || running prior) > ``kl_threshold``; the running prior is
    an EMA (``prior_momentum``) of the batches' mean probabilities, updated after the check.
    """

    name = "lame"
    needs_features = True

    def __init__(self, num_classes: int, *, knn: int = 5, kl_threshold: float = 0.5,
                 prior_momentum: float = 0.9, max_steps: int = 100, symmetric: bool = False) -> None:
        super().__init__(num_classes)
        if knn < 1 or kl_threshold < 0 or not 0 <= prior_momentum < 1 or max_steps < 1:
            raise ConfigError("lame adapter: knn and max_steps >= 1, kl_threshold >= 0, "
                              "0 <= prior_momentum < 1")
        self.knn, self.kl_threshold, self.momentum = int(knn), float(kl_threshold), float(prior_momentum)
        self.max_steps, self.symmetric = int(max_steps), bool(symmetric)
        self.prior = np.full(num_classes, 1.0 / num_classes)
        self.last_kl = 0.0
        self._snapshot()

    def adapt(self, batch: AdapterInput) -> np.ndarray:
        p = self._probs(batch)
        if batch.features is None:
            self._features(batch, 0)  # raises InvalidInput naming what is missing
        z = np.asarray(batch.features, dtype=np.float64).reshape(p.shape[0], -1)
        hist = np.bincount(p.argmax(axis=1), minlength=self.num_classes) / p.shape[0]
        nz = hist > 0
        self.last_kl = float((hist[nz] * np.log(hist[nz] / np.maximum(self.prior[nz], 1e-12))).sum())
        self.prior = self.momentum * self.prior + (1 - self.momentum) * p.mean(axis=0)
        if self.last_kl <= self.kl_threshold:
            return p
        kernel = knn_affinity(l2_normalize(z), self.knn)
        if self.symmetric:
            kernel = 0.5 * (kernel + kernel.T)
        return laplacian_optimization(p, kernel, self.max_steps)

    def state_dict(self) -> dict[str, Any]:
        return {"prior": self.prior.tolist()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.prior = np.asarray(state["prior"], dtype=np.float64)

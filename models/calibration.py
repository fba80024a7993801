"""Temperature scaling and its figures of merit (Guo et al. 2017; gpleiss/temperature_scaling).

One scalar T divides a teacher's logits before the softmax. It is fitted by minimising the NLL
on held-out labelled logits with LBFGS (T initialised to 1.5, lr 0.01, 50 iterations), as in
gpleiss/temperature_scaling, with one deliberate change: a strong-Wolfe line search. Without it,
LBFGS takes steps of lr times the quasi-Newton step, so 50 iterations of lr 0.01 move T only part
of the way to the optimum (gpleiss/temperature_scaling issues #28 and #34); the line search only
picks the step length and converges to the same minimiser.

With few calibration samples the fit can degenerate. If the teacher makes no error on them, the
NLL keeps falling as T -> 0 and has no minimiser: the fit is skipped and T = 1 kept (a warning is
logged), rather than returning a near-zero T that would make every prediction look certain.
Otherwise T is clamped to [``MIN_TEMPERATURE``, ``MAX_TEMPERATURE``], with a warning if clamped.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "fit_temperature",
    "expected_calibration_error",
    "nll",
    "scaled_softmax",
    "INITIAL_TEMPERATURE",
    "MIN_TEMPERATURE",
    "MAX_TEMPERATURE",
]

logger = logging.getLogger(__name__)

INITIAL_TEMPERATURE = 1.5
LBFGS_LR = 0.01
LBFGS_MAX_ITER = 50
MIN_TEMPERATURE = 0.05
MAX_TEMPERATURE = 20.0


def _check(logits: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    logits = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels).astype(np.int64)
    if logits.ndim != 2 or labels.shape != (logits.shape[0],) or logits.shape[0] == 0:
        raise ValueError(
            f"expected logits [N, C] and labels [N] with N > 0, "
            f"got {logits.shape} and {labels.shape}"
        )
    if labels.min() < 0 or labels.max() >= logits.shape[1]:
        raise ValueError(
            f"labels must lie in [0, {logits.shape[1]}), got {labels.min()}..{labels.max()}"
        )
    return logits, labels


def scaled_softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """softmax(logits / temperature) over the last axis, computed stably."""
    z = np.asarray(logits, dtype=np.float64) / temperature
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def nll(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of ``labels`` under softmax(logits / temperature)."""
    logits, labels = _check(logits, labels)
    z = logits / temperature
    z = z - z.max(axis=1, keepdims=True)
    log_probs = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return float(-log_probs[np.arange(len(labels)), labels].mean())


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, n_bins: int = 15) -> float:
    """ECE with ``n_bins`` equal-width confidence bins (lo, hi] over [0, 1].

    ECE = sum_b |b| / N * |accuracy(b) - mean confidence(b)|, where confidence is the max
    probability and accuracy compares its argmax to the label (gpleiss ``_ECELoss``).
    """
    probs, labels = _check(probs, labels)
    confidences = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == labels).astype(np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    ece = 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        in_bin = (confidences > lo) & (confidences <= hi)
        if in_bin.any():
            gap = abs(confidences[in_bin].mean() - correct[in_bin].mean())
            ece += in_bin.mean() * gap
    return float(ece)


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """Fit the temperature T minimising the NLL of softmax(logits / T) on held-out ``labels``.

    Returns T clamped to [MIN_TEMPERATURE, MAX_TEMPERATURE] (a warning is logged when clamped).
    Returns 1 (with a warning) when every sample is classified correctly, since the NLL then has
    no minimiser, or when the optimiser fails to produce a finite T no worse than T = 1.
    """
    logits, labels = _check(logits, labels)
    if np.all(logits.argmax(axis=1) == labels):
        logger.warning(
            "no errors among the %d calibration samples: the temperature is not identifiable "
            "(NLL falls as T -> 0); keeping T=1. Hold out more labelled samples.",
            len(labels),
        )
        return 1.0
    z = torch.as_tensor(logits)
    y = torch.as_tensor(labels)
    temperature = torch.nn.Parameter(torch.full((1,), INITIAL_TEMPERATURE, dtype=torch.float64))
    optimizer = torch.optim.LBFGS(
        [temperature], lr=LBFGS_LR, max_iter=LBFGS_MAX_ITER, line_search_fn="strong_wolfe"
    )

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        # |T| keeps the objective defined should a line-search probe step past zero; the
        # result is clamped to a positive range below.
        loss = F.cross_entropy(z / temperature.abs().clamp_min(1e-6), y)
        loss.backward()
        return loss

    optimizer.step(closure)
    fitted = abs(float(temperature.detach()))
    before = nll(logits, labels, 1.0)
    if not math.isfinite(fitted) or not nll(logits, labels, max(fitted, 1e-6)) <= before + 1e-9:
        logger.warning("temperature fit failed (T=%s); keeping T=1", fitted)
        return 1.0
    clamped = min(max(fitted, MIN_TEMPERATURE), MAX_TEMPERATURE)
    if clamped != fitted:
        logger.warning(
            "fitted temperature %.4g clamped to %.4g: the calibration set (%d samples) is "
            "nearly degenerate; hold out more labelled samples",
            fitted, clamped, len(labels),
        )
    logger.info(
        "temperature %.4f: NLL %.4f -> %.4f on %d samples",
        clamped, before, nll(logits, labels, clamped), len(labels),
    )
    return clamped

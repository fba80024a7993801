"""Temperature scaling and its figures of merit (Guo et al. 2017; gpleiss/temperature_scaling).

One scalar T divides a teacher's logits before the softmax. It is fitted by minimising the NLL
on held-out labelled logits, as gpleiss/temperature_scaling does with LBFGS. We minimise the same
objective differently: as a function of the inverse temperature b = 1/T the NLL,
mean(logsumexp(b z) - b z_y), is convex (log-sum-exp of a linear function of b), so a
golden-section search on b over [1/MAX_TEMPERATURE, 1/MIN_TEMPERATURE] finds the global minimiser
to any tolerance with plain numpy. That keeps this module torch-free: the service imports it to
refit the temperature of a promoted teacher on a topic's audit slice (server/gate.py).

With few calibration samples the fit can degenerate. If the teacher makes no error on them, the
NLL keeps falling as T -> 0 and has no minimiser: the fit is skipped and T = 1 kept (a warning is
logged), rather than returning a near-zero T that would make every prediction look certain.
Otherwise T lies in [``MIN_TEMPERATURE``, ``MAX_TEMPERATURE``], with a warning at a bound.
"""

from __future__ import annotations

import logging
import math

import numpy as np

__all__ = [
    "fit_temperature",
    "expected_calibration_error",
    "nll",
    "scaled_softmax",
    "MIN_TEMPERATURE",
    "MAX_TEMPERATURE",
]

logger = logging.getLogger(__name__)

SEARCH_TOLERANCE = 1e-7  # on the inverse temperature
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

    Returns T in [MIN_TEMPERATURE, MAX_TEMPERATURE] (a warning is logged at a bound). Returns 1
    (with a warning) when every sample is classified correctly, since the NLL then has no
    minimiser.
    """
    logits, labels = _check(logits, labels)
    if np.all(logits.argmax(axis=1) == labels):
        logger.warning(
            "no errors among the %d calibration samples: the temperature is not identifiable "
            "(NLL falls as T -> 0); keeping T=1. Hold out more labelled samples.",
            len(labels),
        )
        return 1.0
    lo, hi = 1.0 / MAX_TEMPERATURE, 1.0 / MIN_TEMPERATURE  # bracket on b = 1/T
    ratio = (math.sqrt(5.0) - 1.0) / 2.0
    a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
    fa, fb = nll(logits, labels, 1.0 / a), nll(logits, labels, 1.0 / b)
    while hi - lo > SEARCH_TOLERANCE:
        if fa < fb:  # convex: the minimiser lies left of b
            hi, b, fb = b, a, fa
            a = hi - ratio * (hi - lo)
            fa = nll(logits, labels, 1.0 / a)
        else:
            lo, a, fa = a, b, fb
            b = lo + ratio * (hi - lo)
            fb = nll(logits, labels, 1.0 / b)
    fitted = 2.0 / (lo + hi)
    before = nll(logits, labels, 1.0)
    if fitted >= MAX_TEMPERATURE * (1 - 1e-6) or fitted <= MIN_TEMPERATURE * (1 + 1e-6):
        logger.warning(
            "fitted temperature %.4g is at a bound of [%g, %g]: the calibration set (%d samples) "
            "is nearly degenerate; hold out more labelled samples",
            fitted, MIN_TEMPERATURE, MAX_TEMPERATURE, len(labels),
        )
    logger.info(
        "temperature %.4f: NLL %.4f -> %.4f on %d samples",
        fitted, before, nll(logits, labels, fitted), len(labels),
    )
    return fitted

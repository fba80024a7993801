"""Temperature scaling and ECE against hand-computed values (models/calibration.py)."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest

from pseudostream.models.calibration import (
    expected_calibration_error,
    fit_temperature,
    nll,
    scaled_softmax,
)


def test_ece_hand_computed_five_bins() -> None:
    # Bins (0, .2], (.2, .4], (.4, .6], (.6, .8], (.8, 1].
    probs = np.array([[0.9, 0.1], [0.7, 0.3], [0.2, 0.8], [0.55, 0.45]])
    labels = np.array([0, 1, 1, 0])
    # conf .9 correct        -> bin (.8, 1]:  1/4 * |1.0 - 0.90| = 0.025
    # conf .7 wrong, .8 right -> bin (.6, .8]: 2/4 * |0.5 - 0.75| = 0.125  (.8 is in (.6, .8])
    # conf .55 correct       -> bin (.4, .6]: 1/4 * |1.0 - 0.55| = 0.1125
    assert expected_calibration_error(probs, labels, n_bins=5) == pytest.approx(0.2625)


def test_ece_fifteen_bins() -> None:
    # Every sample at confidence 0.6, half of them right: one bin, |0.5 - 0.6| = 0.1.
    probs = np.tile([0.6, 0.4], (10, 1))
    labels = np.array([0] * 5 + [1] * 5)
    assert expected_calibration_error(probs, labels) == pytest.approx(0.1)
    # Certain and right: 0.
    assert expected_calibration_error(np.eye(3), np.arange(3)) == pytest.approx(0.0)


def test_nll_hand_computed() -> None:
    logits = np.array([[0.0, math.log(3.0)]])
    assert nll(logits, np.array([1])) == pytest.approx(-math.log(0.75))
    # T = 2: p1 = sqrt(3) / (1 + sqrt(3))
    expected = math.log((1 + math.sqrt(3)) / math.sqrt(3))
    assert nll(logits, np.array([1]), 2.0) == pytest.approx(expected)


def test_scaled_softmax_is_a_distribution() -> None:
    p = scaled_softmax(np.array([[1000.0, 0.0, -5.0], [1.0, 2.0, 3.0]]), 0.5)
    assert np.all(np.isfinite(p))
    np.testing.assert_allclose(p.sum(axis=1), 1.0)


def _overconfident(scale: float, n: int = 2000, classes: int = 10, seed: int = 0):
    """Logits whose labels are drawn from softmax(true logits), reported as scale * true."""
    rng = np.random.default_rng(seed)
    true = rng.normal(0.0, 1.0, (n, classes))
    true[np.arange(n), rng.integers(0, classes, n)] += 2.0
    p = scaled_softmax(true)
    labels = (p.cumsum(axis=1) > rng.random((n, 1))).argmax(axis=1)
    return scale * true, labels


def test_fit_temperature_recovers_scale_and_lowers_nll() -> None:
    logits, labels = _overconfident(3.0)
    t = fit_temperature(logits, labels)
    assert t == pytest.approx(3.0, abs=0.3)
    assert nll(logits, labels, t) < nll(logits, labels, 1.0) - 0.1
    # The fit is a minimum: nearby temperatures are no better.
    assert nll(logits, labels, t) <= min(nll(logits, labels, t * 0.9), nll(logits, labels, t * 1.1))


def test_fit_temperature_underconfident() -> None:
    logits, labels = _overconfident(0.5, seed=1)
    assert fit_temperature(logits, labels) == pytest.approx(0.5, abs=0.06)


def test_fit_temperature_without_errors_keeps_one(caplog: pytest.LogCaptureFixture) -> None:
    # No errors: the NLL falls towards T -> 0 and has no minimiser.
    logits = np.array([[2.0, 0.0], [0.0, 1.0], [3.0, 1.0]])
    with caplog.at_level(logging.WARNING, logger="pseudostream.models.calibration"):
        assert fit_temperature(logits, np.array([0, 1, 0])) == 1.0
    assert "not identifiable" in caplog.text


def test_fit_temperature_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError, match="labels"):
        fit_temperature(np.zeros((3, 2)), np.array([0, 1]))
    with pytest.raises(ValueError, match="lie in"):
        fit_temperature(np.zeros((2, 2)), np.array([0, 2]))


def test_fit_temperature_stops_at_the_bounds(caplog: pytest.LogCaptureFixture) -> None:
    logits, labels = _overconfident(0.01, seed=2)  # far under-confident: the minimiser is T ~ 0.01
    with caplog.at_level(logging.WARNING, logger="pseudostream.models.calibration"):
        assert fit_temperature(logits, labels) == pytest.approx(0.05, rel=1e-5)
    assert "at a bound" in caplog.text


def test_fit_temperature_is_the_nll_minimiser() -> None:
    """The golden-section fit agrees with a dense grid over T (the NLL is convex in 1/T)."""
    logits, labels = _overconfident(2.7, seed=5)
    t = fit_temperature(logits, labels)
    grid = np.linspace(0.5, 6.0, 5501)
    best = grid[np.argmin([nll(logits, labels, g) for g in grid])]
    assert t == pytest.approx(best, abs=2e-3)

"""The demo's fixed distribution shift (models/shift.py)."""

from __future__ import annotations

import numpy as np
import pytest

from pseudostream.models.digits import load_digits_splits
from pseudostream.models.shift import apply_shift


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return load_digits_splits(0).test_x


def test_deterministic_for_a_seed(images: np.ndarray) -> None:
    np.testing.assert_array_equal(apply_shift(images, seed=7), apply_shift(images, seed=7))
    np.testing.assert_array_equal(apply_shift(images), apply_shift(images, seed=1234))


def test_different_seeds_differ(images: np.ndarray) -> None:
    a, b = apply_shift(images, seed=1), apply_shift(images, seed=2)
    assert np.mean(a != b) > 0.5


def test_input_unchanged_and_output_in_range(images: np.ndarray) -> None:
    before = images.copy()
    out = apply_shift(images)
    np.testing.assert_array_equal(images, before)
    assert out is not images and out.shape == images.shape and out.dtype == np.float32
    assert out.min() >= 0.0 and out.max() <= 1.0


def test_mean_absolute_change_within_documented_band(images: np.ndarray) -> None:
    # models/shift.py documents ~0.24 (contrast 0.5, blur 0.7, noise 0.15): a real corruption,
    # but far from noise-only (~0.08) or a blank image (~0.3+ of every pixel).
    change = float(np.abs(apply_shift(images) - images).mean())
    assert 0.20 <= change <= 0.28


def test_images_do_not_mix() -> None:
    # Contrast moves toward each image's own mean and the blur is spatial only, so a black and
    # a white image stay black and white; only noise and clipping move them, by
    # E[max(N(0, 0.15), 0)] = 0.06. A batch-wide mean or a blur across images would give ~0.25.
    x = np.zeros((2, 1, 8, 8), dtype=np.float32)
    x[1] = 1.0
    out = apply_shift(x)
    assert out[0].mean() < 0.1 and out[1].mean() > 0.9


def test_accepts_images_without_channel_axis(images: np.ndarray) -> None:
    flat = images[:, 0]
    np.testing.assert_allclose(apply_shift(flat, seed=3), apply_shift(images, seed=3)[:, 0])


def test_severity_scales_every_corruption_linearly(images: np.ndarray) -> None:
    from pseudostream.models.shift import severity_params

    assert severity_params(3) == {"contrast": 0.5, "blur": 0.7, "noise": 0.15}
    assert severity_params(1) == pytest.approx({"contrast": 0.5 / 3, "blur": 0.7 / 3, "noise": 0.05})
    changes = [float(np.abs(apply_shift(images, severity=s) - images).mean()) for s in (1, 2, 3)]
    assert changes[0] < changes[1] < changes[2]
    with pytest.raises(ValueError, match="severity must be one of"):
        apply_shift(images, severity=4)

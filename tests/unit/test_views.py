"""Test-time-augmented views: shape, view order, and the zero-filled pixel shift."""

from __future__ import annotations

import numpy as np

from pseudostream.server.config import ViewsConfig
from pseudostream.server.views import AugmentedViews, _shifted


def test_shift_moves_pixels_and_fills_zeros():
    x = np.arange(9, dtype=np.float32).reshape(1, 1, 3, 3)
    # down by one, left by one: row r, col c <- x[r - 1, c + 1]
    assert _shifted(x, 1, -1)[0, 0].tolist() == [[0, 0, 0], [1, 2, 0], [4, 5, 0]]
    assert np.array_equal(_shifted(x, 0, 0), x)


def test_augment_returns_k_minus_one_views_view_major():
    x = np.random.default_rng(0).random((5, 1, 8, 8)).astype(np.float32)
    views = AugmentedViews(ViewsConfig(count=4, max_shift=1, noise_std=0.0, seed=3))
    out = views.augment(x)
    assert out.shape == (15, 1, 8, 8) and out.dtype == np.float32
    per_view = out.reshape(3, 5, 1, 8, 8)
    for v in range(3):  # each view is one shift of the whole batch
        diffs = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)
                 if np.array_equal(per_view[v], _shifted(x, dy, dx))]
        assert diffs, f"view {v} is not a +-1 pixel shift of the batch"


def test_noise_only_views_keep_the_mean():
    x = np.full((200, 1, 4, 4), 0.5, np.float32)
    out = AugmentedViews(ViewsConfig(count=2, max_shift=0, noise_std=0.1, seed=1)).augment(x)
    assert abs(float(out.mean()) - 0.5) < 0.01 and 0.09 < float(out.std()) < 0.11

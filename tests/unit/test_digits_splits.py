"""The demo data splits (models/digits.py)."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.datasets import load_digits

from pseudostream.models.digits import DigitsSplits, load_digits_splits

N_TOTAL = 1797  # scikit-learn's digits


@pytest.fixture(scope="module")
def splits() -> DigitsSplits:
    return load_digits_splits(0)


def _parts(s: DigitsSplits) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    return {
        "train": (s.train_x, s.train_y, s.train_idx),
        "calib": (s.calib_x, s.calib_y, s.calib_idx),
        "stream": (s.stream_x, s.stream_y, s.stream_idx),
        "test": (s.test_x, s.test_y, s.test_idx),
    }


def test_sizes(splits: DigitsSplits) -> None:
    n = {name: len(y) for name, (_, y, _) in _parts(splits).items()}
    labelled = n["train"] + n["calib"]
    assert sum(n.values()) == N_TOTAL
    # train_test_split rounds the held-out part up, once per nested split: within 2 samples.
    assert abs(labelled - 0.2 * N_TOTAL) <= 2
    assert abs(n["stream"] - 0.6 * N_TOTAL) <= 2
    assert abs(n["test"] - 0.2 * N_TOTAL) <= 2
    assert abs(n["train"] - 0.75 * labelled) <= 1
    assert abs(n["calib"] - 0.25 * labelled) <= 1


def test_indices_disjoint_and_cover_everything(splits: DigitsSplits) -> None:
    all_idx = np.concatenate([idx for _, _, idx in _parts(splits).values()])
    assert len(np.unique(all_idx)) == len(all_idx) == N_TOTAL


def test_arrays_match_the_source(splits: DigitsSplits) -> None:
    data = load_digits()
    for x, y, idx in _parts(splits).values():
        assert x.dtype == np.float32 and y.dtype == np.int64
        assert x.shape == (len(idx), 1, 8, 8) and x.min() >= 0.0 and x.max() <= 1.0
        np.testing.assert_array_equal(y, data.target[idx])
        np.testing.assert_allclose(x[:, 0], data.images[idx] / 16.0)
    assert splits.stream_ids == [f"digits-{i:06d}" for i in splits.stream_idx]
    assert splits.stream_ids[0].startswith("digits-") and len(splits.stream_ids[0]) == 13


def test_stratified(splits: DigitsSplits) -> None:
    overall = np.bincount(load_digits().target, minlength=10)
    for name, (_, y, _) in _parts(splits).items():
        counts = np.bincount(y, minlength=10)
        expected = overall * len(y) / N_TOTAL
        # Stratified splitting rounds per class: at most ~1 off (2 after two nested splits).
        assert np.max(np.abs(counts - expected)) <= 2, name
    np.testing.assert_allclose(splits.source_prior.sum(), 1.0)
    assert splits.source_prior.min() > 0.08 and splits.source_prior.max() < 0.12


def test_deterministic_and_seeded(splits: DigitsSplits) -> None:
    again = load_digits_splits(0)
    for (xa, ya, ia), (xb, yb, ib) in zip(_parts(splits).values(), _parts(again).values()):
        np.testing.assert_array_equal(ia, ib)
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)
    assert not np.array_equal(load_digits_splits(1).train_idx, splits.train_idx)

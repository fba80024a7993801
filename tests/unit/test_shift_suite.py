"""The shift suite (models/shift_suite.py): seeded corruptions at three severities and the stream
orders (i.i.d., Dirichlet class-ordered, label-shifted, long)."""

from __future__ import annotations

import numpy as np
import pytest

from pseudostream.models import shift_suite
from pseudostream.models.digits import load_digits_splits
from pseudostream.models.shift import apply_shift


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray]:
    splits = load_digits_splits(0)
    return splits.test_x, splits.test_y


@pytest.mark.parametrize("kind", shift_suite.CORRUPTIONS)
def test_corruptions_are_seeded_bounded_and_grow_with_severity(digits, kind):
    x = digits[0][:64]
    before = x.copy()
    changes = []
    for severity in shift_suite.SEVERITIES:
        out = shift_suite.corrupt(x, kind, severity, seed=3)
        assert out.shape == x.shape and out.dtype == np.float32
        assert out.min() >= 0.0 and out.max() <= 1.0
        np.testing.assert_array_equal(out, shift_suite.corrupt(x, kind, severity, seed=3))
        changes.append(float(np.abs(out - x).mean()))
    np.testing.assert_array_equal(x, before)
    assert changes[0] > 0.01 and changes[0] < changes[1] < changes[2]


@pytest.mark.parametrize("kind", ["gaussian_noise", "affine", "salt_and_pepper"])
def test_random_corruptions_differ_by_seed(digits, kind):
    x = digits[0][:32]
    assert not np.array_equal(shift_suite.corrupt(x, kind, 2, seed=1), shift_suite.corrupt(x, kind, 2, seed=2))


def test_demo_is_the_combined_shift_and_flat_images_work(digits):
    x = digits[0][:16]
    np.testing.assert_array_equal(shift_suite.corrupt(x, "demo", 2, seed=5), apply_shift(x, seed=5, severity=2))
    flat = shift_suite.corrupt(x[:, 0], "affine", 1, seed=0)
    np.testing.assert_array_equal(flat, shift_suite.corrupt(x, "affine", 1, seed=0)[:, 0])


def test_unknown_kind_or_severity(digits):
    with pytest.raises(ValueError, match="known: gaussian_noise"):
        shift_suite.corrupt(digits[0], "fog", 1)
    with pytest.raises(ValueError, match="severity"):
        shift_suite.corrupt(digits[0], "blur", 4)


def classes_per_window(y: np.ndarray, size: int = 32) -> float:
    return float(np.mean([len(np.unique(y[i:i + size])) for i in range(0, len(y) - size + 1, size)]))


def test_orders(digits):
    y = digits[1]
    iid = shift_suite.iid_order(len(y), seed=0)
    assert sorted(iid) == list(range(len(y)))
    ordered = shift_suite.dirichlet_order(y, alpha=0.1, num_slots=len(y) // 32, seed=0)
    assert sorted(ordered) == list(range(len(y)))  # every sample, once
    np.testing.assert_array_equal(ordered, shift_suite.dirichlet_order(y, 0.1, len(y) // 32, seed=0))
    assert classes_per_window(y[ordered]) < 0.7 * classes_per_window(y[iid])  # 5.9 vs 9.7
    with pytest.raises(ValueError):
        shift_suite.dirichlet_order(y, alpha=0.0)


def test_label_shift_is_long_tailed(digits):
    y = digits[1]
    order = shift_suite.label_shift_order(y, imbalance=10.0, seed=0)
    assert len(set(order)) == len(order)
    counts = np.bincount(y[order], minlength=10)
    assert counts.min() >= 1 and 7.0 <= counts.max() / counts.min() <= 14.0


def test_long_stream_cycles_kinds_and_severities():
    schedule = shift_suite.long_stream(num_windows=60, windows_per_segment=4, seed=0)
    assert sum(s.windows for s in schedule) >= 60
    assert len(schedule) == 15
    kinds = {s.kind for s in schedule}
    assert kinds == {"gaussian_noise", "blur", "contrast", "affine", "salt_and_pepper"}
    assert [s.severity for s in schedule] == [1] * 5 + [2] * 5 + [3] * 5
    assert all(len({s.kind for s in schedule[i:i + 5]}) == 5 for i in (0, 5, 10))

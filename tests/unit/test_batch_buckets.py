"""Batch-size buckets: which sizes a spec gives on which provider, the bucket a batch goes to,
and zero padding."""

from __future__ import annotations

import numpy as np
import pytest

from pseudostream.server.backends.buckets import bucket_for, bucket_sizes, padded

CPU = ["CPUExecutionProvider"]
CUDA = ["CUDAExecutionProvider", "CPUExecutionProvider"]


@pytest.mark.parametrize(("spec", "providers", "expected"), [
    ("auto", CPU, ()),
    ("auto", [], ()),
    ("auto", CUDA, (8, 16, 32, 64, 128)),
    ("auto", ["TensorrtExecutionProvider", *CUDA], (8, 16, 32, 64, 128)),
    ("off", CUDA, ()),
    ("powers_of_two", CPU, (8, 16, 32, 64, 128)),
    ([64, 8, 128, 8], CPU, (8, 64, 128)),
])
def test_bucket_sizes(spec, providers, expected):
    assert bucket_sizes(spec, 128, providers) == expected


def test_a_max_batch_that_is_no_power_of_two_is_the_last_bucket():
    assert bucket_sizes("powers_of_two", 100, CPU) == (8, 16, 32, 64, 100)
    assert bucket_sizes("powers_of_two", 8, CPU) == (8,)
    assert bucket_sizes("powers_of_two", 5, CPU) == (5,)


@pytest.mark.parametrize(("rows", "expected"), [(1, 1), (2, 2), (3, 4), (33, 64), (64, 64), (65, 100),
                                                (100, 100), (101, 101)])
def test_bucket_for_takes_the_smallest_that_holds_the_rows(rows, expected):
    assert bucket_for(rows, (1, 2, 4, 8, 16, 32, 64, 100)) == expected


def test_without_buckets_a_batch_keeps_its_size():
    assert bucket_for(37, ()) == 37


def test_padded_appends_zero_rows_and_keeps_the_batch():
    x = np.arange(3 * 2 * 2, dtype=np.float32).reshape(3, 2, 2) + 1
    out = padded(x, 8)
    assert out.shape == (8, 2, 2) and out.dtype == np.float32
    np.testing.assert_array_equal(out[:3], x)
    assert not out[3:].any()
    assert padded(x, 3) is x and padded(x, 2) is x

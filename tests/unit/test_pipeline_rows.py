"""The accepted rows' samples: a view of the batch where they are consecutive, else a copy."""

from __future__ import annotations

import numpy as np
import pytest

from pseudostream.server.pipeline import _rows_of


@pytest.mark.parametrize("rows, view", [
    ([0, 1, 2, 3, 4, 5], True), ([3], True), ([4, 5], True), ([2, 3, 4], True),
    ([0, 2], False), ([1, 2, 4], False), ([0, 2, 1, 3], False), ([5, 4], False), ([], False),
])
def test_rows_of_equals_fancy_indexing(rows: list[int], view: bool):
    x = np.arange(6 * 2 * 3, dtype=np.float32).reshape(6, 2, 3)
    x.flags.writeable = False  # as a request's bytes are
    got = _rows_of(x, np.asarray(rows, dtype=np.int64))
    np.testing.assert_array_equal(got, x[rows])
    assert got.shape == (len(rows), 2, 3)
    assert np.shares_memory(got, x) is view

"""The idempotency window's decision blobs: packed records for single-label decisions, JSON for
multi-label ones (and for entries written before packing); decode gives the decisions back."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pseudostream.server.idempotency import _encode_one, decode_decisions, encode_decisions
from pseudostream.server.selection import Decisions


def _decisions(n: int, multilabel: bool = False) -> Decisions:
    rng = np.random.default_rng(1)
    threshold = np.full(n, 0.95, np.float32)
    threshold[0] = np.inf  # a class that can never be accepted yet
    return Decisions(accept=rng.random(n) > 0.4, label=rng.integers(0, 5, n),
                     confidence=rng.random(n).astype(np.float32), weight=rng.random(n).astype(np.float32),
                     threshold=threshold, reason=np.array(["", "below_class_threshold", "x\"y"] * n)[:n],
                     positive=rng.random((n, 5)) > 0.5 if multilabel else None,
                     negative=rng.random((n, 5)) > 0.8 if multilabel else None)


def _ids(n: int) -> list[str]:
    return [f"id{k}" for k in range(n)]


def _blobs(d: Decisions, offsets: np.ndarray, version: str) -> list[bytes]:
    return list(encode_decisions(d, offsets, version, _ids(len(d))).values())


def test_packed_blobs_round_trip_exactly():
    d, offsets = _decisions(50), np.arange(100, 150)
    entries = encode_decisions(d, offsets, 'v"2+prior_em.3', _ids(50))
    blobs = list(entries.values())
    assert list(entries) == _ids(50) and entries["id7"] == blobs[7]
    assert len(blobs) == 50 and all(b[:1] == b"\x01" for b in blobs)
    back, offs, versions = decode_decisions(blobs, 5)
    assert np.array_equal(back.accept, d.accept) and np.array_equal(back.label, d.label)
    assert np.array_equal(back.confidence, d.confidence) and np.array_equal(back.weight, d.weight)
    assert np.array_equal(back.threshold, d.threshold)  # inf included
    assert list(back.reason) == list(d.reason) and list(offs) == list(offsets)
    assert set(versions) == {'v"2+prior_em.3'}


def test_all_accepted_empty_version_and_non_ascii_reasons_round_trip():
    d = _decisions(6)
    d = Decisions(**{**d.__dict__, "reason": np.array(["", "", "é", "", "", ""])})
    for version in ("", "12+tent.100"):
        back, _, versions = decode_decisions(_blobs(d, np.arange(6), version), 5)
        assert list(back.reason) == list(d.reason) and set(versions) == {version}


def test_json_blobs_of_earlier_releases_still_decode():
    """Entries remembered before an upgrade are JSON; they stay readable for the window."""
    d, offsets = _decisions(10), np.arange(10)
    old = [_encode_one(d, offsets, "3", i) for i in range(10)]
    back, offs, versions = decode_decisions(old[:5] + _blobs(d, offsets, "3")[5:], 5)
    assert np.array_equal(back.label, d.label) and np.array_equal(back.confidence, d.confidence)
    assert list(back.reason) == list(d.reason) and list(offs) == list(offsets)
    assert json.loads(old[0])["v"] == "3" and set(versions) == {"3"}


def test_multilabel_blobs_keep_their_class_lists():
    d = _decisions(8, multilabel=True)
    back, _, _ = decode_decisions(_blobs(d, np.arange(8), "1"), 5)
    assert np.array_equal(back.positive, d.positive) and np.array_equal(back.negative, d.negative)


@pytest.mark.parametrize("reason", [
    np.array(["accepted", "below_threshold", ""] * 4, dtype="<U40"),  # wider than any reason
    np.array(["accepted", "below_threshold", "", "x"] * 6)[::2],  # a strided view
    np.array(["accepted", "é", "x"] * 4, dtype=object),  # not a text array
])
def test_reasons_of_any_width_or_dtype_round_trip_packed(reason):
    d = Decisions(**{**_decisions(12).__dict__, "reason": reason})
    entries = encode_decisions(d, np.arange(12), "7", _ids(12))
    assert all(b[:1] == b"\x01" for b in entries.values())
    assert len({len(b) for b in entries.values()}) == 1  # one record size: cut without a loop
    back, _, _ = decode_decisions(list(entries.values()), 5)
    assert list(back.reason) == [str(r) for r in reason]


def test_a_reason_over_255_bytes_falls_back_to_json():
    d = Decisions(**{**_decisions(3).__dict__, "reason": np.array(["r" * 300, "", "é" * 200])})
    entries = encode_decisions(d, np.arange(3), "7", _ids(3))
    assert all(b[:1] == b"{" for b in entries.values())
    back, offsets, _ = decode_decisions(list(entries.values()), 5)
    assert list(back.reason) == list(d.reason) and offsets.tolist() == [0, 1, 2]

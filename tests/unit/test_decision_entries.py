"""DecisionEntries: a batch's idempotency blobs end to end, read as a mapping of id -> blob."""

from __future__ import annotations

import numpy as np
import pytest

from pseudostream.server.labellog.entries import DecisionEntries


def test_a_mapping_round_trips_in_order_with_empty_and_long_blobs():
    source = {"a": b"", "b": b"xy", "c": bytes(range(256)) * 3, "d": b"z"}
    entries = DecisionEntries.of(source)
    assert dict(entries) == source and list(entries) == list(source) and len(entries) == 4
    assert list(entries.items()) == list(source.items())
    assert entries.nbytes == sum(map(len, source.values())) and entries.ends.tolist() == [0, 2, 770, 771]
    assert DecisionEntries.of(entries) is entries
    assert entries.get("missing") is None and "c" in entries and ("b", b"xy") in entries.items()
    with pytest.raises(KeyError):
        entries["missing"]


def test_fixed_size_blobs_are_cut_from_one_bytes_object():
    entries = DecisionEntries.fixed(["p", "q", "r"], b"000111222", 3)
    assert entries.ends.tolist() == [3, 6, 9] and entries["q"] == b"111" and entries.blob(2) == b"222"
    empty = DecisionEntries.fixed([], b"", 7)
    assert len(empty) == 0 and dict(empty) == {} and empty.nbytes == 0


@pytest.mark.parametrize("ends", [[3, 6], [3, 6, 8], np.zeros((3, 1))])
def test_ends_that_do_not_match_the_ids_or_data_are_refused(ends):
    with pytest.raises(ValueError, match="3 ids need as many blob ends, the last at 9 bytes"):
        DecisionEntries(["p", "q", "r"], b"000111222", np.asarray(ends))


def test_joined_blobs_keep_their_ids_positions_and_a_missing_blob_is_refused():
    entries = DecisionEntries.joined(["u", "v", "w"], [b"{}", b"", b"\x01abc"])
    assert list(entries.items()) == [("u", b"{}"), ("v", b""), ("w", b"\x01abc")]
    assert entries.ends.tolist() == [2, 2, 6] and entries["w"] == b"\x01abc"
    assert len(DecisionEntries.joined([], [])) == 0
    with pytest.raises(ValueError, match="3 ids need as many blob ends"):
        DecisionEntries.joined(["u", "v", "w"], [b"{}", b""])

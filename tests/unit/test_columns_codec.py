"""Columnar delivery on the wire: records as ``LabelColumns`` (``column_runs``), the server's
``encode_columns`` and the client's ``columns_from_proto`` give back the records the log read,
field for field, with the samples of each batch as one array and no message per record."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from pseudostream.clients.types import columns_from_proto
from pseudostream.proto.v1 import labeler_pb2 as pb
from pseudostream.server.codec import columns_bound, encode_columns, encode_records, records_bound, split_to_fit
from pseudostream.server.labellog.base import LabelRecord
from pseudostream.server.labellog.columns import LabelColumns, column_runs, concat_columns

# scores travel as float32: values it holds exactly
BASE = dict(label=3, confidence=0.875, weight=0.5, threshold=0.75, teacher_version="v2", policy="flexmatch",
            created_at=1.7e9 + 0.25, deliveries=2)


def with_sample(offset: int, shape: tuple[int, ...] = (2, 3), dtype: str = "float32", **fields) -> LabelRecord:
    sample = (np.arange(np.prod(shape)) + offset).astype(dtype).reshape(shape)
    return LabelRecord(offset=offset, sample_id=f"s{offset}", sample=sample.tobytes(), shape=shape, dtype=dtype,
                       **{**BASE, **fields})


def encode(records: list[LabelRecord], include_samples: bool = True) -> list[pb.PseudoLabelBatch]:
    return [encode_columns("t", c) for c in column_runs(records, include_samples)]


def over_the_wire(batches: list[pb.PseudoLabelBatch]) -> list[LabelColumns]:
    parsed = [pb.PseudoLabelBatch.FromString(b.SerializeToString()) for b in batches]
    assert all(not b.labels and b.topic == "t" for b in parsed)  # no message per record
    return [columns_from_proto(b.columns) for b in parsed]


def test_columns_round_trip_field_for_field():
    sent = [with_sample(k, label=k, confidence=0.5 + k / 8, deliveries=k + 1) for k in range(5)]
    sent[2] = dataclasses.replace(sent[2], teacher_version="v3", policy="softmatch", created_at=1.8e9 + 0.5,
                                  metadata={"camera": "a"}, positive=(0, 4), negative=(2,), label=-1)
    [got] = over_the_wire(encode(sent))
    assert len(got) == 5
    assert got.records() == sent
    assert got.samples.shape == (5, 2, 3) and got.samples.dtype == np.float32
    np.testing.assert_array_equal(got.samples[3], np.arange(6, dtype=np.float32).reshape(2, 3) + 3)
    np.testing.assert_array_equal(got.offset, np.arange(5))
    assert got.offset.dtype == np.int64 and got.label.dtype == np.int32 and got.deliveries.dtype == np.uint32
    assert got.label.tolist() == [0, 1, -1, 3, 4] and got.confidence[4] == np.float32(1.0)
    assert got.metadata == [{}, {}, {"camera": "a"}, {}, {}]
    assert got.positive[2] == (0, 4) and got.negative[2] == (2,) and got.positive[0] == ()
    assert got.teacher_version[2] == "v3" and got.policy[1] == "flexmatch"


def test_a_batch_without_lists_or_metadata_carries_none():
    [got] = over_the_wire(encode([with_sample(0), with_sample(1)]))
    assert got.metadata is None and got.positive is None and got.negative is None


def test_without_samples_only_the_samples_are_left_out():
    sent = [with_sample(k) for k in range(3)]
    batches = encode(sent, include_samples=False)
    [got] = over_the_wire(batches)
    assert not batches[0].columns.HasField("samples") and got.samples is None
    assert got.records() == [dataclasses.replace(r, sample=None, shape=None, dtype=None) for r in sent]


def test_records_whose_samples_differ_come_in_separate_batches_in_order():
    plain = LabelRecord(offset=2, sample_id="plain", **BASE)
    sent = [with_sample(0), with_sample(1), plain, with_sample(3, shape=(4,)), with_sample(4, dtype="uint8"),
            with_sample(5, dtype="uint8")]
    got = over_the_wire(encode(sent))
    assert [len(c) for c in got] == [2, 1, 1, 2]
    assert [c.samples.shape if c.samples is not None else None for c in got] == [(2, 2, 3), None, (1, 4), (2, 2, 3)]
    assert [r for c in got for r in c.records()] == sent


def test_the_samples_are_a_read_only_view():
    [got] = over_the_wire(encode([with_sample(0)]))
    with pytest.raises(ValueError):
        got.samples[0, 0, 0] = 1.0


@pytest.mark.parametrize("broken, message", [
    (lambda c: setattr(c, "offset", c.offset[:8]), "1 offset values for 2 ids"),
    (lambda c: c.policy.pop(), "1 policy entries for 2 ids"),
    (lambda c: c.metadata.add(), "1 metadata entries for 2 ids"),
    (lambda c: c.samples.shape.__setitem__(0, 1), "cannot reshape"),
])
def test_columns_of_the_wrong_length_are_refused(broken, message):
    [batch] = encode([with_sample(0, metadata={}), with_sample(1)])
    broken(batch.columns)
    with pytest.raises(ValueError, match=message):
        columns_from_proto(batch.columns)


def test_take_and_concat_keep_every_column_in_step():
    sent = [with_sample(k, label=k) for k in range(4)]
    sent[1] = dataclasses.replace(sent[1], metadata={"m": "1"})
    sent[3] = dataclasses.replace(sent[3], negative=(7,))
    [whole] = column_runs(sent)
    assert whole.take([3, 0]).records() == [sent[3], sent[0]]
    [head], [tail] = column_runs(sent[:2]), column_runs(sent[2:])
    assert head.positive is None and tail.metadata is None
    assert concat_columns([head, tail]).records() == sent
    with pytest.raises(ValueError, match="without"):
        concat_columns([head, *column_runs(sent[2:], samples=False)])


def test_records_that_do_not_stack_are_refused_by_from_records():
    with pytest.raises(ValueError, match="column_runs"):
        LabelColumns.from_records([with_sample(0), with_sample(1, shape=(3,))])
    plain = LabelRecord(offset=1, sample_id="plain", **BASE)
    for mixed in ([plain, with_sample(0)], [with_sample(0), plain]):  # the first lost its samples before
        with pytest.raises(ValueError, match="column_runs"):
            LabelColumns.from_records(mixed)


def test_samples_that_view_a_whole_bytes_object_go_on_the_wire_without_a_copy():
    blob = np.arange(24, dtype="<f4").tobytes()
    whole = np.frombuffer(blob, "<f4").reshape(-1, 2, 3)  # as a segment's samples come from SQLite
    [columns] = column_runs([with_sample(k) for k in range(4)])
    batch = encode_columns("t", dataclasses.replace(columns, samples=whole))
    assert batch.columns.samples.data == blob and list(batch.columns.samples.shape) == [4, 2, 3]
    part = encode_columns("t", dataclasses.replace(columns.take([1, 2]), samples=whole[1:3]))
    assert part.columns.samples.data == blob[24:72]


def test_the_size_bounds_hold_for_every_field():
    sent = [with_sample(k, shape=(3, 5)) for k in range(6)]
    sent[1] = dataclasses.replace(sent[1], sample_id="x" * 256, metadata={"k" * 128: "v" * 1024, "a": ""},
                                  positive=(0, 2**20), negative=(7,), label=-1, offset=2**62, deliveries=2**31)
    sent[2] = dataclasses.replace(sent[2], teacher_version="v" * 300, policy="p" * 80, created_at=-1e300,
                                  confidence=float("nan"))
    sent[3] = dataclasses.replace(sent[3], sample_id="\U0001F600" * 256, metadata={"\u00e9": "\u4e2d" * 1024})
    for include in (True, False):
        assert records_bound(sent, include) >= encode_records("t", sent, include).ByteSize()
        for columns in column_runs(sent, include):
            assert columns_bound(columns) >= encode_columns("t", columns).ByteSize()
    assert records_bound(sent, False) < records_bound(sent, True) - 6 * 15 * 4


def test_split_to_fit_halves_in_order_until_each_part_fits():
    sent = [with_sample(k, shape=(64,)) for k in range(10)]  # 256 bytes of samples each
    [columns] = column_runs(sent)
    limit = columns_bound(columns.take(slice(0, 3)))
    parts = list(split_to_fit(columns, columns_bound, limit))
    assert [len(p) for p in parts] == [2, 3, 2, 3]
    assert [r for p in parts for r in p.records()] == sent
    assert all(columns_bound(p) <= limit for p in parts)
    pieces = list(split_to_fit(sent, records_bound, records_bound(sent[:5])))
    assert [len(p) for p in pieces] == [5, 5] and [r for p in pieces for r in p] == sent
    assert list(split_to_fit(sent[:1], records_bound, 10)) == [sent[:1]]  # one record goes as it is

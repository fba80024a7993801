"""Delivered pseudo-labels on the wire: the server's ``encode_records`` and the client's
``record_from_proto`` give back the records the log read, field for field."""

from __future__ import annotations

import dataclasses

import numpy as np

from pseudostream.clients.client import record_from_proto
from pseudostream.proto.v1 import labeler_pb2 as pb
from pseudostream.server.codec import encode_records
from pseudostream.server.labellog.base import LabelRecord


def records() -> list[LabelRecord]:
    sample = np.arange(6, dtype=np.float32).reshape(2, 3)
    # scores travel as float32: values it holds exactly
    base = dict(label=3, confidence=0.875, weight=0.5, threshold=0.75, teacher_version="v2", policy="flexmatch",
                created_at=1.7e9 + 0.25, deliveries=2)
    return [
        LabelRecord(offset=0, sample_id="plain", **base),
        LabelRecord(offset=1, sample_id="with-sample", sample=sample.tobytes(), shape=(2, 3), dtype="float32", **base),
        LabelRecord(offset=2, sample_id="multi", metadata={"camera": "a", "frame": "7"}, positive=(0, 4),
                    negative=(2,), **{**base, "label": -1}),
        LabelRecord(offset=3, sample_id="only-negative", negative=(1, 5), **base),
    ]


def over_the_wire(batch: pb.PseudoLabelBatch) -> list[LabelRecord]:
    return [record_from_proto(p) for p in pb.PseudoLabelBatch.FromString(batch.SerializeToString()).labels]


def test_records_round_trip_field_for_field():
    sent = records()
    got = over_the_wire(encode_records("t", sent, include_samples=True))
    assert got == sent
    np.testing.assert_array_equal(got[1].sample_array(), np.arange(6, dtype=np.float32).reshape(2, 3))


def test_without_samples_only_the_samples_are_left_out():
    sent = records()
    batch = encode_records("t", sent, include_samples=False)
    assert batch.topic == "t" and not any(p.HasField("sample") for p in batch.labels)
    assert over_the_wire(batch) == [dataclasses.replace(r, sample=None, shape=None, dtype=None) for r in sent]


def test_empty_maps_and_lists_are_not_on_the_wire():
    [plain] = encode_records("t", records()[:1], include_samples=True).labels
    assert not plain.metadata and not plain.positive and not plain.negative and not plain.HasField("sample")

"""What the client hands back: decisions as numpy columns, delivered labels as records or (a
columnar subscription) as numpy columns."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pseudostream.proto.v1 import labeler_pb2 as pb
from pseudostream.server.labellog.columns import COLUMN_DTYPES, LabelColumns

__all__ = ["LabelResult", "AckResult", "LabelColumns", "columns_from_proto"]


@dataclass(frozen=True)
class LabelResult:
    """The service's decisions for one request, one row per sample in request order."""

    request_id: str
    ids: list[str]
    accepted: np.ndarray  # bool
    label: np.ndarray  # int32, -1 for multi-label decisions
    confidence: np.ndarray  # float32
    weight: np.ndarray  # float32
    threshold: np.ndarray  # float32
    reason: list[str]  # "" where accepted
    offset: np.ndarray  # int64, -1 where rejected
    teacher_version: list[str]
    policy: str

    @classmethod
    def from_proto(cls, r: pb.LabelResponse) -> "LabelResult":
        return cls(
            request_id=r.request_id,
            ids=list(r.ids),
            accepted=np.array(r.accepted, dtype=bool),
            label=np.array(r.label, dtype=np.int32),
            confidence=np.array(r.confidence, dtype=np.float32),
            weight=np.array(r.weight, dtype=np.float32),
            threshold=np.array(r.threshold, dtype=np.float32),
            reason=list(r.reason),
            offset=np.array(r.offset, dtype=np.int64),
            teacher_version=list(r.teacher_version),
            policy=r.policy,
        )

    def __len__(self) -> int:
        return len(self.ids)


@dataclass(frozen=True)
class AckResult:
    """How many offsets were newly acked, and the group's committed offset after the ack."""

    acked: int
    committed_offset: int


def columns_from_proto(c: pb.LabelColumns) -> LabelColumns:
    """A columnar delivery as LabelColumns: the numeric columns and samples are read-only numpy
    views of the message's bytes. ValueError when a column's length disagrees with the ids'."""
    ids = list(c.id)
    n = len(ids)
    numeric = {}
    for name in COLUMN_DTYPES.names:
        numeric[name] = np.frombuffer(getattr(c, name), dtype=COLUMN_DTYPES[name])
        if len(numeric[name]) != n:
            raise ValueError(f"delivered columns disagree: {len(numeric[name])} {name} values for {n} ids")
    samples = None
    if c.HasField("samples"):
        t = c.samples
        samples = np.frombuffer(t.data, dtype=np.dtype(t.dtype).newbyteorder("<")).reshape(tuple(t.shape))
        if len(samples) != n:
            raise ValueError(f"delivered columns disagree: {len(samples)} samples for {n} ids")
    lists = {name: getattr(c, name) for name in ("teacher_version", "policy", "metadata", "positive", "negative")}
    for name, values in lists.items():
        if len(values) not in ((n,) if name in ("teacher_version", "policy") else (0, n)):
            raise ValueError(f"delivered columns disagree: {len(values)} {name} entries for {n} ids")
    return LabelColumns(
        ids=ids, teacher_version=list(lists["teacher_version"]), policy=list(lists["policy"]),
        samples=samples, **numeric,
        metadata=[dict(m.entries) for m in lists["metadata"]] or None,
        positive=[tuple(p.classes) for p in lists["positive"]] or None,
        negative=[tuple(p.classes) for p in lists["negative"]] or None,
    )

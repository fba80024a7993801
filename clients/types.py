"""What the client hands back: decisions as numpy columns, delivered labels as records or (a
columnar subscription) as numpy columns."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np

from pseudostream.proto.v1 import labeler_pb2 as pb
from pseudostream.server.labellog.base import COLUMN_DTYPES, LabelRecord

__all__ = ["LabelResult", "AckResult", "LabelColumns"]


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


@dataclass(frozen=True)
class LabelColumns:
    """One delivered batch of a columnar subscription: a row per record, in delivery order.

    The numeric columns and ``samples`` are read-only numpy views of the message's bytes (copy
    one to change it). ``samples`` is [n, ...sample shape] (None without samples); ``metadata``,
    ``positive`` and ``negative`` are None when no record of the batch has any.
    """

    topic: str
    offset: np.ndarray  # int64
    ids: list[str]
    label: np.ndarray  # int32, -1 for multi-label records
    confidence: np.ndarray  # float32
    weight: np.ndarray  # float32
    threshold: np.ndarray  # float32
    teacher_version: list[str]
    policy: list[str]
    deliveries: np.ndarray  # uint32: 1 on first delivery, more on redelivery
    created_at: np.ndarray  # float64 unix seconds
    samples: np.ndarray | None = None
    metadata: list[Mapping[str, str]] | None = None
    positive: list[tuple[int, ...]] | None = None
    negative: list[tuple[int, ...]] | None = None

    @classmethod
    def from_proto(cls, topic: str, c: pb.LabelColumns) -> "LabelColumns":
        """Decode ``c``; ValueError when a column's length disagrees with the ids'."""
        ids = list(c.id)
        n = len(ids)
        numeric = {}
        for name in COLUMN_DTYPES.names:
            numeric[name] = np.frombuffer(getattr(c, name), dtype=COLUMN_DTYPES[name])
            if len(numeric[name]) != n:
                raise ValueError(f"delivered columns disagree: {len(numeric[name])} {name} values "
                                 f"for {n} ids")
        samples = None
        if c.HasField("samples"):
            t = c.samples
            samples = np.frombuffer(t.data, dtype=np.dtype(t.dtype).newbyteorder("<")).reshape(tuple(t.shape))
            if len(samples) != n:
                raise ValueError(f"delivered columns disagree: {len(samples)} samples for {n} ids")
        lists = {name: getattr(c, name) for name in ("teacher_version", "policy", "metadata", "positive", "negative")}
        for name, values in lists.items():
            if len(values) not in ((0, n) if name in ("metadata", "positive", "negative") else (n,)):
                raise ValueError(f"delivered columns disagree: {len(values)} {name} entries for {n} ids")
        return cls(
            topic=topic, ids=ids, teacher_version=list(lists["teacher_version"]), policy=list(lists["policy"]),
            samples=samples, **numeric,
            metadata=[dict(m.entries) for m in lists["metadata"]] or None,
            positive=[tuple(p.classes) for p in lists["positive"]] or None,
            negative=[tuple(p.classes) for p in lists["negative"]] or None,
        )

    def __len__(self) -> int:
        return len(self.ids)

    def records(self) -> list[LabelRecord]:
        """The batch as LabelRecords, as a subscription that is not columnar delivers them."""
        samples = self.samples
        shape = None if samples is None else tuple(samples.shape[1:])
        dtype = None if samples is None else samples.dtype.name
        return [LabelRecord(
            offset=int(self.offset[i]), sample_id=self.ids[i], label=int(self.label[i]),
            confidence=float(self.confidence[i]), weight=float(self.weight[i]),
            threshold=float(self.threshold[i]), teacher_version=self.teacher_version[i],
            policy=self.policy[i], created_at=float(self.created_at[i]), deliveries=int(self.deliveries[i]),
            sample=None if samples is None else samples[i].tobytes(), shape=shape, dtype=dtype,
            metadata=self.metadata[i] if self.metadata else {},
            positive=self.positive[i] if self.positive else (), negative=self.negative[i] if self.negative else (),
        ) for i in range(len(self))]

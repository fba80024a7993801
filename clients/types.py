"""What the client hands back: decisions as numpy columns, delivered labels as records."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pseudostream.proto.v1 import labeler_pb2 as pb

__all__ = ["LabelResult", "AckResult"]


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

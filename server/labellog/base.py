"""The label log: where accepted pseudo-labels wait for trainers.

Semantics every implementation keeps (one contract test suite runs against each):
- ``append`` gives each record the next offset of its topic: 0, 1, 2, ... monotonic, no gaps.
- Consumer groups read a topic independently; inside a group each record goes to one consumer
  at a time. A delivered record stays *pending* until acked; an unacked record is delivered
  again after the visibility timeout (to any consumer of the group), at once to the same
  consumer when it subscribes again (it reads its own pending records first, like Redis
  XREADGROUP from id 0), and at once to the next consumer after ``release`` (a disconnect).
- Acked records are never delivered to that group again. The committed offset of a group is
  the lowest offset it has not acked (everything below is acked): a trainer resumes there.
- Delivery is at-least-once: durable records survive a restart of the service.
- ``save_state``/``load_state`` keep small blobs (policy and adapter checkpoints) per topic.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Mapping, Sequence

import numpy as np

if TYPE_CHECKING:
    from pseudostream.server.labellog.columns import LabelColumns

__all__ = ["LabelBatch", "LabelRecord", "LabelLog"]


@dataclass
class LabelBatch:
    """Accepted labels of one batch of one topic, as columns (n rows)."""

    ids: Sequence[str]
    label: np.ndarray  # [n] int64
    confidence: np.ndarray  # [n] float32
    weight: np.ndarray  # [n] float32
    threshold: np.ndarray  # [n] float32
    teacher_version: str
    policy: str
    samples: np.ndarray | None = None  # [n, ...] the input tensors, when the topic stores them
    metadata: Sequence[Mapping[str, str]] | None = None  # one map per row, or None
    positive: np.ndarray | None = None  # [n, C] bool: multi-label positive classes
    negative: np.ndarray | None = None  # [n, C] bool: negative labels (multi-label, UPS)

    def __len__(self) -> int:
        return len(self.ids)


@dataclass(frozen=True)
class LabelRecord:
    """One delivered pseudo-label."""

    offset: int
    sample_id: str
    label: int
    confidence: float
    weight: float
    threshold: float
    teacher_version: str
    policy: str
    created_at: float  # unix seconds when appended
    deliveries: int = 1  # 1 on first delivery, 2+ on redelivery
    sample: bytes | None = None  # raw little-endian tensor bytes (C order) when stored
    shape: tuple[int, ...] | None = None
    dtype: str | None = None  # numpy dtype name, e.g. "float32"
    metadata: Mapping[str, str] = field(default_factory=dict)
    positive: tuple[int, ...] = ()  # multi-label positive classes
    negative: tuple[int, ...] = ()  # classes the sample is known not to belong to

    def sample_array(self) -> np.ndarray | None:
        """The stored sample as a numpy array (a read-only view of ``sample``), or None."""
        if self.sample is None or self.shape is None or self.dtype is None:
            return None
        return np.frombuffer(self.sample, dtype=np.dtype(self.dtype).newbyteorder("<")).reshape(
            self.shape
        )


class LabelLog(ABC):
    """An append-only, per-topic log of accepted labels with consumer groups.

    Async methods so that network-backed logs (Redis) and file-backed logs (SQLite, run on a
    worker thread) share one interface. Usable as an async context manager.
    """

    @abstractmethod
    async def append(self, topic: str, batch: LabelBatch) -> np.ndarray:
        """Append ``batch`` durably; returns the [n] int64 offsets given to its rows, in order."""

    @abstractmethod
    async def read(
        self, topic: str, group: str, consumer: str, max_records: int, wait_s: float = 0.0,
        samples: bool = True,
    ) -> list[LabelRecord]:
        """Deliver up to ``max_records`` to ``consumer`` of ``group``, in this order: the
        consumer's own pending records, then others' pending records past their visibility
        timeout, then records the group never received. Waits up to ``wait_s`` seconds for at
        least one record; returns [] if none came. Creates the group (at offset 0) if new.
        ``samples`` false: the records may come without their samples (``sample``, ``shape`` and
        ``dtype`` None), which spares a log reading them where it can."""

    async def read_columns(
        self, topic: str, group: str, consumer: str, max_records: int, wait_s: float = 0.0,
        samples: bool = True,
    ) -> list[LabelColumns]:
        """``read`` as columns: the same records in the same order, as consecutive LabelColumns
        (a new one wherever the samples' shape or dtype changes); [] if none came. This one
        converts ``read``'s records; a log that stores columns cuts them without records."""
        from pseudostream.server.labellog.columns import column_runs  # it imports this module

        return column_runs(await self.read(topic, group, consumer, max_records, wait_s, samples), samples)

    @abstractmethod
    async def ack(self, topic: str, group: str, offsets: Sequence[int]) -> int:
        """Mark ``offsets`` done for ``group``; returns how many were pending and are now acked.
        Acking an unknown or already-acked offset is a no-op."""

    @abstractmethod
    async def release(self, topic: str, group: str, consumer: str) -> int:
        """Make ``consumer``'s pending records deliverable to the group's other consumers now
        (called when its stream disconnects); returns how many were released."""

    @abstractmethod
    async def committed(self, topic: str, group: str) -> int:
        """The group's committed offset: every offset below it is acked."""

    @abstractmethod
    async def end_offset(self, topic: str) -> int:
        """The offset the next appended record will get (= records ever appended)."""

    @abstractmethod
    async def lag(self, topic: str, group: str) -> int:
        """Records of ``topic`` the group has not acked yet (pending or never delivered)."""

    @abstractmethod
    async def get(self, topic: str, offsets: Sequence[int]) -> list[LabelRecord]:
        """The records at ``offsets`` (for audits and replay), in the order given; offsets that
        do not exist (never appended, or gone by retention) are skipped. ``deliveries`` is 0."""

    @abstractmethod
    async def remember(self, topic: str, entries: Mapping[str, bytes], ttl_s: float) -> None:
        """Keep a small blob per sample id for ``ttl_s`` seconds (the idempotency window: a
        producer's retry of an id within it gets the first decision back)."""

    @abstractmethod
    async def recall(self, topic: str, ids: Sequence[str]) -> dict[str, bytes]:
        """The unexpired blobs ``remember`` kept for any of ``ids``."""

    async def append_and_remember(
        self, topic: str, batch: LabelBatch | None,
        entries: Callable[[np.ndarray], Mapping[str, bytes]] | None, ttl_s: float,
    ) -> np.ndarray:
        """``append(batch)`` (None or empty: nothing), then ``remember(entries(offsets))``: one
        labeled batch's log records and its idempotency entries, which name those offsets.
        Returns the offsets. Logs that can do both in one transaction override this."""
        offsets = np.empty(0, dtype=np.int64) if batch is None or not len(batch) else await self.append(topic, batch)
        if entries is not None:
            await self.remember(topic, entries(offsets), ttl_s)
        return offsets

    @abstractmethod
    async def save_state(self, topic: str, key: str, blob: bytes) -> None:
        """Store a small checkpoint blob (policy or adapter state) under (topic, key)."""

    @abstractmethod
    async def load_state(self, topic: str, key: str) -> bytes | None:
        """The blob saved under (topic, key), or None."""

    @abstractmethod
    async def list_state(self, topic: str, prefix: str) -> dict[str, bytes]:
        """Every blob of ``topic`` whose key starts with ``prefix``."""

    @abstractmethod
    async def delete_state(self, topic: str, keys: Sequence[str]) -> None:
        """Remove these keys of ``topic`` (missing ones are ignored)."""

    @abstractmethod
    async def close(self) -> None:
        """Release connections and files; pending work is flushed first."""

    async def __aenter__(self) -> "LabelLog":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

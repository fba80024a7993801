"""Delivered labels as columns: ``LabelColumns``, what a columnar read of the label log returns
and a columnar subscription delivers (``SubscribeRequest.columnar``).

A batch of records as numpy columns and, when the records carry samples, one [n, ...] samples
array: no object per record between the log and the trainer. The numeric columns have the wire's
dtypes (``COLUMN_DTYPES``: scores as float32, as ``PseudoLabel`` carries them). One batch's
samples share a shape and dtype; ``column_runs`` cuts records whose samples differ into
consecutive batches.
"""

from __future__ import annotations

import itertools
import operator
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import numpy as np

from pseudostream.server.labellog.base import LabelRecord

__all__ = ["COLUMN_DTYPES", "LabelColumns", "column_runs", "concat_columns", "sample_key"]

# A LabelRecord's numeric fields as columns, with the dtypes they travel in.
COLUMN_DTYPES = np.dtype([("offset", "<i8"), ("label", "<i4"), ("confidence", "<f4"), ("weight", "<f4"),
                          ("threshold", "<f4"), ("deliveries", "<u4"), ("created_at", "<f8")])
_NUMERIC = operator.attrgetter(*COLUMN_DTYPES.names)


@dataclass(frozen=True)
class LabelColumns:
    """A batch of delivered labels, a row per record in delivery order.

    ``samples`` is [n, ...sample shape] (None without samples); ``metadata``, ``positive`` and
    ``negative`` are None when no record of the batch has any. Arrays a client decodes are
    read-only views of the message's bytes (copy one to change it).
    """

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

    def __len__(self) -> int:
        return len(self.ids)

    @classmethod
    def from_records(cls, records: Sequence[LabelRecord], samples: bool = True) -> "LabelColumns":
        """Records as columns; with ``samples`` their samples too, which must then share one
        shape and dtype (``column_runs`` cuts them so), or all be absent."""
        key = sample_key(records[0], samples) if records else None
        if any(sample_key(r, samples) != key for r in records):
            raise ValueError("records whose samples differ in shape or dtype (or that have none) do not "
                             "stack: cut them with column_runs")
        return cls._stacked(records, key)

    @classmethod
    def _stacked(cls, records: Sequence[LabelRecord], key: tuple[tuple[int, ...], str] | None) -> "LabelColumns":
        """``from_records`` for records known to share the ``sample_key`` ``key``."""
        table = np.array(list(map(_NUMERIC, records)), dtype=COLUMN_DTYPES).reshape(len(records))
        stacked = None
        if key is not None:
            shape, dtype = key
            stacked = np.frombuffer(b"".join([r.sample for r in records]),  # type: ignore[misc]
                                    np.dtype(dtype).newbyteorder("<")).reshape(len(records), *shape)
        classes = any(r.positive or r.negative for r in records)
        return cls(
            **{name: table[name] for name in COLUMN_DTYPES.names},
            ids=[r.sample_id for r in records], teacher_version=[r.teacher_version for r in records],
            policy=[r.policy for r in records], samples=stacked,
            metadata=[r.metadata for r in records] if any(r.metadata for r in records) else None,
            positive=[r.positive for r in records] if classes else None,
            negative=[r.negative for r in records] if classes else None,
        )

    def __getitem__(self, rows: slice) -> "LabelColumns":
        """The rows of a slice, as views (``take`` also takes positions)."""
        return self.take(rows)

    def take(self, index: Sequence[int] | slice) -> "LabelColumns":
        """The rows at ``index`` (positions, in that order, or a slice: views of the arrays)."""
        at = index if isinstance(index, slice) else np.asarray(index, dtype=np.intp)
        rows = None if isinstance(index, slice) else at.tolist()  # type: ignore[union-attr]

        def pick(values: list | None) -> list | None:
            if values is None:
                return None
            return values[index] if rows is None else [values[i] for i in rows]  # type: ignore[index]

        return LabelColumns(
            **{name: getattr(self, name)[at] for name in COLUMN_DTYPES.names},
            ids=pick(self.ids), teacher_version=pick(self.teacher_version), policy=pick(self.policy),
            samples=None if self.samples is None else self.samples[at], metadata=pick(self.metadata),
            positive=pick(self.positive), negative=pick(self.negative))

    def records(self) -> list[LabelRecord]:
        """The batch as LabelRecords (what a subscription that is not columnar delivers)."""
        samples = self.samples
        shape = None if samples is None else tuple(samples.shape[1:])
        dtype = None if samples is None else samples.dtype.name
        return [LabelRecord(
            offset=int(self.offset[i]), sample_id=self.ids[i], label=int(self.label[i]),
            confidence=float(self.confidence[i]), weight=float(self.weight[i]),
            threshold=float(self.threshold[i]), teacher_version=self.teacher_version[i],
            policy=self.policy[i], created_at=float(self.created_at[i]), deliveries=int(self.deliveries[i]),
            sample=None if samples is None else samples[i].tobytes(), shape=shape, dtype=dtype,
            metadata=dict(self.metadata[i]) if self.metadata else {},
            positive=tuple(self.positive[i]) if self.positive else (),
            negative=tuple(self.negative[i]) if self.negative else (),
        ) for i in range(len(self))]


def sample_key(record: LabelRecord, samples: bool = True) -> tuple[tuple[int, ...], str] | None:
    """(shape, dtype) of the record's sample, or None without one (or without ``samples``)."""
    if samples and record.sample is not None and record.shape is not None and record.dtype:
        return tuple(record.shape), record.dtype
    return None


def column_runs(records: Sequence[LabelRecord], samples: bool = True) -> list[LabelColumns]:
    """``records`` as consecutive LabelColumns, a new one wherever the samples' shape or dtype
    (or having one) changes, so each batch's samples stack."""
    return [LabelColumns._stacked(list(run), key)
            for key, run in itertools.groupby(records, lambda r: sample_key(r, samples))]


def concat_columns(parts: Sequence[LabelColumns]) -> LabelColumns:
    """``parts`` one after the other (their samples, if any, must share shape and dtype)."""
    if len(parts) == 1:
        return parts[0]

    def joined(name: str, absent: Callable[[int], list]) -> list | None:
        if all(getattr(p, name) is None for p in parts):
            return None
        return [v for p in parts for v in (getattr(p, name) if getattr(p, name) is not None else absent(len(p)))]

    with_samples = [p.samples is not None for p in parts]
    if any(with_samples) and not all(with_samples):
        raise ValueError("cannot join columns with samples to columns without")
    return LabelColumns(
        **{name: np.concatenate([getattr(p, name) for p in parts]) for name in COLUMN_DTYPES.names},
        ids=[i for p in parts for i in p.ids],
        teacher_version=[v for p in parts for v in p.teacher_version],
        policy=[v for p in parts for v in p.policy],
        samples=np.concatenate([p.samples for p in parts]) if all(with_samples) else None,  # type: ignore[misc]
        metadata=joined("metadata", lambda n: [{}] * n),
        positive=joined("positive", lambda n: [()] * n), negative=joined("negative", lambda n: [()] * n))

"""Label records as row tuples: what the Redis log stores per record, and what the SQLite
log's per-record table held in earlier releases (``_sqlite_schema.migrate`` reads those).

A row holds, in order: sample_id, label, confidence, weight, threshold, teacher_version, policy,
created_at, sample bytes (little-endian, C order), shape (JSON), dtype, metadata (JSON) and class
lists (JSON or None); ``to_record`` takes the offset first.
"""

from __future__ import annotations

import json

import numpy as np

from pseudostream.server.errors import InvalidInput
from pseudostream.server.labellog.base import LabelBatch, LabelRecord

__all__ = ["batch_rows", "to_record", "class_lists", "little_samples"]


def batch_rows(batch: LabelBatch, created_at: float) -> list[tuple]:
    """The batch as row tuples in the order of the module docstring, without the offset."""
    n = len(batch)
    little = little_samples(batch)
    samples: list[bytes | None] = [None] * n
    shape = dtype = None
    if little is not None:
        samples = [row.tobytes() for row in little]
        shape, dtype = json.dumps(list(little.shape[1:])), little.dtype.name
    metadata = [json.dumps(dict(m)) for m in batch.metadata] if batch.metadata else ["{}"] * n
    return list(zip(
        [str(i) for i in batch.ids],
        np.asarray(batch.label, dtype=np.int64).tolist(),
        np.asarray(batch.confidence, dtype=np.float64).tolist(),
        np.asarray(batch.weight, dtype=np.float64).tolist(),
        np.asarray(batch.threshold, dtype=np.float64).tolist(),
        [batch.teacher_version] * n, [batch.policy] * n, [created_at] * n,
        samples, [shape] * n, [dtype] * n, metadata, class_lists(batch, n),
    ))


def little_samples(batch: LabelBatch) -> np.ndarray | None:
    """Checks that every column has len(ids) rows; returns the samples as a little-endian,
    C-order array (None when the batch has none)."""
    n = len(batch)
    columns = {"label": batch.label, "confidence": batch.confidence, "weight": batch.weight,
               "threshold": batch.threshold, "samples": batch.samples, "metadata": batch.metadata,
               "positive": batch.positive, "negative": batch.negative}
    for name, col in columns.items():
        if col is not None and len(col) != n:
            raise InvalidInput(f"LabelBatch.{name} has {len(col)} rows, expected {n} (len(ids))")
    if batch.samples is None:
        return None
    if batch.samples.dtype.kind not in "biufc":
        raise InvalidInput(f"samples must be a numeric array, got dtype {batch.samples.dtype}")
    return np.ascontiguousarray(batch.samples, batch.samples.dtype.newbyteorder("<"))


def class_lists(batch: LabelBatch, n: int) -> list[str | None]:
    """Per row, JSON {"positive": [...], "negative": [...]} for class-list decisions, else None."""
    if batch.positive is None and batch.negative is None:
        return [None] * n
    empty = np.zeros((n, 0), bool)
    pos = empty if batch.positive is None else np.asarray(batch.positive, bool)
    neg = empty if batch.negative is None else np.asarray(batch.negative, bool)
    return [json.dumps({"positive": np.flatnonzero(p).tolist(), "negative": np.flatnonzero(q).tolist()})
            for p, q in zip(pos, neg)]


def to_record(row: tuple, deliveries: int) -> LabelRecord:
    off, sid, label, conf, weight, thr, version, policy, created, sample, shape, dtype, meta, cls = row
    classes = json.loads(cls) if cls else {}
    return LabelRecord(
        offset=off, sample_id=sid, label=label, confidence=conf, weight=weight, threshold=thr,
        teacher_version=version, policy=policy, created_at=created, deliveries=deliveries,
        sample=None if sample is None else bytes(sample),
        shape=None if shape is None else tuple(json.loads(shape)),
        dtype=dtype, metadata=json.loads(meta),
        positive=tuple(classes.get("positive", ())), negative=tuple(classes.get("negative", ())),
    )

"""The SQLite label log's storage unit: one *segment* row per appended batch.

A segment holds the records at offsets ``first .. first + n - 1`` column by column: sample ids
(JSON list), labels and scores (one little-endian blob: n int64 labels, then confidence, weight and
threshold as n float64 each), the samples (their rows' bytes end to end, little-endian C order,
with one shape and dtype), metadata (JSON list of maps, NULL when every map is empty) and class
lists (JSON list of {"positive", "negative"} or null per row, NULL when no row has them). Teacher
version, policy and creation time are the batch's. Appending a batch of 128 is then one row
instead of 128, which is where the append's time went (``benchmarks/bench_profile.py``).

``pack`` builds a segment from a ``LabelBatch``, ``pack_rows`` from rows in the ``_rows`` layout
(what the per-record ``records`` table of earlier releases held, migrated on open), ``unpack``
turns a segment back into ``LabelRecord`` s and ``unpack_columns`` into ``LabelColumns`` (numpy
slices of its columns: no object per record).
"""

from __future__ import annotations

import json
from typing import Iterable, Sequence

import numpy as np

from pseudostream.server.labellog._rows import class_lists, little_samples
from pseudostream.server.labellog.base import LabelBatch, LabelRecord
from pseudostream.server.labellog.columns import COLUMN_DTYPES, LabelColumns

__all__ = ["SEGMENT_COLUMNS", "nbytes", "pack", "pack_rows", "unpack", "unpack_columns", "runs"]

# After (topic, first): what pack/pack_rows return, in this order.
SEGMENT_COLUMNS = ("n", "created_at", "teacher_version", "policy", "ids", "numbers", "samples", "shape", "dtype",
                   "metadata", "classes")


def _numbers(label: Sequence[int], scores: Sequence[Sequence[float]]) -> bytes:
    return (np.asarray(label, dtype="<i8").tobytes()
            + np.asarray(scores, dtype="<f8").reshape(3, -1).tobytes())


def pack(batch: LabelBatch, created_at: float) -> tuple:
    """The batch as one segment row (``SEGMENT_COLUMNS`` order)."""
    n = len(batch)
    little = little_samples(batch)  # checks the columns' lengths too
    scores = np.stack([np.asarray(c, dtype=np.float64) for c in (batch.confidence, batch.weight, batch.threshold)])
    metadata = None
    if batch.metadata and any(batch.metadata):
        metadata = json.dumps([dict(m) for m in batch.metadata])
    classes = None
    if batch.positive is not None or batch.negative is not None:
        classes = "[" + ",".join(class_lists(batch, n)) + "]"
    samples = shape = dtype = None
    if little is not None:
        # The array's own bytes: sqlite3 binds any buffer (and copies it once, into the page).
        samples, shape, dtype = memoryview(little).cast("B"), json.dumps(list(little.shape[1:])), little.dtype.name
    return (n, created_at, batch.teacher_version, batch.policy, json.dumps([str(i) for i in batch.ids]),
            _numbers(batch.label, scores), samples, shape, dtype, metadata, classes)


def nbytes(segment: tuple | None) -> int:
    """About the bytes a segment adds to the file: its blobs and texts (0 for None)."""
    return 0 if segment is None else sum(len(v) for v in segment if isinstance(v, (bytes, str, memoryview)))


def pack_rows(rows: Sequence[tuple]) -> tuple:
    """Rows in the ``_rows`` layout (sample_id, label, confidence, weight, threshold,
    teacher_version, policy, created_at, sample, shape, dtype, metadata, classes) that share
    version, policy, creation time, shape and dtype (``runs`` cuts them so) as one segment."""
    ids, label, conf, weight, thr, version, policy, created, sample, shape, dtype, meta, cls = zip(*rows)
    samples = None if sample[0] is None else b"".join(bytes(s) for s in sample)
    metadata = None if all(m in (None, "{}") for m in meta) else "[" + ",".join(m or "{}" for m in meta) + "]"
    classes = None if all(c is None for c in cls) else "[" + ",".join(c or "null" for c in cls) + "]"
    return (len(rows), created[0], version[0], policy[0], json.dumps(list(ids)), _numbers(label, [conf, weight, thr]),
            samples, shape[0], dtype[0], metadata, classes)


def runs(rows: Iterable[tuple], most: int) -> Iterable[tuple[int, list[tuple]]]:
    """(first offset, rows) runs of consecutive ``(offset, *row)`` tuples that ``pack_rows`` can
    pack: at most ``most`` rows, offsets without gaps, one version, policy, creation time, shape,
    dtype and samples-or-not."""
    run: list[tuple] = []
    first = key = None
    for off, *row in rows:
        k = (row[5], row[6], row[7], row[8] is None, row[9], row[10])
        if run and (k != key or off != first + len(run) or len(run) >= most):
            yield first, run
            run = []
        if not run:
            first, key = off, k
        run.append(tuple(row))
    if run:
        yield first, run


def unpack(first: int, segment: Sequence, wanted: Iterable[tuple[int, int]],
           samples_from: int = 0) -> dict[int, LabelRecord]:
    """The records of ``segment`` (a row in ``SEGMENT_COLUMNS`` order) for the (offset,
    deliveries) pairs of ``wanted``, offsets inside the segment. Its samples may be a slice of the
    blob that starts at row ``samples_from`` and covers the rows asked for."""
    n, created, version, policy, ids, numbers, samples, shape, dtype, metadata, classes = segment
    id_list = json.loads(ids)
    numbers = bytes(numbers)
    labels = np.frombuffer(numbers, "<i8", n).tolist()
    conf, weight, thr = np.frombuffer(numbers, "<f8", 3 * n, 8 * n).reshape(3, n).tolist()
    meta = json.loads(metadata) if metadata else None
    cls = json.loads(classes) if classes else None
    dims = None if shape is None else tuple(json.loads(shape))
    width = 0 if samples is None else int(np.prod(dims)) * np.dtype(dtype).itemsize  # bytes per row
    found = {}
    for off, deliveries in wanted:
        i = off - first
        c = cls[i] if cls and cls[i] else {}
        found[off] = LabelRecord(
            offset=off, sample_id=id_list[i], label=labels[i], confidence=conf[i], weight=weight[i],
            threshold=thr[i], teacher_version=version, policy=policy, created_at=created, deliveries=deliveries,
            sample=None if samples is None else bytes(samples[(i - samples_from) * width:(i - samples_from + 1) * width]),
            shape=dims, dtype=dtype, metadata=dict(meta[i]) if meta else {},
            positive=tuple(c.get("positive", ())), negative=tuple(c.get("negative", ())),
        )
    return found


def unpack_columns(first: int, segment: Sequence, offsets: Sequence[int], deliveries: Sequence[int],
                   samples_from: int = 0) -> LabelColumns:
    """The rows of ``segment`` at ``offsets`` (ascending, inside the segment) as LabelColumns,
    with their ``deliveries``; its samples may be a slice of the blob, as for ``unpack``."""
    n, created, version, policy, ids, numbers, samples, shape, dtype, metadata, classes = segment
    at = np.asarray(offsets, dtype=np.int64) - first
    k, rows = len(at), at.tolist()
    numbers = bytes(numbers)
    scores = np.frombuffer(numbers, "<f8", 3 * n, 8 * n).reshape(3, n)[:, at]
    stacked = None
    if samples is not None:
        stacked = np.frombuffer(samples, np.dtype(dtype).newbyteorder("<")).reshape(-1, *json.loads(shape))
        lo = rows[0] - samples_from
        # Consecutive rows (a fresh read) stay a view of the blob; others are gathered.
        stacked = stacked[lo:lo + k] if rows[-1] - rows[0] == k - 1 else stacked[at - samples_from]
    id_list = json.loads(ids)
    meta = json.loads(metadata) if metadata else None
    cls = [c or {} for c in json.loads(classes)] if classes else None
    return LabelColumns(
        offset=np.asarray(offsets, dtype=COLUMN_DTYPES["offset"]), ids=[id_list[i] for i in rows],
        label=np.frombuffer(numbers, "<i8", n)[at].astype(COLUMN_DTYPES["label"]),
        confidence=scores[0].astype(COLUMN_DTYPES["confidence"]), weight=scores[1].astype(COLUMN_DTYPES["weight"]),
        threshold=scores[2].astype(COLUMN_DTYPES["threshold"]), teacher_version=[version] * k, policy=[policy] * k,
        deliveries=np.asarray(deliveries, dtype=COLUMN_DTYPES["deliveries"]),
        created_at=np.full(k, created, dtype=COLUMN_DTYPES["created_at"]), samples=stacked,
        metadata=[dict(meta[i]) for i in rows] if meta else None,
        positive=[tuple(cls[i].get("positive", ())) for i in rows] if cls else None,
        negative=[tuple(cls[i].get("negative", ())) for i in rows] if cls else None,
    )

"""Idempotent labeling: a sample id labeled again within the window gets its first decision.

Producers retry (a timeout, a reconnect): the retry must not advance the policy a second time nor
append a second log record. Decisions are remembered per sample id in the label log's store
(shared by replicas when the log is Redis) for ``idempotency_window_s``; a retry, or a second copy
of an id inside one batch, is answered from there.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Sequence

import numpy as np

from pseudostream.server.labellog.entries import DecisionEntries
from pseudostream.server.selection.base import Decisions

__all__ = ["DecisionEntries", "encode_decisions", "decode_decisions", "concat_decisions", "unique_rows"]

_FIELDS = [f.name for f in dataclasses.fields(Decisions)]


def concat_decisions(parts: Sequence[Decisions]) -> Decisions:
    """Decisions of several batches, one after the other (optional columns kept if all have them)."""
    if len(parts) == 1:
        return parts[0]

    def cat(name: str) -> np.ndarray | None:
        cols = [getattr(p, name) for p in parts]
        return None if any(c is None for c in cols) else np.concatenate(cols)

    return Decisions(**{name: cat(name) for name in _FIELDS})


def unique_rows(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(index of each distinct id's first row, distinct-id index of every row)."""
    if len(set(ids.tolist())) == len(ids):  # the common case: no copies in the batch
        identity = np.arange(len(ids))
        return identity, identity
    _, first, inverse = np.unique(ids.astype(str), return_index=True, return_inverse=True)
    return first, inverse


def encode_decisions(d: Decisions, offsets: np.ndarray, version: str, ids: Sequence[str]) -> DecisionEntries:
    """One compact blob per sample, ``ids[k]``'s at position k.

    Single-label decisions are packed rows of one numpy record array (tag byte 1, then accept,
    label, confidence, weight, threshold, offset, the reason padded to the batch's width for it,
    and the version), kept end to end as the entries' one bytes object: no per-sample Python work
    (a tenth of the time of writing JSON at batch 128, and no bytes object per sample).
    Multi-label decisions, which carry class lists, are JSON (they start with ``{``).
    """
    reasons = _reason_bytes(d.reason)
    if d.positive is not None or d.negative is not None or reasons is None:
        return DecisionEntries.joined(ids, [_encode_one(d, offsets, version, i) for i in range(len(d))])
    v = version.encode()
    rows = np.empty(len(d), _row_dtype(reasons.dtype.itemsize, max(1, len(v))))
    rows["tag"], rows["width"], rows["a"], rows["l"] = _PACKED, reasons.dtype.itemsize, d.accept, d.label
    rows["c"], rows["w"], rows["t"], rows["o"] = d.confidence, d.weight, d.threshold, offsets
    rows["r"], rows["v"] = reasons, v
    return DecisionEntries.fixed(ids, rows.tobytes(), rows.dtype.itemsize)


def _reason_bytes(reason: np.ndarray) -> np.ndarray | None:
    """The reasons as UTF-8 in a fixed-width bytes array (width 1 to 255), or None when the
    longest is over 255 bytes. ASCII text arrays are converted as a whole; others string by string."""
    width = reason.dtype.itemsize // 4
    if reason.dtype.kind == "U" and 0 < width <= 255:
        # UCS-4 code points as a matrix; ASCII is one byte each (numpy's own cast takes 150 ns a string).
        points = np.ascontiguousarray(reason).view(np.uint32).reshape(len(reason), width)
        if not points.size or points.max() < 128:
            return points.astype(np.uint8).view(f"S{width}").reshape(len(reason))
    coded = {r: r.encode() for r in set(reason.tolist())}
    width = max(1, max(map(len, coded.values()), default=0))  # numpy has no zero-width field
    if width > 255:
        return None
    return np.array([coded[r] for r in reason.tolist()], dtype=f"S{width}")


_PACKED = 1  # first byte of a packed blob; JSON blobs start with "{"
_FIXED = [("tag", "u1"), ("width", "u1"), ("a", "u1"), ("l", "<i8"), ("c", "<f4"), ("w", "<f4"),
          ("t", "<f4"), ("o", "<i8")]
_FIXED_SIZE = np.dtype(_FIXED).itemsize


def _row_dtype(reason_width: int, version_size: int) -> np.dtype:
    return np.dtype(_FIXED + [("r", f"S{reason_width}"), ("v", f"S{version_size}")])


def _unpack(blob: bytes) -> dict:
    """A packed blob as the dict its JSON form would parse to."""
    width = blob[1]
    row = np.frombuffer(blob, _row_dtype(width, len(blob) - _FIXED_SIZE - width))[0]
    # Fixed-width bytes fields drop trailing NULs; the reason and version never end in one.
    return {"a": bool(row["a"]), "l": int(row["l"]), "c": float(row["c"]), "w": float(row["w"]),
            "t": float(row["t"]), "r": bytes(row["r"]).decode(), "o": int(row["o"]),
            "v": bytes(row["v"]).decode()}


def _encode_one(d: Decisions, offsets: np.ndarray, version: str, i: int) -> bytes:
    entry = {"a": bool(d.accept[i]), "l": int(d.label[i]), "c": float(d.confidence[i]),
             "w": float(d.weight[i]), "t": float(d.threshold[i]), "r": str(d.reason[i]),
             "o": int(offsets[i]), "v": version}
    if d.positive is not None:
        entry["p"] = np.flatnonzero(d.positive[i]).tolist()
    if d.negative is not None:
        entry["n"] = np.flatnonzero(d.negative[i]).tolist()
    return json.dumps(entry, separators=(",", ":")).encode()


def decode_decisions(blobs: Sequence[bytes], num_classes: int) -> tuple[Decisions, np.ndarray, np.ndarray]:
    """(decisions, offsets, teacher versions) from ``encode_decisions`` blobs."""
    e = [_unpack(b) if b[:1] == bytes([_PACKED]) else json.loads(b) for b in blobs]
    class_lists = any("p" in x or "n" in x for x in e)

    def lists(key: str) -> np.ndarray | None:
        if not class_lists:
            return None
        out = np.zeros((len(e), num_classes), bool)
        for i, entry in enumerate(e):
            out[i, entry.get(key, [])] = True
        return out

    d = Decisions(
        accept=np.array([x["a"] for x in e], bool), label=np.array([x["l"] for x in e], np.int64),
        confidence=np.array([x["c"] for x in e], np.float32),
        weight=np.array([x["w"] for x in e], np.float32),
        threshold=np.array([x["t"] for x in e], np.float32),
        reason=np.array([x["r"] for x in e], dtype=object).astype(str),
        positive=lists("p"), negative=lists("n"))
    return d, np.array([x["o"] for x in e], np.int64), np.array([x["v"] for x in e], dtype=object)

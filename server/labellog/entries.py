"""One labeled batch's idempotency entries (sample id -> decision blob) as the log stores them.

``DecisionEntries`` is a ``Mapping[str, bytes]``, so every ``LabelLog`` takes it where it takes
a dict, but it keeps the blobs end to end in one bytes object with their end positions: the
SQLite log writes that as its ``decided`` row as it is, and the pipeline builds it without a
bytes object or a dict entry per sample (single-label decisions are rows of one numpy record
array: ``DecisionEntries.fixed``). A blob is cut out only when someone asks for it by id.
"""

from __future__ import annotations

from collections.abc import ItemsView, Iterator, Mapping, Sequence

import numpy as np

__all__ = ["DecisionEntries"]


class DecisionEntries(Mapping[str, bytes]):
    """``ids[k]`` -> ``data[ends[k - 1]:ends[k]]`` (from 0 for the first). Ids are distinct."""

    __slots__ = ("ids", "data", "ends", "_where")

    def __init__(self, ids: Sequence[str], data: bytes, ends: np.ndarray) -> None:
        ends = np.asarray(ends, dtype="<i8")
        if ends.shape != (len(ids),) or (len(ids) and int(ends[-1]) != len(data)):
            raise ValueError(f"{len(ids)} ids need as many blob ends, the last at {len(data)} bytes; "
                             f"got ends of shape {ends.shape}")
        self.ids = list(ids)
        self.data = data
        self.ends = ends
        self._where: dict[str, int] | None = None  # id -> position, built on the first lookup

    @classmethod
    def fixed(cls, ids: Sequence[str], data: bytes, size: int) -> "DecisionEntries":
        """Blobs of ``size`` bytes each, end to end in ``data``."""
        return cls(ids, data, np.arange(size, size * len(ids) + 1, size, dtype="<i8") if size else
                   np.zeros(len(ids), "<i8"))

    @classmethod
    def joined(cls, ids: Sequence[str], blobs: Sequence[bytes]) -> "DecisionEntries":
        """Blobs of any sizes, ``ids[k]``'s at position k, joined end to end."""
        return cls(ids, b"".join(blobs), np.cumsum([len(b) for b in blobs], dtype="<i8"))

    @classmethod
    def of(cls, entries: Mapping[str, bytes]) -> "DecisionEntries":
        """Any mapping of id -> blob, as entries (itself when it already is)."""
        if isinstance(entries, DecisionEntries):
            return entries
        return cls.joined(list(entries), [bytes(b) for b in entries.values()])

    @property
    def nbytes(self) -> int:
        """Bytes of the blobs together."""
        return len(self.data)

    def blob(self, k: int) -> bytes:
        """The blob at position ``k``."""
        return self.data[int(self.ends[k - 1]) if k else 0:int(self.ends[k])]

    def __getitem__(self, sid: str) -> bytes:
        if self._where is None:
            self._where = {s: k for k, s in enumerate(self.ids)}
        return self.blob(self._where[sid])

    def __iter__(self) -> Iterator[str]:
        return iter(self.ids)

    def __len__(self) -> int:
        return len(self.ids)

    def items(self) -> ItemsView[str, bytes]:
        return _Items(self)


class _Items(ItemsView[str, bytes]):
    """(id, blob) pairs in order, cut from the data without looking each id up."""

    _mapping: DecisionEntries

    def __iter__(self) -> Iterator[tuple[str, bytes]]:
        entries, starts = self._mapping, 0
        data = entries.data
        for sid, end in zip(entries.ids, entries.ends.tolist()):
            yield sid, data[starts:end]
            starts = end

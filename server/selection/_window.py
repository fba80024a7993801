"""Bounded rolling windows (ring buffers) for the windowed policies, vectorized on push."""

from __future__ import annotations

import numpy as np

__all__ = ["RowWindow", "ClassWindows"]


class RowWindow:
    """The most recent ``capacity`` rows of ``width`` floats each."""

    def __init__(self, capacity: int, width: int) -> None:
        self.capacity = int(capacity)
        self._buf = np.zeros((self.capacity, width), np.float64)
        self._pos = 0
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def push(self, rows: np.ndarray) -> None:
        """Append rows [n, width]; the oldest rows beyond ``capacity`` are dropped."""
        rows = np.asarray(rows, np.float64)[-self.capacity :]
        n = rows.shape[0]
        self._buf[(self._pos + np.arange(n)) % self.capacity] = rows
        self._pos = (self._pos + n) % self.capacity
        self._size = min(self._size + n, self.capacity)

    def values(self) -> np.ndarray:
        """The rows held, oldest first, [size, width]."""
        if self._size < self.capacity:
            return self._buf[: self._size]
        return np.concatenate([self._buf[self._pos :], self._buf[: self._pos]])

    def state(self) -> list[list[float]]:
        return self.values().tolist()

    def load(self, rows: list) -> None:
        self._pos = self._size = 0
        arr = np.asarray(rows, np.float64).reshape(-1, self._buf.shape[1])
        self.push(arr)


class ClassWindows:
    """Per class, the most recent ``capacity`` values observed for that class."""

    def __init__(self, num_classes: int, capacity: int) -> None:
        self.capacity = int(capacity)
        self._buf = np.zeros((num_classes, self.capacity), np.float64)
        self._pos = np.zeros(num_classes, np.int64)
        self.sizes = np.zeros(num_classes, np.int64)

    def push(self, values: np.ndarray, classes: np.ndarray) -> None:
        """Append ``values[i]`` to the window of ``classes[i]``, in order, without a Python loop."""
        num_classes = self._buf.shape[0]
        classes = np.asarray(classes, np.int64)
        order = np.argsort(classes, kind="stable")
        cls, vals = classes[order], np.asarray(values, np.float64)[order]
        counts = np.bincount(classes, minlength=num_classes)
        rank = np.arange(cls.size) - (np.cumsum(counts) - counts)[cls]  # arrival order in class
        keep = rank >= counts[cls] - self.capacity  # only the last `capacity` per class survive
        cls, vals, rank = cls[keep], vals[keep], rank[keep]
        self._buf[cls, (self._pos[cls] + rank) % self.capacity] = vals
        self._pos = (self._pos + counts) % self.capacity
        self.sizes = np.minimum(self.sizes + counts, self.capacity)

    def sorted_descending(self) -> np.ndarray:
        """[C, capacity]: each class's values sorted descending, padded with -inf."""
        filled = np.arange(self.capacity)[None, :] < self.sizes[:, None]
        return -np.sort(-np.where(filled, self._buf, -np.inf), axis=1)

    def state(self) -> list[list[float]]:
        """Per class, its values oldest first."""
        out = []
        for k, size in enumerate(self.sizes.tolist()):
            row = self._buf[k]
            vals = row[:size] if size < self.capacity else np.roll(row, -int(self._pos[k]))
            out.append(vals.tolist())
        return out

    def load(self, per_class: list[list[float]]) -> None:
        self._pos[:] = 0
        self.sizes[:] = 0
        lengths = [len(vals) for vals in per_class]
        values = np.asarray([v for vals in per_class for v in vals], np.float64)
        self.push(values, np.repeat(np.arange(len(per_class)), lengths))

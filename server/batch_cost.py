"""What one teacher batch costs by batch size: its fixed part says whether waiting to fill pays.

Splitting a batch in two costs the teacher one more fixed overhead (launch, dispatch, the round
trip to Triton); waiting for more samples while the teacher is idle costs the wait. So a partial
batch is worth waiting for only when the fixed overhead is larger than the wait: true of a GPU
(a batch of 128 costs about what a batch of 1 does), not of ONNX Runtime on CPU, where seconds
grow in proportion to the batch (a ResNet-18 here: 3.84 ms for 1 sample, 54.4 ms for 16).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from typing import Awaitable, Callable, Sequence

import numpy as np

__all__ = ["BatchCost", "probe_batch_cost"]

log = logging.getLogger(__name__)


class BatchCost:
    """Batch inference seconds against batch size, fitted as ``t(b) = overhead + per_sample * b``.

    Each power-of-two bucket of sizes keeps an exponentially weighted mean of (size, seconds)
    (``alpha`` for the newest batch); the line is fitted by least squares over the buckets, each
    weighted alike, so a steady load at one size does not erase what was seen at others (the
    startup probes stay until fresher batches of their sizes replace them).
    """

    def __init__(self, alpha: float = 0.2) -> None:
        if not 0 < alpha <= 1:
            raise ValueError(f"alpha must be in (0, 1], got {alpha}")
        self.alpha = alpha
        self._buckets: dict[int, tuple[float, float]] = {}
        self._overhead: float | None = None
        self._stale = False

    def observe(self, size: int, seconds: float) -> None:
        """One batch of ``size`` samples took ``seconds``."""
        if size < 1 or not math.isfinite(seconds) or seconds < 0:
            return
        key = size.bit_length()
        old = self._buckets.get(key)
        a = self.alpha
        self._buckets[key] = (size, seconds) if old is None else (
            (1 - a) * old[0] + a * size, (1 - a) * old[1] + a * seconds)
        self._stale = True

    def overhead_s(self) -> float | None:
        """The fitted fixed seconds per batch (>= 0), or None until two bucket sizes are seen."""
        if self._stale:
            self._stale = False
            self._overhead = self._fit()
        return self._overhead

    def _fit(self) -> float | None:
        if len(self._buckets) < 2:
            return None
        sizes, seconds = np.array(list(self._buckets.values())).T
        _per_sample, overhead = np.polyfit(sizes, seconds, 1)
        return max(0.0, float(overhead))


async def probe_batch_cost(cost: BatchCost, infer: Callable[[np.ndarray], Awaitable[object]],
                           input_shape: Sequence[int], dtype: np.dtype,
                           sizes: Sequence[int] = (1, 16), repeats: int = 3,
                           timeout_s: float = 30.0) -> None:
    """Time ``infer`` on zero batches of each of ``sizes`` (the median of ``repeats``, after one
    untimed warm-up run) into ``cost``, so the fit has two sizes without waiting for real
    batches of two sizes. The core runs it as a background task from start, so the service
    never waits for it (until it ends, a slow teacher's partial batches wait out the delay). A
    teacher that fails, or takes over ``timeout_s`` in all, is logged and left with what was
    timed so far: the fit then learns from real batches."""

    async def probe() -> None:
        await infer(np.zeros((1, *input_shape), dtype))
        for size in sizes:
            x = np.zeros((size, *input_shape), dtype)
            took, rows = [], size
            for _ in range(repeats):
                started = time.perf_counter()
                out = await infer(x)
                took.append(time.perf_counter() - started)
                # A backend that split the batch over idle workers ran parts of this many rows.
                rows = getattr(out, "part_rows", size)
            cost.observe(rows, float(np.median(took)))

    try:
        await asyncio.wait_for(probe(), timeout_s)
    except Exception as exc:  # TimeoutError included
        log.warning("could not time the teacher's batch cost at start (%s%s); the adaptive delay "
                    "learns it from real batches", type(exc).__name__, f": {exc}" if str(exc) else "")

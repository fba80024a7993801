"""Micro-batching across streams: samples of many clients share one teacher batch.

The policy is plain functions (``take_batch``, ``batch_wait``, ``ArrivalRate``, ``fills_in``),
unit-tested without a server; ``MicroBatcher`` is the asyncio loop around them.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Mapping, Sequence

import numpy as np

from pseudostream.server.errors import Overloaded

__all__ = ["WorkItem", "metadata_rows", "take_batch", "batch_wait", "ArrivalRate", "fills_in", "MicroBatcher"]

log = logging.getLogger(__name__)


@dataclass(eq=False)
class WorkItem:
    """Samples of one request (or one chunk of it) waiting for the teacher."""

    topic: str
    ids: Sequence[str]
    inputs: np.ndarray  # [n, *input_shape]
    metadata: Sequence[Mapping[str, str]] | None = None
    trusted: bool = True  # from a producer the topic learns from
    future: asyncio.Future[Any] | None = None
    enqueued_at: float = field(default_factory=time.monotonic)

    @property
    def size(self) -> int:
        return int(self.inputs.shape[0])


def metadata_rows(items: Sequence[WorkItem]) -> list[Mapping[str, str]] | None:
    """Per sample of ``items`` in order, its metadata ({} where an item has none); None if no
    item has any."""
    if all(not i.metadata for i in items):
        return None
    rows: list[Mapping[str, str]] = []
    for item in items:
        rows.extend(item.metadata if item.metadata else [{}] * item.size)
    return rows


def take_batch(queue: deque[WorkItem], max_batch: int) -> list[WorkItem]:
    """Pop items from the front of ``queue`` while their samples fit in ``max_batch``.

    Items whose caller has gone (future done or cancelled) are dropped. The first live item is
    always taken, so an item larger than ``max_batch`` still makes progress (callers split
    requests into chunks of at most ``max_batch`` samples, so this does not happen in the service).
    """
    batch: list[WorkItem] = []
    total = 0
    while queue:
        item = queue[0]
        if item.future is not None and item.future.done():
            queue.popleft()
            continue
        if batch and total + item.size > max_batch:
            break
        batch.append(queue.popleft())
        total += item.size
    return batch


def batch_wait(queued: int, oldest_enqueued_at: float, now: float, max_batch: int,
               max_delay_s: float) -> float:
    """Seconds to wait before cutting a batch: 0 when ``max_batch`` samples are queued or the
    oldest item has waited ``max_delay_s``; otherwise the time left until that deadline."""
    if queued >= max_batch:
        return 0.0
    return max(0.0, oldest_enqueued_at + max_delay_s - now)


# The adaptive delay cuts early only for a teacher whose batch inference takes less than this
# many max delays (the digits CNN: 4-8 ms against 5; a ResNet-18 on CPU: 80-650 ms).
FAST_TEACHER = 4.0


class ArrivalRate:
    """Samples per second arriving, exponentially weighted over about ``tau_s`` seconds."""

    def __init__(self, tau_s: float = 0.1) -> None:
        self.tau_s = tau_s
        self._rate = 0.0
        self._at = time.monotonic()

    def add(self, samples: int, now: float) -> None:
        self._rate = self.at(now) + samples / self.tau_s
        self._at = now

    def at(self, now: float) -> float:
        """The rate at ``now``: the weighted arrivals, decayed since the last one."""
        return self._rate * math.exp(-max(0.0, now - self._at) / self.tau_s)


def fills_in(queued: int, rate: float, seconds: float, max_batch: int) -> bool:
    """Whether ``queued`` samples reach ``max_batch`` within ``seconds`` at ``rate`` samples/s."""
    return queued + rate * seconds >= max_batch


class MicroBatcher:
    """Coalesces WorkItems of all streams of one teacher into batches for ``process``.

    ``process(batch)`` must resolve every item's future. The queue is bounded by
    ``max_queue_samples``: ``submit`` raises Overloaded (RESOURCE_EXHAUSTED) when it is full.
    Up to ``depth`` batches are in ``process`` at once, started in order (the pipeline overlaps
    one batch's inference with the previous batch's selection and log append, and keeps the
    latter in batch order). ``gate``, if given, is awaited before cutting a partial batch (the
    pipeline's: until no batch is in inference), so a small batch is not queued behind a running
    inference while the queue could still fill it; a full batch is cut at once.

    ``idle`` and ``inference_s``, if given, make the delay adaptive: a partial batch is cut at
    once, not after ``max_delay_s``, when the teacher has a free worker (``idle()``), at the
    arrival rate seen the batch would not fill before its deadline anyway, and either the
    teacher's recent inference of a batch (``inference_s()``) is short next to the delay (under
    ``FAST_TEACHER`` times it: waiting adds latency in the order of the inference itself and
    still leaves the batch partial) or its fixed cost per batch (``overhead_s()``, see
    ``batch_cost``) is less than the wait left: splitting the batch costs the teacher one more
    overhead, waiting costs it the wait. A teacher whose batch of 1 costs about what a full batch
    does (a GPU) keeps waiting. The rule is looked at when an item arrives and when the
    teacher frees a worker (``wake``), so a batch that arrived while every worker was busy is
    cut as soon as one is free, not at its deadline. Under load the workers are busy, the gate
    holds the cut, and batches fill as before; ``max_delay_s`` stays the longest any item waits.
    """

    def __init__(
        self,
        process: Callable[[list[WorkItem]], Awaitable[None]],
        *,
        max_batch: int,
        max_delay_s: float,
        max_queue_samples: int,
        name: str = "teacher",
        depth: int = 1,
        gate: Callable[[], Awaitable[None]] | None = None,
        idle: Callable[[], bool] | None = None,
        inference_s: Callable[[], float] | None = None,
        overhead_s: Callable[[], float | None] | None = None,
    ) -> None:
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        self._process = process
        self._slots = asyncio.Semaphore(depth)
        self._gate = gate
        self._idle = idle
        self._inference_s = inference_s
        self._overhead_s = overhead_s
        self._arrivals = ArrivalRate()
        self._inflight: set[asyncio.Task[None]] = set()
        self.max_batch = max_batch
        self.max_delay_s = max_delay_s
        self.max_queue_samples = max_queue_samples
        self.name = name
        self._queue: deque[WorkItem] = deque()
        self._queued = 0
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def queued_samples(self) -> int:
        """Samples waiting for a batch."""
        return self._queued

    def start(self) -> None:
        """Start the batching loop on the running event loop."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"batcher-{self.name}")

    async def stop(self) -> None:
        """Finish the batches already queued, then stop the loop."""
        if self._task is None:
            return
        while self._queue:
            await asyncio.sleep(0.005)
        while self._inflight:
            await asyncio.gather(*self._inflight, return_exceptions=True)
        self._task.cancel()
        try:
            await self._task
        except asyncio.CancelledError:
            pass
        self._task = None

    def wake(self) -> None:
        """Look at the queue again now: the teacher freed a worker, so a partial batch waiting
        out its delay may be cut at once (the adaptive delay's rule)."""
        self._wakeup.set()

    def submit(self, item: WorkItem) -> asyncio.Future[Any]:
        """Queue ``item``; returns the future ``process`` resolves with its result."""
        if self._queued + item.size > self.max_queue_samples:
            raise Overloaded(
                f"teacher {self.name!r} queue is full ({self._queued} samples queued, limit "
                f"{self.max_queue_samples}); retry after a short backoff",
                retry_after_s=max(self.max_delay_s * 4, 0.05),
            )
        item.future = asyncio.get_running_loop().create_future()
        self._queue.append(item)
        self._queued += item.size
        if self._idle is not None:  # only the adaptive delay reads the rate
            self._arrivals.add(item.size, time.monotonic())
        self._wakeup.set()
        return item.future

    async def _run(self) -> None:
        while True:
            if not self._queue:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            now = time.monotonic()
            wait = batch_wait(self._queued, self._queue[0].enqueued_at, now, self.max_batch, self.max_delay_s)
            if wait > 0 and self._cut_early(now, wait):
                wait = 0.0
            if wait > 0:
                self._wakeup.clear()
                try:
                    await asyncio.wait_for(self._wakeup.wait(), timeout=wait)
                except asyncio.TimeoutError:
                    pass
                continue
            await self._slots.acquire()  # a free stage; meanwhile the queue keeps filling
            if self._gate is not None and self._queued < self.max_batch:
                await self._gate()  # a full batch goes at once; a partial one waits for the teacher
            batch = take_batch(self._queue, self.max_batch)
            self._queued = sum(item.size for item in self._queue)
            if not batch:
                self._slots.release()
                continue
            task = asyncio.create_task(self._run_batch(batch), name=f"batch-{self.name}")
            self._inflight.add(task)
            task.add_done_callback(self._inflight.discard)

    def _cut_early(self, now: float, wait: float) -> bool:
        """The adaptive delay's rule (see the class)."""
        if self._idle is None or self._inference_s is None:
            return False
        if not self._idle() or fills_in(self._queued, self._arrivals.at(now), wait, self.max_batch):
            return False
        if self._inference_s() < FAST_TEACHER * self.max_delay_s:
            return True
        overhead = self._overhead_s() if self._overhead_s is not None else None
        return overhead is not None and overhead < wait

    async def _run_batch(self, batch: list[WorkItem]) -> None:
        try:
            await self._process(batch)
        except Exception as exc:  # process failed as a whole: every caller hears it
            log.warning("batch of %d items failed: %s", len(batch), exc)
            for item in batch:
                if item.future is not None and not item.future.done():
                    item.future.set_exception(exc)
        finally:
            self._slots.release()

"""``PseudoLabelDataset``: a topic's accepted pseudo-labels as a PyTorch IterableDataset.

Yields ``(sample, label, weight)`` (the sample as a float tensor when the topic stores samples,
else the sample id). Records arrive through a bounded prefetch queue (backpressure: a slow
trainer does not buffer without limit). Call ``commit()`` after the optimizer step that used the
yielded samples: their offsets are acked, so a restarted trainer resumes after them and gets
every unacked label again. Run it with ``DataLoader(num_workers=0)`` when committing from the
training loop.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from typing import Any, Iterator

import numpy as np
import torch
from torch.utils.data import IterableDataset

from pseudostream.clients.client import AsyncLabelerClient
from pseudostream.clients.sync import LoopThread, new_async_client

__all__ = ["PseudoLabelDataset"]

log = logging.getLogger(__name__)

_END = object()


class PseudoLabelDataset(IterableDataset):
    """Stream of (sample, label, weight) from ``topic`` for consumer ``consumer`` of ``group``.

    ``idle_timeout_s``: stop iterating after this long without a new label (None: never).
    ``max_records``: stop after yielding this many. ``min_weight``: skip (but still ack) labels
    with a lower weight. ``prefetch_batches``: most delivered batches buffered ahead of training.
    """

    def __init__(self, target: str, topic: str, group: str, consumer: str, *,
                 include_samples: bool = True, idle_timeout_s: float | None = None,
                 max_records: int | None = None, min_weight: float = 0.0,
                 max_batch: int = 256, prefetch_batches: int = 4,
                 client_kwargs: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.target, self.topic, self.group, self.consumer = target, topic, group, consumer
        self.include_samples = include_samples
        self.idle_timeout_s = idle_timeout_s
        self.max_records = max_records
        self.min_weight = min_weight
        self.max_batch = max_batch
        self.prefetch_batches = prefetch_batches
        self.client_kwargs = client_kwargs or {}
        self._uncommitted: list[int] = []
        self._lock = threading.Lock()
        self._loop: LoopThread | None = None
        self._client: AsyncLabelerClient | None = None
        self.committed_offset = 0

    def __iter__(self) -> Iterator[tuple[Any, int, float]]:
        if self._loop is None or self._client is None:
            self._loop = LoopThread()
            self._client = self._loop.run(new_async_client(self.target, self.client_kwargs))
        loop, client = self._loop, self._client
        buffer: queue.Queue = queue.Queue(maxsize=self.prefetch_batches)
        pump = asyncio.run_coroutine_threadsafe(self._pump(client, buffer), loop.loop)
        yielded = 0
        try:
            while self.max_records is None or yielded < self.max_records:
                try:
                    records = buffer.get(timeout=self.idle_timeout_s)
                except queue.Empty:
                    return
                if records is _END:
                    return
                for record in records:
                    with self._lock:
                        self._uncommitted.append(record.offset)
                    if record.weight < self.min_weight:
                        continue
                    yield self._item(record), record.label, record.weight
                    yielded += 1
                    if self.max_records is not None and yielded >= self.max_records:
                        return
        finally:
            pump.cancel()
            while True:  # unblock a pump waiting on a full buffer
                try:
                    buffer.get_nowait()
                except queue.Empty:
                    break

    def _item(self, record: Any) -> Any:
        array = record.sample_array() if self.include_samples else None
        if array is None:
            return record.sample_id
        return torch.from_numpy(np.array(array, dtype=np.float32))

    async def _pump(self, client: AsyncLabelerClient, buffer: queue.Queue) -> None:
        loop = asyncio.get_running_loop()
        try:
            async for records in client.subscribe(self.topic, self.group, self.consumer,
                                                  max_batch=self.max_batch,
                                                  include_samples=self.include_samples):
                # A blocking put on a worker thread: waits while the trainer is behind.
                await loop.run_in_executor(None, buffer.put, records)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("subscription to %s ended: %s", self.topic, exc)
            await loop.run_in_executor(None, buffer.put, _END)

    def commit(self) -> int:
        """Ack every label yielded so far (call after the optimizer step); returns how many."""
        with self._lock:
            offsets, self._uncommitted = self._uncommitted, []
        if not offsets or self._loop is None or self._client is None:
            return 0
        result = self._loop.run(self._client.ack(self.topic, self.group, offsets, self.consumer))
        self.committed_offset = result.committed_offset
        return result.acked

    def close(self) -> None:
        """Close the connection (after the last commit)."""
        if self._loop is not None and self._client is not None:
            self._loop.run(self._client.close())
            self._loop.close()
        self._loop = self._client = None


"""``PseudoLabelDataset``: a topic's accepted pseudo-labels as a PyTorch IterableDataset.

Yields ``(sample, label, weight)``, or ``(sample, label, weight, offset)`` with
``with_offsets=True`` (the sample as a float tensor when the topic stores samples and
``include_samples`` is on, else the sample id). With ``batched=True`` it yields each delivered
batch whole, as tensors (``samples`` [n, ...] float32, ``labels`` int64, ``weights`` float32,
``offsets`` int64; a list of ids in place of ``samples`` without them): no object per sample, for
``DataLoader(dataset, batch_size=None)``. Records arrive through a bounded prefetch queue
(backpressure: a slow trainer does not buffer without limit); the subscription is columnar
(``subscribe_columns``): a delivered batch's samples arrive as one array, no object per record.

Acking after the optimizer step that used the samples (at-least-once: a crash before the ack
means the labels come again):
- ``num_workers=0``: call ``commit()`` after the step; it acks everything yielded so far.
- ``num_workers>0``: each DataLoader worker is its own consumer of the group (``consumer-w0``,
  ``consumer-w1``, ...); use ``with_offsets=True`` and wrap the step in
  ``with dataset.step(batch): ...``, which acks the batch's offsets when the block succeeds.
  Use ``multiprocessing_context="spawn"`` (gRPC channels do not survive a fork).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import queue
import threading
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from pseudostream.clients.client import AsyncLabelerClient
from pseudostream.clients.sync import LoopThread, new_async_client
from pseudostream.clients.types import LabelColumns

__all__ = ["PseudoLabelDataset"]

log = logging.getLogger(__name__)

_END = object()


class PseudoLabelDataset(IterableDataset):
    """Stream of pseudo-labels of ``topic`` for consumer ``consumer`` of ``group``.

    ``idle_timeout_s``: stop iterating after this long without a new label (None: never).
    ``max_records``: stop after yielding this many. ``min_weight`` and ``classes``: skip (but
    still ack) labels with a lower weight or another class. ``prefetch_batches``: most delivered
    batches buffered ahead of training. ``batched``: yield delivered batches (module docstring).
    """

    def __init__(self, target: str, topic: str, group: str, consumer: str, *,
                 include_samples: bool = True, with_offsets: bool = False,
                 idle_timeout_s: float | None = None, max_records: int | None = None,
                 min_weight: float = 0.0, classes: Iterable[int] | None = None,
                 max_batch: int = 256, prefetch_batches: int = 4, batched: bool = False,
                 client_kwargs: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.target, self.topic, self.group, self.consumer = target, topic, group, consumer
        self.include_samples, self.with_offsets = include_samples, with_offsets
        self.idle_timeout_s, self.max_records = idle_timeout_s, max_records
        self.min_weight = min_weight
        self.classes = None if classes is None else frozenset(int(c) for c in classes)
        self.max_batch, self.prefetch_batches, self.batched = max_batch, prefetch_batches, batched
        self.client_kwargs = client_kwargs or {}
        self.committed_offset = 0
        self._uncommitted: list[int] = []
        self._lock = threading.Lock()
        self._conn: tuple[int, LoopThread, AsyncLabelerClient] | None = None

    def __getstate__(self) -> dict[str, Any]:
        # Sent to DataLoader workers: without the connection or the lock of this process.
        state = dict(self.__dict__, _conn=None, _uncommitted=[])
        del state["_lock"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def _connection(self) -> tuple[LoopThread, AsyncLabelerClient]:
        """This process's client (a forked or spawned worker makes its own)."""
        if self._conn is None or self._conn[0] != os.getpid():
            loop = LoopThread()
            self._conn = (os.getpid(), loop, loop.run(new_async_client(self.target, self.client_kwargs)))
        return self._conn[1], self._conn[2]

    def _consumer_name(self) -> str:
        worker = get_worker_info()
        return self.consumer if worker is None else f"{self.consumer}-w{worker.id}"

    def __iter__(self) -> Iterator[tuple[Any, ...]]:
        loop, client = self._connection()
        buffer: queue.Queue = queue.Queue(maxsize=self.prefetch_batches)
        pump = asyncio.run_coroutine_threadsafe(
            self._pump(client, self._consumer_name(), buffer), loop.loop)
        try:
            yield from (self._batches(buffer) if self.batched else self._records(buffer))
        finally:
            pump.cancel()
            with contextlib.suppress(queue.Empty):
                while True:  # unblock a pump waiting on a full buffer
                    buffer.get_nowait()

    def _deliveries(self, buffer: queue.Queue, yielded: Callable[[], int]) -> Iterator[LabelColumns]:
        """Delivered batches as they arrive, until ``yielded()`` reaches ``max_records``, the
        subscription ends, or none comes for ``idle_timeout_s``."""
        while self.max_records is None or yielded() < self.max_records:
            try:
                columns = buffer.get(timeout=self.idle_timeout_s)
            except queue.Empty:
                return
            if columns is _END:
                return
            yield columns

    def _records(self, buffer: queue.Queue) -> Iterator[tuple[Any, ...]]:
        yielded = 0
        for columns in self._deliveries(buffer, lambda: yielded):
            offsets, labels, weights = columns.offset.tolist(), columns.label.tolist(), columns.weight.tolist()
            for i, offset in enumerate(offsets):
                with self._lock:
                    self._uncommitted.append(offset)
                if not self._wanted(labels[i], weights[i]):
                    continue
                item = (self._sample(columns, i), labels[i], weights[i])
                yield (*item, offset) if self.with_offsets else item
                yielded += 1
                if self.max_records is not None and yielded >= self.max_records:
                    return

    def _batches(self, buffer: queue.Queue) -> Iterator[tuple[Any, ...]]:
        yielded = 0
        for columns in self._deliveries(buffer, lambda: yielded):
            keep = columns.weight >= self.min_weight
            if self.classes is not None:
                keep &= np.isin(columns.label, list(self.classes))
            rows = np.flatnonzero(keep)
            end = len(columns)  # rows up to here count as seen (acked by commit)
            if self.max_records is not None and len(rows) > self.max_records - yielded:
                rows = rows[:self.max_records - yielded]
                end = int(rows[-1]) + 1
            with self._lock:
                self._uncommitted.extend(columns.offset[:end].tolist())
            if not len(rows):
                continue
            samples: Any = [columns.ids[i] for i in rows.tolist()]
            if self.include_samples and columns.samples is not None:
                samples = torch.from_numpy(np.array(columns.samples[rows], dtype=np.float32))
            item = (samples, torch.from_numpy(columns.label[rows].astype(np.int64)),
                    torch.from_numpy(columns.weight[rows].astype(np.float32)))
            yield (*item, torch.from_numpy(columns.offset[rows].astype(np.int64))) if self.with_offsets else item
            yielded += len(rows)

    def _wanted(self, label: int, weight: float) -> bool:
        return weight >= self.min_weight and (self.classes is None or label in self.classes)

    def _sample(self, columns: LabelColumns, i: int) -> Any:
        if not self.include_samples or columns.samples is None:
            return columns.ids[i]
        return torch.from_numpy(np.array(columns.samples[i], dtype=np.float32))

    async def _pump(self, client: AsyncLabelerClient, consumer: str, buffer: queue.Queue) -> None:
        loop = asyncio.get_running_loop()
        try:
            async for columns in client.subscribe_columns(self.topic, self.group, consumer,
                                                          max_batch=self.max_batch,
                                                          include_samples=self.include_samples):
                # A blocking put on a worker thread: waits while the trainer is behind.
                await loop.run_in_executor(None, buffer.put, columns)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("subscription to %s ended: %s", self.topic, exc)
            await loop.run_in_executor(None, buffer.put, _END)

    def ack(self, offsets: Sequence[int] | torch.Tensor) -> int:
        """Ack ``offsets`` for the group (from any process); returns how many were pending."""
        values = [int(o) for o in (offsets.tolist() if isinstance(offsets, torch.Tensor) else offsets)]
        if not values:
            return 0
        loop, client = self._connection()
        result = loop.run(client.ack(self.topic, self.group, values, self.consumer))
        self.committed_offset = result.committed_offset
        return result.acked

    def commit(self) -> int:
        """Ack every label this process yielded so far (``num_workers=0``: call after the step)."""
        with self._lock:
            offsets, self._uncommitted = self._uncommitted, []
        return self.ack(offsets)

    @contextlib.contextmanager
    def step(self, batch: Sequence[Any]) -> Iterator[Sequence[Any]]:
        """``with dataset.step(batch): train on it`` acks the batch's offsets (its last element,
        ``with_offsets=True``) when the block finishes without an exception."""
        if not self.with_offsets:
            raise ValueError("step(batch) needs with_offsets=True, so batches carry their offsets")
        yield batch
        self.ack(batch[-1])

    def close(self) -> None:
        """Close this process's connection (after the last ack)."""
        if self._conn is not None and self._conn[0] == os.getpid():
            _, loop, client = self._conn
            loop.run(client.close())
            loop.close()
        self._conn = None

"""One teacher batch through the hot path: infer, calibrate, select per topic, append, answer.

Everything here is batched numpy: no per-sample Python loop between the batcher and the label
log. A failure (teacher down, label log error) fails every item of the batch, so no producer is
ever told a label was accepted that is not in the log.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections import deque
from dataclasses import dataclass
from typing import Callable, Mapping

import numpy as np

from pseudostream.server.backends.base import TeacherBackend, TeacherOutput
from pseudostream.server.batch_cost import BatchCost
from pseudostream.server.batcher import WorkItem, metadata_rows
from pseudostream.server.idempotency import (DecisionEntries, concat_decisions, decode_decisions, encode_decisions,
                                              unique_rows)
from pseudostream.server.labellog.base import LabelBatch, LabelLog
from pseudostream.server.metrics import ServiceMetrics
from pseudostream.server.outcome import LabelOutcome
from pseudostream.server.selection import Decisions, PolicyBatch
from pseudostream.server.topic import TopicRuntime

__all__ = ["TeacherPipeline", "calibrated"]

log = logging.getLogger(__name__)

# Labeled batches whose idempotency entries are kept in memory: this many more than the pipeline
# depth (a batch holds its slot until its append is done, so at most ``depth`` batches are in
# flight), so every batch labeled after a recall was asked, or appending then, is here.
_FRESH_SPARE = 2


def calibrated(logits: np.ndarray, temperature: float, task: str) -> tuple[np.ndarray, np.ndarray]:
    """(temperature-scaled logits, probabilities): softmax for multiclass, sigmoid for multilabel."""
    z = logits.astype(np.float32, copy=False) / np.float32(temperature)
    if task == "multilabel":
        return z, 1.0 / (1.0 + np.exp(-z))
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return z, e / e.sum(axis=1, keepdims=True)


class TeacherPipeline:
    """Processes the batches the MicroBatcher of one teacher cuts."""

    def __init__(self, name: str, backend: TeacherBackend, topics: Mapping[str, TopicRuntime],
                 label_log: LabelLog, metrics: ServiceMetrics, depth: int = 8) -> None:
        self.name = name
        self.backend = backend
        self.topics = topics
        self.log = label_log
        self.metrics = metrics
        # Batches enter ``process`` in order and may overlap (MicroBatcher depth > 1): inference
        # runs as soon as a batch arrives, the labeling stage (policy state, log append) one
        # batch at a time in arrival order, so decisions are the same as without overlap.
        self._issued = self._labeled = 0
        self._turn = asyncio.Condition()
        self._inferring = 0
        self._inference_s = float("inf")
        self.cost = BatchCost()  # seconds against batch size: the adaptive delay's fixed cost
        self._teacher_free = asyncio.Condition()
        # Called whenever a batch's inference ends (the MicroBatcher's ``wake``: its adaptive
        # delay looks again at a partial batch once a worker is free).
        self.on_free: Callable[[], None] | None = None
        # Idempotency: a batch's recall is asked for when the batch arrives, beside its
        # inference. Batches labeled after that question keep their entries here, by labeling
        # number, so the answer is completed with them (a retry of an id still in flight).
        self._fresh: dict[str, deque[_Fresh]] = {}
        self._fresh_batches = depth + _FRESH_SPARE

    async def teacher_free(self) -> None:
        """Return once the backend has a free worker (the MicroBatcher's gate: it cuts the next
        batch then, full-sized, instead of queueing a small one behind running inferences)."""
        async with self._teacher_free:
            await self._teacher_free.wait_for(self.teacher_idle)

    def teacher_idle(self) -> bool:
        """Whether the backend has a free worker now (the MicroBatcher's adaptive delay). With
        no batch of ours in inference it is free: whatever else runs there (the start-up cost
        probe) ends without notifying the gate, and a batch cut now queues behind it."""
        return self._inferring == 0 or self.backend.workers_busy(self._inferring) < self.backend.concurrency

    def inference_s(self) -> float:
        """Recent seconds per batch inference, weighted toward the last ones (inf before any)."""
        return self._inference_s

    async def process(self, items: list[WorkItem]) -> None:
        """Label ``items`` (one teacher batch) and resolve their futures."""
        seq, self._issued = self._issued, self._issued + 1
        self._inferring += 1
        recalls = self._recall(items)
        try:
            x = items[0].inputs if len(items) == 1 else np.concatenate([i.inputs for i in items])
            out: TeacherOutput | BaseException = await self._infer(x)
        except Exception as exc:  # raised below, in this batch's turn
            out = exc
        finally:
            async with self._teacher_free:
                self._inferring -= 1
                self._teacher_free.notify_all()
            if self.on_free is not None:
                self.on_free()
        async with self._turn:
            await self._turn.wait_for(lambda: self._labeled == seq)
        appending: list[tuple[list[WorkItem], asyncio.Future]] = []
        try:
            if isinstance(out, BaseException):
                raise out
            appending = await self._label(items, x, out, recalls)
        finally:
            for pending in recalls.values():
                pending.cancel()
            async with self._turn:
                self._labeled += 1
                self._turn.notify_all()
        # The next batch labels while this one's log append completes (appends are issued in
        # labeling order); the producers hear back once their records are in the log.
        await self._deliver(appending)

    def _recall(self, items: list[WorkItem]) -> dict[str, asyncio.Future]:
        """Start asking the log which ids of ``items`` it remembers, per topic with a window;
        each answer comes with the first labeling number whose entries it may lack."""
        asked: dict[str, list[str]] = {}
        for item in items:
            if self.topics[item.topic].config.idempotency_window_s:
                asked.setdefault(item.topic, []).extend(item.ids)
        recalls: dict[str, asyncio.Future] = {}
        for topic, ids in asked.items():
            # The answer lacks batches labeled from now on, and those whose append is running.
            running = [f.seq for f in self._fresh.get(topic, ()) if not f.appended.done()]
            since = min(running, default=self._labeled)
            recalls[topic] = asyncio.ensure_future(self._recall_one(topic, ids, since))
            recalls[topic].add_done_callback(_retrieve)
        return recalls

    async def _recall_one(self, topic: str, ids: list[str], since: int) -> tuple[dict[str, bytes], int]:
        return await self.log.recall(topic, ids), since

    async def _known(self, topic: str, ids: np.ndarray,
                     answer: tuple[dict[str, bytes], int]) -> dict[str, bytes]:
        """The log's answer, plus the entries of the batches it may lack: labeled after it was
        asked for, or appending then. A batch that shares an id with ``ids`` is waited for if its
        append still runs; one whose append failed adds nothing (its samples were not accepted)."""
        known, since = answer
        later = [fresh for fresh in self._fresh.get(topic, ()) if fresh.seq >= since]
        if later:
            wanted = set(ids.tolist())
            known = dict(known)
            for fresh in later:
                shared = fresh.ids & wanted
                if not shared:
                    continue
                await asyncio.wait([fresh.appended])
                if fresh.entries is not None:
                    known.update((sid, fresh.entries[sid]) for sid in shared)
        return known

    async def _label(self, items: list[WorkItem], x: np.ndarray, out: TeacherOutput,
                     recalls: Mapping[str, asyncio.Future]) -> list[tuple[list[WorkItem], asyncio.Future]]:
        """Decide every topic's samples and issue the log appends, in this batch's turn; per
        topic, its items and the future of their outcomes (failed topics are answered here)."""
        logits, probs = calibrated(out.logits, out.temperature, self.backend.metadata.task)

        starts = np.cumsum([0] + [i.size for i in items])
        by_topic: dict[str, list[int]] = {}
        for k, item in enumerate(items):
            by_topic.setdefault(item.topic, []).append(k)
        appending: list[tuple[list[WorkItem], asyncio.Future]] = []
        for topic_name, members in by_topic.items():
            group = [items[k] for k in members]
            try:
                answer = await recalls[topic_name] if topic_name in recalls else None
                outcomes = await self._label_topic(self.topics[topic_name], group, starts[members],
                                                   x, logits, probs, out.teacher_version, out.features,
                                                   answer)
            except Exception as exc:
                _fail(topic_name, group, exc)
                continue
            appending.append((group, outcomes))
        return appending

    @staticmethod
    async def _deliver(appending: list[tuple[list[WorkItem], asyncio.Future]]) -> None:
        """Answer each item once its topic's records are in the log."""
        for group, outcomes in appending:
            try:
                parts = await outcomes
            except Exception as exc:
                _fail(group[0].topic, group, exc)
                continue
            for item, part in zip(group, parts):
                if item.future is not None and not item.future.done():
                    item.future.set_result(part)

    async def _infer(self, x: np.ndarray) -> TeacherOutput:
        started = time.perf_counter()
        try:
            out = await self.backend.infer(x)
        except Exception as exc:
            self.metrics.backend_errors.labels(self.name, type(exc).__name__).inc()
            raise
        took = time.perf_counter() - started
        self._inference_s = took if self._inference_s == float("inf") else 0.8 * self._inference_s + 0.2 * took
        self.cost.observe(out.part_rows, took)  # split: the parts ran side by side
        self.metrics.inference_latency.labels(self.name).observe(took)
        self.metrics.batch_size.labels(self.name).observe(x.shape[0])
        return out

    async def _label_topic(self, topic: TopicRuntime, group: list[WorkItem], starts: np.ndarray,
                           x: np.ndarray, logits: np.ndarray, probs: np.ndarray,
                           version: str, features: np.ndarray | None,
                           recalled: tuple[dict[str, bytes], int] | None) -> asyncio.Future:
        """Decide ``group`` (a retry gets its first decision back) and issue the append; the
        future of one LabelOutcome per item, done once the records are in the log."""
        sizes = np.array([i.size for i in group])
        rows = np.concatenate([np.arange(s, s + n) for s, n in zip(starts, sizes)])
        ids = np.concatenate([np.asarray(i.ids, dtype=object) for i in group])
        metadata = metadata_rows(group)
        known = {} if recalled is None else await self._known(topic.name, ids, recalled)
        first, inverse = unique_rows(ids)
        is_new = (np.array([ids[k] not in known for k in first], bool) if known
                  else np.ones(first.size, bool))  # the common case: nobody remembers them
        parts: list[tuple[Decisions, np.ndarray, np.ndarray]] = []
        appended: asyncio.Future | None = None
        new = first[is_new]
        if new.size:
            meta = None if metadata is None else [metadata[k] for k in new]
            trusted = np.concatenate([np.full(i.size, i.trusted) for i in group])[new]
            d, appended, labeled_by = await self._decide(topic, rows[new], ids[new], x, logits, probs,
                                                         version, meta, trusted, features)
            parts.append((d, np.full(new.size, -1, np.int64), np.full(new.size, labeled_by, dtype=object)))
        if not is_new.all():  # retries: the first decision, not a second one
            parts.append(decode_decisions([known[ids[k]] for k in first[~is_new]], topic.teacher.num_classes))
        position = np.empty(first.size, np.int64)
        position[np.concatenate([np.flatnonzero(is_new), np.flatnonzero(~is_new)])] = np.arange(first.size)
        take = position[inverse]
        decisions = concat_decisions([p[0] for p in parts]).take(take)
        versions = np.concatenate([p[2] for p in parts])[take]
        bounds = np.cumsum(np.concatenate([[0], sizes]))
        policy = topic.policy.name

        async def outcomes() -> list[LabelOutcome]:
            if appended is not None:
                parts[0] = (parts[0][0], await appended, parts[0][2])
            offsets = np.concatenate([p[1] for p in parts])[take]
            return [LabelOutcome(decisions.take(slice(a, b)), offsets[a:b], versions[a:b], policy)
                    for a, b in zip(bounds[:-1], bounds[1:])]

        return asyncio.ensure_future(outcomes())

    async def _decide(self, topic: TopicRuntime, rows: np.ndarray, ids: np.ndarray, x: np.ndarray,
                      logits: np.ndarray, probs: np.ndarray, version: str,
                      metadata: list[Mapping[str, str]] | None, trusted: np.ndarray,
                      features: np.ndarray | None) -> tuple[Decisions, asyncio.Future, str]:
        """Policy decisions for new samples, the future of their log offsets (accepted ones are
        appended, -1 elsewhere; the decisions are remembered for the idempotency window in the
        same log call), and the teacher version (with the adapter state, if any) that labeled them."""
        p, alarm = probs[rows], False
        if topic.weight is not None and not topic.weight.online:  # adapt-then-label
            p, tag, alarm = await topic.weight.label_window(x[rows], trusted)
            version = f"{version}+{tag}"
        if topic.adapters is not None:  # output-level test-time adaptation, trusted rows learn
            p, tag = topic.adapters.apply(p, logits[rows], None if features is None else features[rows],
                                          trusted)
            version = f"{version}+{tag}"
        views = await self._views(topic, x[rows], p) if topic.views else None
        decisions = topic.select(PolicyBatch(probs=p, ids=ids, logits=logits[rows],
                                             views=views), trusted)
        if alarm:  # the guard fired on this very window: its labels are low-trust
            decisions = _low_trust(decisions, topic.config.adapt.on_alarm if topic.config.adapt else "reject")
        truth = _audit_labels(metadata, topic.config.audit_label_key, rows.size)
        if truth is not None:
            topic.score_audit(decisions, truth)
        # Audited samples are scored, never streamed to trainers.
        logged = decisions.accept if truth is None else decisions.accept & (truth < 0)
        accepted = np.flatnonzero(logged)
        batch = None
        if accepted.size:
            batch = LabelBatch(
                ids=ids[accepted].tolist(),
                label=decisions.label[accepted],
                confidence=decisions.confidence[accepted],
                weight=decisions.weight[accepted],
                threshold=decisions.threshold[accepted],
                teacher_version=version,
                policy=topic.policy.name,
                samples=_rows_of(x, rows[accepted]) if topic.config.store_samples else None,
                metadata=None if metadata is None else [metadata[k] for k in accepted.tolist()],
                positive=None if decisions.positive is None else decisions.positive[accepted],
                negative=None if decisions.negative is None else decisions.negative[accepted],
            )
        appended = self._append(topic.name, batch, decisions, ids, accepted, version,
                                topic.config.idempotency_window_s)
        self.metrics.observe_decisions(topic.name, topic.classes, decisions.accept,
                                       decisions.label, decisions.reason, decisions.confidence)
        if topic.weight is not None and topic.weight.online:
            topic.weight.offer(x[rows[trusted]])
        if topic.checkpoint_due:  # the saved state covers this batch: its records go first
            await asyncio.wait([appended])
            await topic.checkpoint()
        return decisions, appended, version

    def _append(self, topic: str, batch: LabelBatch | None, decisions: Decisions, ids: np.ndarray,
                accepted: np.ndarray, version: str, window: float) -> asyncio.Future:
        """Issue the log append of ``batch`` with the idempotency entries of ``decisions`` (when
        the topic has a window); the future of the offsets, -1 where not accepted.

        Called in labeling order, and the append starts before the next batch's turn, so a log
        that applies calls in order (SQLite's one worker thread) gives batches ascending offsets.
        """
        offsets = np.full(len(decisions), -1, np.int64)
        if batch is None and not window:
            done = asyncio.get_running_loop().create_future()
            done.set_result(offsets)
            return done
        fresh = _Fresh(self._labeled, set(ids.tolist())) if window else None  # this batch's labeling number

        def entries(appended: np.ndarray) -> DecisionEntries:
            assert fresh is not None
            numbered = offsets.copy()
            numbered[accepted] = appended
            fresh.entries = encode_decisions(decisions, numbered, version, ids.tolist())
            return fresh.entries

        async def append() -> np.ndarray:
            offsets[accepted] = await self.log.append_and_remember(topic, batch, entries if window else None,
                                                                   window)
            if accepted.size:
                self.metrics.appended.labels(topic).inc(int(accepted.size))
            return offsets

        task = asyncio.ensure_future(append())
        task.add_done_callback(_retrieve)
        if fresh is not None:
            fresh.appended = task
            self._fresh.setdefault(topic, deque(maxlen=self._fresh_batches)).append(fresh)
        return task

    async def _views(self, topic: TopicRuntime, x: np.ndarray, probs: np.ndarray) -> np.ndarray:
        """[K, B, C] probabilities: the batch itself, then K-1 test-time-augmented copies."""
        assert topic.views is not None
        out = await self._infer(topic.views.augment(x))
        _, extra = calibrated(out.logits, out.temperature, self.backend.metadata.task)
        return np.concatenate([probs[None], extra.reshape(topic.views.count - 1, *probs.shape)])


@dataclass
class _Fresh:
    """A labeled batch's idempotency entries, kept in memory while later batches may ask."""

    seq: int  # its labeling number
    ids: set[str]
    appended: asyncio.Future = dataclasses.field(init=False)
    entries: DecisionEntries | None = None  # set by the append, once the offsets are known


def _fail(topic: str, group: list[WorkItem], exc: BaseException) -> None:
    log.warning("topic %s: batch failed: %s", topic, exc)
    for item in group:
        if item.future is not None and not item.future.done():
            item.future.set_exception(exc)


def _retrieve(future: asyncio.Future) -> None:
    """Mark a recall's or append's failure as seen: it is raised where the answer is awaited, if it is."""
    if not future.cancelled():
        future.exception()


def _low_trust(d: Decisions, how: str) -> Decisions:
    """``d`` with weight 0 everywhere, and rejected with reason adapter_alarm if ``how`` is reject."""
    weight = np.zeros_like(d.weight)
    if how != "reject":
        return dataclasses.replace(d, weight=weight)
    return dataclasses.replace(d, weight=weight, accept=np.zeros_like(d.accept),
                               reason=np.full(len(d), "adapter_alarm"))


def _audit_labels(metadata: list[Mapping[str, str]] | None, key: str | None, n: int) -> np.ndarray | None:
    """True class per sample from the audit metadata key (-1 where absent), or None."""
    if key is None or metadata is None:
        return None
    truth = np.array([int(m.get(key, -1)) for m in metadata], np.int64)
    return truth if (truth >= 0).any() else None


def _rows_of(x: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """``x[rows]``: a view where ``rows`` is a run of consecutive rows (every sample of a request
    accepted, the common case at a low threshold), else a copy. ``x`` is never written after
    inference (it views the requests' bytes or is this batch's own concatenation)."""
    if rows.size and rows[-1] - rows[0] == rows.size - 1 and (rows.size < 3 or (np.diff(rows) == 1).all()):
        return x[rows[0]:rows[-1] + 1]
    return x[rows]

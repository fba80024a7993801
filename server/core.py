"""The transport-neutral labeling core: teachers, batchers, topics and the label log.

The gRPC servicer is a thin layer over this; tests and the demo can drive it directly.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

from pseudostream.server.backends import TeacherBackend, make_backend
from pseudostream.server.batch_cost import probe_batch_cost
from pseudostream.server.batcher import MicroBatcher, WorkItem
from pseudostream.server.codec import LabelInput
from pseudostream.server.adaptation.chain import AdapterChain
from pseudostream.server.adaptation.guard import GUARD_SIGNALS
from pseudostream.server.config import ServiceConfig, TopicConfig
from pseudostream.server.errors import InvalidInput, UnknownName
from pseudostream.server.labellog.base import LabelLog
from pseudostream.server.labellog.factory import make_label_log
from pseudostream.server.metrics import ServiceMetrics
from pseudostream.server.outcome import LabelOutcome
from pseudostream.server.pipeline import TeacherPipeline
from pseudostream.server.policy_sync import PolicySync
from pseudostream.server.promotion import Promoter
from pseudostream.server.lineage import VersionRecord
from pseudostream.server.topic import TopicRuntime

__all__ = ["LabelingCore", "TopicSnapshot"]

log = logging.getLogger(__name__)


@dataclass
class TopicSnapshot:
    """Live state of a topic (GetTopic)."""

    topic: str
    teacher: str
    teacher_version: str
    policy: str
    thresholds: list[float]
    classes: list[str]
    samples: int
    accepted: int
    accepted_per_class: list[int]
    log_end_offset: int
    predicted_per_class: list[int] = field(default_factory=list)
    quantity: float = 0.0
    quality: float = 0.0
    audited: int = 0
    group_lag: dict[str, int] = field(default_factory=dict)
    group_committed: dict[str, int] = field(default_factory=dict)
    input_shape: list[int] = field(default_factory=list)
    input_dtype: str = ""


class LabelingCore:
    """Owns every long-lived part of the service; ``start``/``stop`` bring them up and down."""

    LAG_REFRESH_S = 5.0

    def __init__(self, config: ServiceConfig, metrics: ServiceMetrics | None = None) -> None:
        self.config = config
        self.metrics = metrics or ServiceMetrics()
        self.log: LabelLog | None = None
        self.backends: dict[str, TeacherBackend] = {}
        self.batchers: dict[str, MicroBatcher] = {}
        self.topics: dict[str, TopicRuntime] = {}
        self.sync: PolicySync | None = None
        self.draining = asyncio.Event()  # set at shutdown: streams answer what is in flight, end
        self._sync_task: asyncio.Task[None] | None = None
        self._lag_task: asyncio.Task[None] | None = None
        # The adaptive delay's start-up timing of each teacher's batch cost, in the background:
        # the service answers at once, and cuts a slow teacher's batches early once it is known.
        self.cost_probes: dict[str, asyncio.Task[None]] = {}
        self.groups: dict[str, set[str]] = {}  # consumer groups seen per topic (lag metric)
        self.dirs: dict[str, dict[str, Path]] = {}  # teacher -> version -> its folder, when known
        self.promoter = Promoter(self)
        self.ready = False

    async def start(self) -> None:
        """Load every teacher, open the label log (its page size follows the samples the topics
        store), restore topic state, start the batchers."""
        for name, tcfg in self.config.teachers.items():
            backend = make_backend(tcfg)
            await backend.start()
            self.backends[name] = backend
            self.metrics.teacher.labels(name).info({"version": backend.metadata.version})
            if tcfg.model_dir is not None:
                self.dirs[name] = {backend.metadata.version: Path(tcfg.model_dir)}
        self.log = make_label_log(self.config.label_log, self._stored_sample_bytes())
        for name, topic_cfg in self.config.topics.items():
            teacher = self.backends[topic_cfg.teacher].metadata
            topic = TopicRuntime(name, topic_cfg, teacher, self.log, self.config.checkpoint_every)
            if topic_cfg.adapters:
                topic.adapters = self._adapters(topic_cfg)
            await topic.restore()
            self.topics[name] = topic
            if topic_cfg.adapt is None:
                self.metrics.register_topic(name)
            else:
                self.metrics.register_topic(name, [topic_cfg.adapt.method], GUARD_SIGNALS)
        self.metrics.track_topics(lambda: list(self.topics.values()))
        await self.promoter.start()
        for topic in self.topics.values():
            if topic.config.adapt is not None:
                from pseudostream.server.adaptation.weight_loop import WeightAdaptation

                topic.weight = WeightAdaptation(self, topic, topic.config.adapt, self._source_prior(topic.config.teacher))
                await topic.weight.start()
        for name, tcfg in self.config.teachers.items():
            topics = {t: rt for t, rt in self.topics.items() if rt.config.teacher == name}
            pipeline = TeacherPipeline(name, self.backends[name], topics, self.log, self.metrics,
                                        depth=tcfg.pipeline_depth)
            batcher = MicroBatcher(pipeline.process, max_batch=tcfg.max_batch,
                                   max_delay_s=tcfg.max_delay_ms / 1000.0,
                                   max_queue_samples=tcfg.max_queue_samples, name=name,
                                   depth=tcfg.pipeline_depth, gate=pipeline.teacher_free,
                                   idle=pipeline.teacher_idle if tcfg.adaptive_delay else None,
                                   inference_s=pipeline.inference_s if tcfg.adaptive_delay else None,
                                   overhead_s=pipeline.cost.overhead_s if tcfg.adaptive_delay else None)
            if tcfg.adaptive_delay:
                pipeline.on_free = batcher.wake
                teacher = self.backends[name]
                self.cost_probes[name] = asyncio.create_task(
                    probe_batch_cost(pipeline.cost, teacher.infer, teacher.metadata.input_shape,
                                     teacher.metadata.input_dtype, sizes=sorted({1, min(16, tcfg.max_batch)})),
                    name=f"batch-cost-{name}")
            batcher.start()
            self.metrics.track_queue(name, lambda b=batcher: b.queued_samples, tcfg.max_queue_samples)
            self.batchers[name] = batcher
        if self.config.label_log.kind == "redis":  # a shared log: replicas merge policies
            self.sync = PolicySync(self.topics, self.log, self.config.replica_id,
                                   self.config.policy_sync_s)
            self._sync_task = asyncio.create_task(self.sync.run(), name="policy-sync")
        self._lag_task = asyncio.create_task(self._refresh_lag(), name="consumer-lag")
        self.ready = True

    async def stop(self) -> None:
        """Drain queued batches, checkpoint every topic, close teachers and the log."""
        self.ready = False
        for task in (self._sync_task, self._lag_task):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        self._sync_task = self._lag_task = None
        for probe in self.cost_probes.values():
            probe.cancel()
        await asyncio.gather(*self.cost_probes.values(), return_exceptions=True)
        self.cost_probes.clear()
        for batcher in self.batchers.values():
            await batcher.stop()
        for topic in self.topics.values():
            if topic.weight is not None:
                await topic.weight.close()
        for topic in self.topics.values():
            try:
                await topic.checkpoint()
            except Exception as exc:  # keep closing the rest
                log.warning("topic %s: final checkpoint failed: %s", topic.name, exc)
        for backend in self.backends.values():
            await backend.close()
        if self.log is not None:
            await self.log.close()
        self.batchers.clear()
        self.backends.clear()

    def topic(self, name: str) -> TopicRuntime:
        """The topic named ``name``; UnknownName lists the configured topics."""
        try:
            return self.topics[name]
        except KeyError:
            known = ", ".join(sorted(self.topics)) or "(none)"
            raise UnknownName(f"unknown topic {name!r}; configured topics: {known}") from None

    async def label(self, request: LabelInput) -> LabelOutcome:
        """Decide for every sample of a validated request (split into batcher-sized chunks)."""
        topic = self.topic(request.topic)
        batcher = self.batchers[topic.config.teacher]
        step = batcher.max_batch
        futures = []
        for start in range(0, len(request.ids), step):
            end = start + step
            meta = request.metadata[start:end] if request.metadata else None
            futures.append(batcher.submit(WorkItem(topic.name, request.ids[start:end],
                                                   request.inputs[start:end], meta,
                                                   trusted=request.trusted)))
        return LabelOutcome.concat(await asyncio.gather(*futures))

    def _stored_sample_bytes(self) -> int:
        """The largest sample a topic keeps in the log (0 when none stores samples)."""
        sizes = [self.backends[t.teacher].metadata.sample_nbytes
                 for t in self.config.topics.values() if t.store_samples]
        return max(sizes, default=0)

    async def ack(self, topic: str, group: str, offsets: Sequence[int]) -> tuple[int, int]:
        """Ack ``offsets`` for ``group``; returns (newly acked, committed offset)."""
        self.topic(topic)
        if not group:
            raise InvalidInput("ack: group must be non-empty")
        assert self.log is not None
        acked = await self.log.ack(topic, group, offsets)
        self.metrics.acked.labels(topic, group).inc(acked)
        self.watch_group(topic, group)
        self.metrics.observe_group_lag(topic, group, await self.log.lag(topic, group))
        return acked, await self.log.committed(topic, group)

    async def feedback(self, topic: str, group: str, consumer: str, offsets: Sequence[int],
                       loss_before: float, loss_after: float, audit: Mapping[int, int],
                       step: int = 0) -> tuple[str, int, int]:
        """Store a trainer's report on one acked batch; returns (key, audited, audit correct).

        Audit labels are compared with the pseudo-labels the log holds for those offsets.
        """
        t = self.topic(topic)
        if not group or not offsets:
            raise InvalidInput("feedback: group and the batch's offsets are required")
        bad = [label for label in audit.values() if not 0 <= label < len(t.classes)]
        if bad:
            raise InvalidInput(f"feedback: audit labels {bad[:5]} are not class indices 0..{len(t.classes) - 1}")
        assert self.log is not None
        records = await self.log.get(topic, sorted(audit)) if audit else []
        correct = sum(audit[r.offset] == r.label for r in records)
        key = f"feedback/{group}/{min(offsets):012d}-{max(offsets):012d}"
        blob = {"consumer": consumer, "step": step, "offsets": list(offsets), "loss_before": loss_before,
                "loss_after": loss_after, "audit": {str(k): v for k, v in audit.items()},
                "received_at": time.time()}
        await self.log.save_state(topic, key, json.dumps(blob).encode())
        self.metrics.observe_feedback(topic, group, loss_before, loss_after, len(records), correct)
        return key, len(records), correct

    def watch_group(self, topic: str, group: str) -> None:
        """Report ``group``'s lag on ``topic`` from now on (pseudostream_consumer_lag)."""
        self.groups.setdefault(topic, set()).add(group)

    async def _refresh_lag(self) -> None:
        """Every LAG_REFRESH_S, set the lag gauge of every group seen (appends raise it)."""
        while True:
            await asyncio.sleep(self.LAG_REFRESH_S)
            try:
                for topic, groups in list(self.groups.items()):
                    for group in list(groups):
                        assert self.log is not None
                        self.metrics.observe_group_lag(topic, group, await self.log.lag(topic, group))
            except Exception as exc:  # a log hiccup must not end the refresher
                log.warning("consumer lag refresh failed: %s", exc)

    def backend(self, teacher: str) -> TeacherBackend:
        """The backend of ``teacher``; UnknownName lists the configured teachers."""
        try:
            return self.backends[teacher]
        except KeyError:
            known = ", ".join(sorted(self.backends)) or "(none)"
            raise UnknownName(f"unknown teacher {teacher!r}; configured teachers: {known}") from None

    def _adapters(self, topic_cfg: TopicConfig) -> AdapterChain:
        """The topic's output adapters, with the head weights and source prior of its teacher."""
        teacher = self.backends[topic_cfg.teacher].metadata
        return AdapterChain([(a.name, a.params) for a in topic_cfg.adapters], teacher.num_classes,
                            self.model_dir(topic_cfg.teacher), self._source_prior(topic_cfg.teacher))

    def _source_prior(self, teacher: str) -> list[float] | None:
        """The class prior of the teacher's labelled split, from its card when the folder is known."""
        from pseudostream.models.card import TeacherCard

        model_dir = self.model_dir(teacher)
        if model_dir is not None and (model_dir / "teacher.json").exists():
            return TeacherCard.load(model_dir).source_prior
        return None

    def model_dir(self, teacher: str) -> Path | None:
        """The folder of the version ``teacher`` serves now, when the service knows it."""
        return self.dirs.get(teacher, {}).get(self.backend(teacher).metadata.version)

    async def publish(self, teacher: str, model_dir: str, *, record_lineage: bool = True,
                      proposer: str = "anonymous", origin: str = "publish") -> str:
        """Serve the teacher in ``model_dir`` as a new version, after checking it has the served
        teacher's signature (input shape and dtype, classes)."""
        from pseudostream.models.card import TeacherCard

        backend = self.backend(teacher)
        try:
            card = TeacherCard.load(model_dir)
        except (OSError, ValueError) as exc:
            raise InvalidInput(f"publish: cannot read a teacher card in {model_dir}: {exc}") from None
        current = backend.metadata
        mismatches = [f"{what}: {theirs} (served: {ours})" for what, theirs, ours in (
            ("input_shape", tuple(card.input_shape), current.input_shape),
            ("input_dtype", card.input_dtype, current.input_dtype.name),
            ("classes", tuple(card.classes), current.classes)) if theirs != ours]
        if mismatches:
            raise InvalidInput(f"publish: {model_dir} does not fit teacher {teacher!r}: "
                               + "; ".join(mismatches))
        parent = current.version
        version = await backend.load_version(model_dir)
        self.dirs.setdefault(teacher, {})[version] = Path(model_dir)
        self.metrics.teacher.labels(teacher).info({"version": version})
        log.info("teacher %s now serves version %s from %s", teacher, version, model_dir)
        if record_lineage:
            await self.promoter.lineage(teacher).append(VersionRecord(
                version=version, parent=parent, origin=origin, decision="served",
                proposer=proposer, note=str(model_dir), candidate_id=card.fingerprint))
        return version

    async def rollback(self, teacher: str, version: str, proposer: str = "anonymous") -> str:
        """Serve an earlier version of ``teacher`` again."""
        backend = self.backend(teacher)
        parent = backend.metadata.version
        served = await backend.rollback(version)
        self.metrics.teacher.labels(teacher).info({"version": served})
        await self.promoter.lineage(teacher).append(VersionRecord(
            version=served, parent=parent, origin="rollback", decision="served", proposer=proposer))
        return served

    async def history(self, teacher: str) -> list[VersionRecord]:
        """Every lineage record of ``teacher``, oldest first."""
        self.backend(teacher)
        return await self.promoter.lineage(teacher).records()

    async def snapshot(self, name: str, groups: Sequence[str] = ()) -> TopicSnapshot:
        """GetTopic: live policy, thresholds, counts, teacher version and lag."""
        topic = self.topic(name)
        assert self.log is not None
        snap = TopicSnapshot(
            topic=name,
            teacher=topic.config.teacher,
            teacher_version=self.backends[topic.config.teacher].metadata.version,
            policy=topic.policy.name,
            thresholds=[float(t) for t in topic.policy.thresholds()],
            classes=list(topic.classes),
            samples=topic.samples,
            accepted=topic.accepted,
            accepted_per_class=topic.accepted_per_class.tolist(),
            log_end_offset=await self.log.end_offset(name),
            predicted_per_class=topic.predicted_per_class.tolist(),
            quantity=topic.quantity,
            quality=topic.quality,
            audited=topic.audited,
            input_shape=list(self.backends[topic.config.teacher].metadata.input_shape),
            input_dtype=self.backends[topic.config.teacher].metadata.input_dtype.name,
        )
        for group in groups:
            snap.group_lag[group] = await self.log.lag(name, group)
            self.watch_group(name, group)
            self.metrics.observe_group_lag(name, group, snap.group_lag[group])
            snap.group_committed[group] = await self.log.committed(name, group)
        return snap

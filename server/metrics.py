"""Prometheus metrics of the service (prometheus-client), on a registry of its own.

Names follow Prometheus conventions: ``pseudostream_`` prefix, base units (seconds), ``_total``
for counters (added by the client library).
"""

from __future__ import annotations

import threading
from typing import Any, Callable, Iterable, Iterator

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

__all__ = ["CONFIDENCE_BUCKETS", "ConfidenceHistogram", "NO_ADAPTER", "ServiceMetrics", "serve_metrics"]

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
CONFIDENCE_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 0.97, 0.99, 1.0)
# Placeholder label values: adapter series exist (at 0) before the adaptation feature names its
# adapters and signals, so rate() panels and alerts resolve from the first scrape.
NO_ADAPTER = "none"


class ServiceMetrics:
    """All metric families of one service instance."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.rpcs = Counter("pseudostream_rpcs", "RPCs finished, by method and status code",
                            ["rpc", "code"], registry=r)
        self.rpc_latency = Histogram("pseudostream_rpc_latency_seconds",
                                     "Latency of unary RPCs and of each Label request",
                                     ["rpc"], buckets=_LATENCY_BUCKETS, registry=r)
        self.samples = Counter("pseudostream_samples", "Samples received for labeling",
                               ["topic"], registry=r)
        self.accepted = Counter("pseudostream_accepted", "Pseudo-labels accepted, by class",
                                ["topic", "class"], registry=r)
        self.rejected = Counter("pseudostream_rejected", "Samples rejected, by reason",
                                ["topic", "reason"], registry=r)
        self.appended = Counter("pseudostream_label_log_appended", "Records appended to the label log",
                                ["topic"], registry=r)
        self.acked = Counter("pseudostream_label_log_acked", "Records acked by trainers",
                             ["topic", "group"], registry=r)
        self.batch_size = Histogram("pseudostream_batch_size", "Samples per teacher batch",
                                    ["teacher"], buckets=_BATCH_BUCKETS, registry=r)
        self.inference_latency = Histogram("pseudostream_inference_latency_seconds",
                                           "Teacher inference time per batch", ["teacher"],
                                           buckets=_LATENCY_BUCKETS, registry=r)
        self.queue_depth = Gauge("pseudostream_queue_depth_samples",
                                 "Samples waiting for a teacher batch", ["teacher"], registry=r)
        self.backend_errors = Counter("pseudostream_backend_errors", "Teacher backend failures",
                                      ["teacher", "code"], registry=r)
        self.feedback = Counter("pseudostream_trainer_feedback", "Trainer reports on acked batches",
                                ["topic", "group"], registry=r)
        self.trainer_loss = Gauge("pseudostream_trainer_loss",
                                  "Trainer's labelled-set loss around its last reported step",
                                  ["topic", "group", "when"], registry=r)
        self.trainer_improvement = Histogram(
            "pseudostream_trainer_loss_improvement", "loss_before - loss_after per reported step",
            ["topic", "group"], buckets=(-1, -0.1, -0.01, -0.001, 0, 0.001, 0.01, 0.1, 1), registry=r)
        self.trainer_audited = Counter("pseudostream_trainer_audited",
                                       "Trainer audit labels checked against pseudo-labels, by outcome",
                                       ["topic", "group", "outcome"], registry=r)
        self.teacher = Info("pseudostream_teacher", "Served teacher version", ["teacher"], registry=r)
        self.queue_capacity = Gauge("pseudostream_queue_capacity_samples",
                                    "Samples a teacher's queue holds before RESOURCE_EXHAUSTED",
                                    ["teacher"], registry=r)
        self.adapter_alarms = Counter("pseudostream_adapter_alarms",
                                      "Drift alarms raised by a topic's test-time adapter, by signal",
                                      ["topic", "adapter", "signal"], registry=r)
        self.adapter_resets = Counter("pseudostream_adapter_resets",
                                      "Resets of a topic's adapter to its snapshot",
                                      ["topic", "adapter"], registry=r)
        self.consumer_lag = Gauge("pseudostream_consumer_lag",
                                  "Records of a topic a consumer group has not acked",
                                  ["topic", "group"], registry=r)
        self.confidence = ConfidenceHistogram()
        r.register(self.confidence)

    def register_topic(self, topic: str, adapters: Iterable[str] = (NO_ADAPTER,),
                       signals: Iterable[str] = (NO_ADAPTER,)) -> None:
        """Create the per-topic series at 0, so they exist before the first sample."""
        self.samples.labels(topic)
        self.appended.labels(topic)
        self.confidence.register(topic)
        signals = tuple(signals)
        for adapter in adapters:
            self.adapter_resets.labels(topic, adapter)
            for signal in signals:
                self.adapter_alarms.labels(topic, adapter, signal)

    def observe_group_lag(self, topic: str, group: str, lag: int) -> None:
        """Record the records ``group`` has not acked on ``topic``."""
        self.consumer_lag.labels(topic, group).set(lag)

    def observe_decisions(self, topic: str, classes: tuple[str, ...], accept: np.ndarray,
                          label: np.ndarray, reason: np.ndarray,
                          confidence: np.ndarray | None = None) -> None:
        """Count one batch of decisions of ``topic`` (vectorized: one inc per class seen)."""
        self.samples.labels(topic).inc(int(accept.size))
        if confidence is not None:
            self.confidence.observe(topic, confidence)
        counts = np.bincount(label[accept & (label >= 0)], minlength=len(classes))
        for c in np.flatnonzero(counts):
            self.accepted.labels(topic, classes[c]).inc(int(counts[c]))
        if not accept.all():
            reasons, n = np.unique(reason[~accept], return_counts=True)
            for why, k in zip(reasons.tolist(), n.tolist()):
                self.rejected.labels(topic, why).inc(k)

    def track_topics(self, topics: Callable[[], Iterable[Any]]) -> None:
        """Report the live state of ``topics()`` (TopicRuntime objects) at each scrape."""
        self.registry.register(_TopicCollector(topics))

    def observe_feedback(self, topic: str, group: str, loss_before: float, loss_after: float,
                         audited: int, correct: int) -> None:
        """Record one trainer report."""
        self.feedback.labels(topic, group).inc()
        self.trainer_loss.labels(topic, group, "before").set(loss_before)
        self.trainer_loss.labels(topic, group, "after").set(loss_after)
        self.trainer_improvement.labels(topic, group).observe(loss_before - loss_after)
        if audited:
            self.trainer_audited.labels(topic, group, "correct").inc(correct)
            self.trainer_audited.labels(topic, group, "wrong").inc(audited - correct)

    def track_queue(self, teacher: str, depth: Callable[[], float], capacity: int | None = None) -> None:
        """Report ``depth()`` as the queue depth of ``teacher`` at each scrape (and its capacity)."""
        self.queue_depth.labels(teacher).set_function(depth)
        if capacity is not None:
            self.queue_capacity.labels(teacher).set(capacity)


class ConfidenceHistogram(Collector):
    """``pseudostream_confidence{topic}``: a histogram filled a batch at a time.

    prometheus-client's Histogram only has a per-value ``observe``; this keeps numpy bucket
    counts per topic and adds a whole batch with one ``searchsorted`` + ``bincount``.
    """

    name = "pseudostream_confidence"

    def __init__(self, buckets: tuple[float, ...] = CONFIDENCE_BUCKETS) -> None:
        self.bounds = np.asarray(buckets, np.float64)
        self._lock = threading.Lock()
        self._counts: dict[str, np.ndarray] = {}  # per bucket, +Inf last; not cumulative
        self._sums: dict[str, float] = {}

    def register(self, topic: str) -> None:
        """Make ``topic``'s series exist (all zero)."""
        with self._lock:
            self._ensure(topic)

    def observe(self, topic: str, values: np.ndarray) -> None:
        """Add every value of ``values`` to ``topic``'s histogram (le buckets: value <= bound)."""
        v = np.asarray(values, np.float64).ravel()
        k = np.bincount(np.searchsorted(self.bounds, v, side="left"), minlength=self.bounds.size + 1)
        with self._lock:
            self._ensure(topic)
            self._counts[topic] += k
            self._sums[topic] += float(v.sum())

    def _ensure(self, topic: str) -> None:
        if topic not in self._counts:
            self._counts[topic] = np.zeros(self.bounds.size + 1, np.int64)
            self._sums[topic] = 0.0

    def describe(self) -> list[Metric]:
        return [HistogramMetricFamily(self.name, "", labels=["topic"])]

    def collect(self) -> Iterator[Metric]:
        family = HistogramMetricFamily(self.name, "Teacher confidence of every decided sample",
                                       labels=["topic"])
        with self._lock:
            snapshot = {t: (c.cumsum(), self._sums[t]) for t, c in self._counts.items()}
        edges = [floatToGoString(b) for b in self.bounds.tolist()] + ["+Inf"]
        for topic, (cumulative, total) in snapshot.items():
            family.add_metric([topic], list(zip(edges, cumulative.tolist())), total)
        yield family


class _TopicCollector(Collector):
    """Per-topic gauges read from the topics at scrape time (no per-batch gauge updates)."""

    def __init__(self, topics: Callable[[], Iterable[Any]]) -> None:
        self._topics = topics

    def describe(self) -> list[Metric]:
        return []  # families depend on the live topics; collect() says what exists

    def collect(self) -> Iterator[Metric]:
        threshold = GaugeMetricFamily("pseudostream_threshold", "Current selection threshold per class",
                                      labels=["topic", "class"])
        acceptance = GaugeMetricFamily("pseudostream_acceptance_ratio",
                                       "Accepted / predicted samples per class since start",
                                       labels=["topic", "class"])
        quantity = GaugeMetricFamily("pseudostream_quantity",
                                     "Mean weight over every decided sample (SoftMatch quantity)",
                                     labels=["topic"])
        quality = GaugeMetricFamily("pseudostream_quality",
                                    "Weighted precision on audited samples (SoftMatch quality)",
                                    labels=["topic"])
        audited = CounterMetricFamily("pseudostream_audited_samples",
                                      "Samples that carried an audit label", labels=["topic"])
        policy = GaugeMetricFamily("pseudostream_policy_info", "The topic's configured selection policy (1)",
                                   labels=["topic", "policy"])
        for topic in self._topics():
            ratio = topic.accepted_per_class / np.maximum(topic.predicted_per_class, 1)
            for name, thr, acc in zip(topic.classes, topic.policy.thresholds().tolist(), ratio.tolist()):
                threshold.add_metric([topic.name, name], thr)
                acceptance.add_metric([topic.name, name], acc)
            policy.add_metric([topic.name, topic.config.policy.name], 1.0)
            quantity.add_metric([topic.name], topic.quantity)
            audited.add_metric([topic.name], topic.audited)
            if topic.audited:
                quality.add_metric([topic.name], topic.quality)
        yield from (threshold, acceptance, quantity, quality, audited, policy)


def serve_metrics(metrics: ServiceMetrics, host: str, port: int) -> tuple[object, threading.Thread, int]:
    """Serve /metrics over HTTP on (host, port); port 0 picks one. Returns (server, thread, port)."""
    server, thread = start_http_server(port, addr=host, registry=metrics.registry)
    return server, thread, int(server.server_port)

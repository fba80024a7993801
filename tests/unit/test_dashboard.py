"""deploy/grafana/pseudostream.json: a well-formed dashboard that queries only metrics we export.

That every query parses and returns data is checked against a real Prometheus in
tests/integration/test_prometheus.py.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from prometheus_client import CollectorRegistry, Histogram

from pseudostream.server.metrics import CONFIDENCE_BUCKETS, ServiceMetrics

REPO = Path(__file__).resolve().parents[2]
DASHBOARD = REPO / "deploy" / "grafana" / "pseudostream.json"
RULES = REPO / "deploy" / "prometheus" / "rules.yaml"
METRIC = re.compile(r"\bpseudostream_[a-z_]+")
_SUFFIXES = ("", "_total", "_bucket", "_sum", "_count", "_info")


def dashboard_exprs(dashboard: dict) -> list[str]:
    """Every target expression of every panel (rows included)."""
    panels = [p for top in dashboard["panels"] for p in (top, *top.get("panels", []))]
    return [t.get("expr", "") for p in panels for t in p.get("targets", [])]


def exported_names() -> set[str]:
    """Series names the service exports, from a ServiceMetrics with one registered topic."""
    metrics = ServiceMetrics()
    metrics.register_topic("t")
    topic = SimpleNamespace(
        name="t", classes=("a", "b"), accepted_per_class=np.zeros(2), predicted_per_class=np.zeros(2),
        policy=SimpleNamespace(thresholds=lambda: np.array([0.9, 0.9])), quantity=0.0, quality=0.0,
        audited=1, config=SimpleNamespace(policy=SimpleNamespace(name="fixed")))
    metrics.track_topics(lambda: [topic])
    families = {f.name for f in metrics.registry.collect()}
    return {name + suffix for name in families for suffix in _SUFFIXES}


@pytest.fixture(scope="module")
def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def test_dashboard_has_datasource_and_topic_variables(dashboard: dict) -> None:
    assert dashboard["schemaVersion"] >= 36
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert variables["topic"]["type"] == "query"
    for panel in dashboard["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}", panel["title"]


def test_panels_are_laid_out_and_identified(dashboard: dict) -> None:
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        g = panel["gridPos"]
        assert g["x"] + g["w"] <= 24 and g["h"] > 0, panel["title"]
    titles = {p["title"] for p in dashboard["panels"]}
    for needed in ("Throughput", "RPC latency", "Inference latency", "Batch size",
                   "Acceptance ratio per class", "Thresholds", "Quantity and quality",
                   "Adapter alarms and resets", "Consumer lag", "Teacher version"):
        assert needed in titles


def test_every_target_is_a_nonempty_balanced_expression(dashboard: dict) -> None:
    exprs = dashboard_exprs(dashboard)
    assert len(exprs) >= 15
    for expr in exprs:
        assert expr.strip()
        for left, right in ("()", "[]", "{}"):
            assert expr.count(left) == expr.count(right), expr


def test_queries_use_only_exported_metrics(dashboard: dict) -> None:
    exported = exported_names()
    used = {m for e in dashboard_exprs(dashboard) for m in METRIC.findall(e)}
    used |= set(METRIC.findall(RULES.read_text()))
    assert used - exported == set(), f"not exported by the service: {sorted(used - exported)}"
    for family in ("pseudostream_confidence_bucket", "pseudostream_consumer_lag",
                   "pseudostream_adapter_alarms_total", "pseudostream_adapter_resets_total",
                   "pseudostream_teacher_info", "pseudostream_threshold"):
        assert family in used, f"dashboard and rules never show {family}"


def test_per_topic_families_exist_before_traffic() -> None:
    metrics = ServiceMetrics()
    metrics.register_topic("digits")
    got = {(s.name, tuple(sorted(s.labels.items()))): s.value
           for f in metrics.registry.collect() for s in f.samples}
    assert got[("pseudostream_samples_total", (("topic", "digits"),))] == 0
    assert got[("pseudostream_adapter_alarms_total",
                (("adapter", "none"), ("signal", "none"), ("topic", "digits")))] == 0
    assert got[("pseudostream_adapter_resets_total", (("adapter", "none"), ("topic", "digits")))] == 0
    assert got[("pseudostream_confidence_count", (("topic", "digits"),))] == 0


def test_confidence_histogram_adds_a_batch_like_per_value_observe() -> None:
    values = np.concatenate([np.array([0.0, 0.1, 0.5, 0.95, 0.951, 1.0], np.float32),
                             np.random.default_rng(0).random(500, dtype=np.float32)])
    metrics = ServiceMetrics()
    metrics.confidence.observe("digits", values[:3])
    metrics.confidence.observe("digits", values[3:])
    registry = CollectorRegistry()
    reference = Histogram("ref", "per-value reference", buckets=CONFIDENCE_BUCKETS, registry=registry)
    for v in values.tolist():
        reference.observe(v)

    def series(reg: CollectorRegistry, prefix: str) -> dict[tuple[str, str], float]:
        return {(s.name.removeprefix(prefix), s.labels.get("le", "")): s.value
                for f in reg.collect() for s in f.samples
                if s.name.startswith(prefix) and not s.name.endswith("_created")}

    got = series(metrics.registry, "pseudostream_confidence")
    want = series(registry, "ref")
    assert got.pop(("_sum", "")) == pytest.approx(want.pop(("_sum", "")))
    assert got == want
    assert got[("_count", "")] == values.size

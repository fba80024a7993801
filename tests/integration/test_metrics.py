"""/metrics over HTTP after a labeled stream: every family of the spine exists with sane values."""

from __future__ import annotations

import asyncio
import urllib.request

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from pseudostream.clients.client import AsyncLabelerClient
from pseudostream.server.app import LabelingServer

pytestmark = pytest.mark.integration


async def test_metrics_endpoint_reports_the_labeled_stream(make_config, digits):
    x = np.ascontiguousarray(digits.stream_x[:48])
    async with LabelingServer(make_config()) as server:
        async with AsyncLabelerClient(server.address) as client:
            result = await client.label("digits", x, ids=[f"m{i}" for i in range(48)])
        url = f"http://127.0.0.1:{server.metrics_port}/metrics"
        text = await asyncio.get_running_loop().run_in_executor(
            None, lambda: urllib.request.urlopen(url, timeout=10).read().decode())
    samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value

    def value(name: str, **labels: str) -> float:
        return samples[(name, tuple(sorted(labels.items())))]

    accepted = int(result.accepted.sum())
    assert value("pseudostream_samples_total", topic="digits") == 48
    per_class = sum(v for (n, _), v in samples.items() if n == "pseudostream_accepted_total")
    assert per_class == accepted
    assert value("pseudostream_label_log_appended_total", topic="digits") == accepted
    assert value("pseudostream_rpcs_total", rpc="Label", code="OK") == 1
    assert value("pseudostream_rpc_latency_seconds_count", rpc="Label") == 1
    assert value("pseudostream_batch_size_sum", teacher="digits-cnn") == 48
    assert value("pseudostream_inference_latency_seconds_count", teacher="digits-cnn") >= 1
    assert value("pseudostream_queue_depth_samples", teacher="digits-cnn") == 0
    assert value("pseudostream_teacher_info", teacher="digits-cnn", version="1") == 1
    assert value("pseudostream_threshold", topic="digits", **{"class": "7"}) == pytest.approx(0.95)

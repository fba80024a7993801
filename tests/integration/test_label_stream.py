"""Several producers stream concurrently over real gRPC: every sample gets exactly one decision,
batches are formed across clients, and batching does not change any decision."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from pseudostream.clients.client import AsyncLabelerClient, make_label_request
from pseudostream.server.app import LabelingServer

pytestmark = pytest.mark.integration

PRODUCERS = 4
REQUESTS = 6
PER_REQUEST = 12


async def _produce(address: str, k: int, x: np.ndarray) -> list:
    requests = [
        make_label_request("digits", x[r * PER_REQUEST:(r + 1) * PER_REQUEST],
                           [f"p{k}-{r * PER_REQUEST + i}" for i in range(PER_REQUEST)],
                           request_id=f"p{k}-r{r}")
        for r in range(REQUESTS)
    ]
    async with AsyncLabelerClient(address) as client:
        return [result async for result in client.label_stream(requests)]


async def test_concurrent_producers_get_one_decision_per_sample(make_config, digits, reference_probs):
    config = make_config(teachers={"digits-cnn": {"max_delay_ms": 30.0}})
    n = PRODUCERS * REQUESTS * PER_REQUEST
    x = np.ascontiguousarray(digits.stream_x[:n])
    shards = np.split(x, PRODUCERS)
    async with LabelingServer(config) as server:
        results = await asyncio.gather(*[_produce(server.address, k, shards[k]) for k in range(PRODUCERS)])
        async with AsyncLabelerClient(server.address) as client:
            state = await client.get_topic("digits")
        batches = server.metrics.registry.get_sample_value(
            "pseudostream_batch_size_count", {"teacher": "digits-cnn"})

    decided: dict[str, tuple] = {}
    for k, per_producer in enumerate(results):
        assert [r.request_id for r in per_producer] == [f"p{k}-r{r}" for r in range(REQUESTS)]
        for r, result in enumerate(per_producer):
            expected_ids = [f"p{k}-{r * PER_REQUEST + i}" for i in range(PER_REQUEST)]
            assert result.ids == expected_ids  # in request order
            for i, sid in enumerate(result.ids):
                assert sid not in decided
                decided[sid] = (bool(result.accepted[i]), int(result.label[i]),
                                float(result.confidence[i]), int(result.offset[i]))
    assert len(decided) == n

    # Same decisions as the teacher run directly, sample by sample order of the shards.
    probs = reference_probs(x)
    for k in range(PRODUCERS):
        for j in range(REQUESTS * PER_REQUEST):
            accepted, label, conf, offset = decided[f"p{k}-{j}"]
            p = probs[k * REQUESTS * PER_REQUEST + j]
            assert label == int(p.argmax())
            assert conf == pytest.approx(float(p.max()), abs=1e-5)
            assert accepted == bool(p.max() >= 0.95)
            assert (offset >= 0) == accepted

    offsets = sorted(v[3] for v in decided.values() if v[0])
    assert offsets == list(range(len(offsets)))  # monotonic, no gaps, no duplicates
    assert state.samples == n and state.accepted == len(offsets) == state.log_end_offset
    assert batches is not None and batches < PRODUCERS * REQUESTS  # coalesced across clients


async def test_large_request_is_split_into_teacher_batches(make_config, digits):
    config = make_config(teachers={"digits-cnn": {"max_batch": 32}})
    x = np.ascontiguousarray(digits.stream_x[:100])
    async with LabelingServer(config) as server:
        async with AsyncLabelerClient(server.address) as client:
            result = await client.label("digits", x, ids=[f"big-{i}" for i in range(100)])
        largest = server.metrics.registry.get_sample_value(
            "pseudostream_batch_size_bucket", {"teacher": "digits-cnn", "le": "32.0"})
        total = server.metrics.registry.get_sample_value(
            "pseudostream_batch_size_count", {"teacher": "digits-cnn"})
    assert len(result) == 100 and result.ids[0] == "big-0" and result.ids[-1] == "big-99"
    assert total >= 4 and largest == total  # every batch held at most max_batch samples

"""Overload: a full teacher queue sheds with RESOURCE_EXHAUSTED and a retry hint; the client
library's default jittered-backoff retries get every request through, and retries are safe
(a retried id gets its first decision)."""

from __future__ import annotations

import asyncio

import grpc
import numpy as np
import pytest

from pseudostream.clients.client import AsyncLabelerClient
from pseudostream.server.app import LabelingServer
from pseudostream.server.backends.onnxruntime import OnnxRuntimeBackend

pytestmark = pytest.mark.integration


def _config(make_config):
    return make_config(teachers={"digits-cnn": {"max_batch": 32, "max_delay_ms": 100.0,
                                                "max_queue_samples": 64}})


async def test_full_queue_sheds_with_a_retry_hint(make_config, digits, monkeypatch):
    # The real teacher, held until a request has been shed: the queue cannot drain meanwhile, so
    # 8 requests of 32 against a 64-sample queue always overflow it.
    release = asyncio.Event()
    infer = OnnxRuntimeBackend.infer

    async def held(self, batch):
        await release.wait()
        return await infer(self, batch)

    monkeypatch.setattr(OnnxRuntimeBackend, "infer", held)
    x = np.ascontiguousarray(digits.stream_x[:32])
    async with LabelingServer(_config(make_config)) as server:
        async with AsyncLabelerClient(server.address, retries=0) as client:
            calls = [asyncio.ensure_future(client.label("digits", x, ids=[f"n{k}-{i}" for i in range(32)]))
                     for k in range(8)]
            await asyncio.wait(calls, timeout=30, return_when=asyncio.FIRST_COMPLETED)
            release.set()
            outcomes = await asyncio.gather(*calls, return_exceptions=True)
    shed = [o for o in outcomes if isinstance(o, grpc.aio.AioRpcError)]
    assert shed and all(o.code() == grpc.StatusCode.RESOURCE_EXHAUSTED for o in shed)
    assert "queue is full" in shed[0].details()
    assert int(dict(shed[0].trailing_metadata())["retry-after-ms"]) > 0
    assert len(shed) < 8  # what fit in the queue was answered
    assert all(len(o) == 32 for o in outcomes if not isinstance(o, BaseException))


async def test_default_retries_get_every_request_through(make_config, digits):
    x = np.ascontiguousarray(digits.stream_x[:32])
    async with LabelingServer(_config(make_config)) as server:
        async with AsyncLabelerClient(server.address, retries=8, backoff_s=0.05) as client:
            results = await asyncio.gather(
                *[client.label("digits", x, ids=[f"r{k}-{i}" for i in range(32)]) for k in range(8)])
            again = await client.label("digits", x, ids=[f"r0-{i}" for i in range(32)])
            state = await client.get_topic("digits")
    assert all(len(r) == 32 for r in results)
    assert again.offset.tolist() == results[0].offset.tolist()  # a retry is answered the same
    assert state.samples == 8 * 32

"""A producer's retry within the idempotency window gets the first decision and adds no second
log record, on both label logs; copies of an id in one teacher batch are decided once."""

from __future__ import annotations

import asyncio
import uuid

import numpy as np
import pytest

from pseudostream.clients.client import AsyncLabelerClient
from pseudostream.server.app import LabelingServer

pytestmark = pytest.mark.integration

ACCEPT_ALL = {"name": "fixed", "params": {"tau": 0.0}}


@pytest.fixture(params=["sqlite", "redis"])
def log_config(request):
    if request.param == "sqlite":
        return {}
    return {"kind": "redis", "url": request.getfixturevalue("redis_url"),
            "prefix": f"idem-{uuid.uuid4().hex}"}


async def test_retry_gets_the_first_decision_and_no_second_record(make_config, digits, log_config):
    config = make_config(label_log=log_config, topics={"digits": {"policy": ACCEPT_ALL}})
    x = np.ascontiguousarray(digits.stream_x[:10])
    ids = [f"r{i}" for i in range(10)]
    async with LabelingServer(config) as server:
        async with AsyncLabelerClient(server.address) as client:
            first = await client.label("digits", x, ids=ids)
            retry = await client.label("digits", x, ids=ids)
            partly = await client.label("digits", x, ids=ids[:5] + [f"n{i}" for i in range(5)])
            state = await client.get_topic("digits")
    assert retry.offset.tolist() == first.offset.tolist() == list(range(10))
    assert retry.label.tolist() == first.label.tolist()
    assert retry.confidence.tolist() == first.confidence.tolist()
    assert partly.offset.tolist() == list(range(5)) + list(range(10, 15))
    assert state.log_end_offset == 15 and state.samples == 15  # retries did not move the policy


async def test_copies_of_an_id_in_one_batch_are_decided_once(make_config, digits, log_config):
    config = make_config(label_log=log_config, topics={"digits": {"policy": ACCEPT_ALL}},
                         teachers={"digits-cnn": {"max_delay_ms": 50.0}})
    x = np.ascontiguousarray(digits.stream_x[:6])
    async with LabelingServer(config) as server:
        async with AsyncLabelerClient(server.address) as a, AsyncLabelerClient(server.address) as b:
            ra, rb = await asyncio.gather(client_label(a, x, "same"), client_label(b, x, "same"))
            state = await a.get_topic("digits")
    assert ra.offset.tolist() == rb.offset.tolist()
    assert state.log_end_offset == 6


async def client_label(client: AsyncLabelerClient, x: np.ndarray, prefix: str):
    return await client.label("digits", x, ids=[f"{prefix}-{i}" for i in range(len(x))])


async def test_window_zero_labels_every_copy(make_config, digits):
    config = make_config(topics={"digits": {"policy": ACCEPT_ALL, "idempotency_window_s": 0}})
    x = np.ascontiguousarray(digits.stream_x[:4])
    async with LabelingServer(config) as server:
        async with AsyncLabelerClient(server.address) as client:
            await client.label("digits", x, ids=list("abcd"))
            again = await client.label("digits", x, ids=list("abcd"))
    assert again.offset.tolist() == [4, 5, 6, 7]

"""Trainers subscribe, ack, disconnect and resume across a service restart: every unacked label
comes again, no acked one does."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from pseudostream.clients.client import AsyncLabelerClient
from pseudostream.server.app import LabelingServer

pytestmark = pytest.mark.integration

ACCEPT_ALL = {"topics": {"digits": {"policy": {"name": "fixed", "params": {"tau": 0.0}}}}}


async def _collect(client: AsyncLabelerClient, group: str, consumer: str, want: int,
                   quiet_s: float = 0.5) -> list:
    """Subscribe until ``want`` records arrived, then keep listening ``quiet_s`` for extras."""
    got: list = []

    async def run() -> None:
        async for records in client.subscribe("digits", group, consumer, max_batch=16):
            got.extend(records)

    task = asyncio.create_task(run())
    for _ in range(200):
        if len(got) >= want:
            break
        await asyncio.sleep(0.025)
    await asyncio.sleep(quiet_s)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    return got


async def test_resume_after_server_restart_gets_exactly_the_unacked(make_config, digits):
    config = make_config(**ACCEPT_ALL)
    x = np.ascontiguousarray(digits.stream_x[:40])
    ids = [f"r-{i}" for i in range(40)]
    async with LabelingServer(config) as server:
        async with AsyncLabelerClient(server.address) as client:
            result = await client.label("digits", x, ids=ids)
            assert result.accepted.all()
            first = await _collect(client, "trainers", "t0", want=40)
            assert sorted(r.offset for r in first) == list(range(40))
            assert {r.sample_id for r in first} == set(ids)
            assert all(r.deliveries == 1 for r in first)
            np.testing.assert_array_equal(first[0].sample_array(), x[ids.index(first[0].sample_id)])
            ack = await client.ack("digits", "trainers", [r.offset for r in first if r.offset < 20])
            assert (ack.acked, ack.committed_offset) == (20, 20)

    async with LabelingServer(config) as server:  # same label log, new process state
        async with AsyncLabelerClient(server.address) as client:
            again = await _collect(client, "trainers", "t0", want=20)
            state = await client.get_topic("digits", groups=["trainers"])
    assert sorted(r.offset for r in again) == list(range(20, 40))
    assert all(r.deliveries == 2 for r in again)
    assert state.group_committed["trainers"] == 20 and state.group_lag["trainers"] == 20


async def test_disconnect_hands_unacked_labels_to_the_next_consumer(make_config, digits):
    config = make_config(**ACCEPT_ALL, label_log={"visibility_timeout_s": 60.0})
    x = np.ascontiguousarray(digits.stream_x[:24])
    async with LabelingServer(config) as server:
        async with AsyncLabelerClient(server.address) as client:
            await client.label("digits", x, ids=[f"d-{i}" for i in range(24)])
            first = await _collect(client, "g", "a", want=24, quiet_s=0.1)
            await client.ack("digits", "g", [r.offset for r in first[:10]])
            # "a" is gone; "b" gets the 14 unacked at once, not after the 60 s visibility timeout.
            second = await _collect(client, "g", "b", want=14, quiet_s=0.3)
            other_group = await _collect(client, "auditors", "c", want=24, quiet_s=0.1)
    assert sorted(r.offset for r in second) == sorted(r.offset for r in first[10:])
    assert sorted(r.offset for r in other_group) == list(range(24))  # groups are independent


async def _collect_columns(client: AsyncLabelerClient, group: str, consumer: str, want: int) -> list:
    """A columnar subscription's batches until ``want`` records arrived."""
    got: list = []
    async for columns in client.subscribe_columns("digits", group, consumer, max_batch=16):
        got.append(columns)
        if sum(map(len, got)) >= want:
            break
    return got


async def test_a_columnar_trainer_gets_the_records_a_per_record_trainer_gets(make_config, digits):
    config = make_config(**ACCEPT_ALL)
    x = np.ascontiguousarray(digits.stream_x[:40])
    ids = [f"c-{i}" for i in range(40)]
    async with LabelingServer(config) as server:
        async with AsyncLabelerClient(server.address) as client:
            await client.label("digits", x[:25], ids=ids[:25], metadata=[{"k": str(i)} for i in range(25)])
            await client.label("digits", x[25:], ids=ids[25:])
            batches = await asyncio.wait_for(_collect_columns(client, "columns", "t0", want=40), 10)
            records = await _collect(client, "records", "t0", want=40, quiet_s=0.1)
            assert all(len(b) <= 16 and b.samples.shape == (len(b), *x.shape[1:]) for b in batches)
            flat = [r for b in batches for r in b.records()]
            assert sorted(flat, key=lambda r: r.offset) == sorted(records, key=lambda r: r.offset)
            assert flat[3].metadata == {"k": str(ids.index(flat[3].sample_id))}
            samples = np.concatenate([b.samples for b in batches])
            order = [ids.index(i) for b in batches for i in b.ids]
            np.testing.assert_array_equal(samples, x[order])
            offsets = np.concatenate([b.offset for b in batches])
            ack = await client.ack("digits", "columns", offsets[offsets < 16])  # an int64 array
            assert (ack.acked, ack.committed_offset) == (16, 16)

    async with LabelingServer(config) as server:  # the unacked come again, columnar too
        async with AsyncLabelerClient(server.address) as client:
            again = await asyncio.wait_for(_collect_columns(client, "columns", "t0", want=24), 10)
    assert sorted(np.concatenate([b.offset for b in again]).tolist()) == list(range(16, 40))
    assert all((b.deliveries == 2).all() for b in again)


async def test_a_batch_larger_than_the_message_limit_arrives_in_parts(make_config, digits):
    """6000 digits with samples (1.5 MB) against a 1 MiB message limit: a trainer asking for them
    all in one batch gets them in parts, each within the limit, both ways, nothing lost."""
    config = make_config(**ACCEPT_ALL, max_message_bytes=1 << 20)
    x = np.ascontiguousarray(np.resize(digits.stream_x, (6000, *digits.stream_x.shape[1:])))
    async with LabelingServer(config) as server:
        async with AsyncLabelerClient(server.address) as client:
            for i in range(0, 6000, 1000):
                await client.label("digits", x[i:i + 1000], ids=[f"big-{j}" for j in range(i, i + 1000)])

            async def drain(way: str) -> list[int]:
                sizes: list[int] = []
                async for batch in getattr(client, way)("digits", way, "c", max_batch=10000):
                    sizes.append(len(batch))
                    if sum(sizes) == 6000:
                        return sizes
                return sizes

            for way in ("subscribe", "subscribe_columns"):
                sizes = await asyncio.wait_for(drain(way), 20)
                assert sum(sizes) == 6000 and len(sizes) > 1, (way, sizes)

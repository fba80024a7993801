"""RedisLabelLog specifics: retention, replicas sharing one Redis, no restart rule, errors.

The contract suite (tests/unit/labellog/test_contract_*.py) covers the LabelLog semantics; these tests run
against the session's throwaway redis-server (the ``redis_url`` fixture in tests/conftest.py).
"""

from __future__ import annotations

import asyncio
import socket
import uuid
from typing import Any, AsyncIterator, Callable

import numpy as np
import pytest

pytest.importorskip("redis")  # without it the redis_url fixture skips (fails in CI) too

import redis.asyncio as aioredis  # noqa: E402
from redis.exceptions import ConnectionError as RedisConnectionError  # noqa: E402

import pseudostream.server.labellog.redis as redis_log  # noqa: E402
from pseudostream.server.errors import ConfigError, PseudostreamError  # noqa: E402
from pseudostream.server.labellog import LabelBatch  # noqa: E402
from pseudostream.server.labellog.redis import RedisLabelLog  # noqa: E402

VISIBILITY = 0.3


def make_batch(n: int, prefix: str = "s") -> LabelBatch:
    return LabelBatch(
        ids=[f"{prefix}{k}" for k in range(n)],
        label=np.arange(n, dtype=np.int64) % 10,
        confidence=np.full(n, 0.99, np.float32),
        weight=np.ones(n, np.float32),
        threshold=np.full(n, 0.95, np.float32),
        teacher_version="v1",
        policy="fixed",
    )


@pytest.fixture
def prefix() -> str:
    return f"test-{uuid.uuid4().hex}"


@pytest.fixture
async def make_log(redis_url: str, prefix: str) -> AsyncIterator[Callable[..., RedisLabelLog]]:
    """``make_log(**options)``: a RedisLabelLog on this test's namespace; several calls give
    replicas sharing it. All are closed at the end."""
    logs: list[RedisLabelLog] = []

    def make(**options: Any) -> RedisLabelLog:
        options.setdefault("visibility_timeout_s", VISIBILITY)
        logs.append(RedisLabelLog(redis_url, prefix=prefix, **options))
        return logs[-1]

    yield make
    for log in logs:
        await log.close()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_public_names_are_exported():
    assert redis_log.__all__ == ["RedisLabelLog"]


@pytest.mark.parametrize("options", [{"visibility_timeout_s": 0}, {"poll_interval_s": -1},
                                     {"max_len": 0}, {"url": "http://127.0.0.1:6379"}])
def test_invalid_options_are_config_errors(options):
    with pytest.raises(ConfigError):
        RedisLabelLog(**options)


async def test_max_len_trims_old_records_and_offsets_keep_counting(make_log):
    log = make_log(max_len=50)
    for _ in range(5):
        await log.append("t", make_batch(200))
    assert await log.end_offset("t") == 1000
    got = [r.offset for r in await log.read("t", "g", "c", max_records=2000)]
    # MAXLEN ~ trims whole stream nodes (100 entries by default): between 50 and 150 are left.
    assert 50 <= len(got) <= 150
    assert got == list(range(1000 - len(got), 1000))
    assert (await log.append("t", make_batch(1))).tolist() == [1000]
    assert await log.committed("t", "g") == 1000 - len(got)


async def test_records_trimmed_while_pending_are_dropped_at_redelivery(make_log):
    log = make_log(max_len=1)
    await log.append("t", make_batch(3))
    pending = await log.read("t", "g", "c1", max_records=3)
    for _ in range(3):
        await log.append("t", make_batch(100))  # trims the pending records away
    await log.release("t", "g", "c1")
    got = await log.read("t", "g", "c2", max_records=1000)
    assert got and got[0].offset > max(r.offset for r in pending)
    assert all(r.deliveries == 1 for r in got)
    assert await log.committed("t", "g") == got[0].offset


async def test_replicas_appending_concurrently_get_unique_gapless_offsets(make_log):
    a, b = make_log(), make_log()
    results = await asyncio.gather(
        *(replica.append("t", make_batch(7, prefix=f"{name}{i}-"))
          for i in range(20) for name, replica in (("a", a), ("b", b))))
    for offsets in results:  # each batch gets consecutive offsets
        assert offsets.tolist() == list(range(offsets[0], offsets[0] + 7))
    assert sorted(o for offsets in results for o in offsets.tolist()) == list(range(280))
    assert await a.end_offset("t") == await b.end_offset("t") == 280
    got = await b.read("t", "g", "c", max_records=1000)
    first_of = {r.sample_id: r.offset for r in got}
    for i, offsets in enumerate(results):  # every replica's rows landed at the offsets it got
        name = "ab"[i % 2]
        assert first_of[f"{name}{i // 2}-0"] == offsets[0]


async def test_replicas_share_groups_pending_records_and_state(make_log):
    a, b = make_log(), make_log()
    await a.append("t", make_batch(6))
    assert [r.offset for r in await a.read("t", "g", "c1", max_records=4)] == [0, 1, 2, 3]
    assert [r.offset for r in await b.read("t", "g", "c2", max_records=4)] == [4, 5]
    assert await b.ack("t", "g", [0, 1, 4, -1]) == 3  # acks what a delivered
    assert await a.committed("t", "g") == await b.committed("t", "g") == 2
    assert await a.lag("t", "g") == await b.lag("t", "g") == 3
    await a.save_state("t", "policy", b"\x00blob")
    assert await b.load_state("t", "policy") == b"\x00blob"


async def test_waiting_read_wakes_on_an_append_by_another_replica(make_log):
    a, b = make_log(poll_interval_s=5.0), make_log()  # the poll alone would take 5 s
    loop = asyncio.get_running_loop()

    async def append_later() -> None:
        await asyncio.sleep(0.1)
        await b.append("t", make_batch(2))

    start = loop.time()
    writer = asyncio.create_task(append_later())
    got = await a.read("t", "g", "c", max_records=10, wait_s=3.0)
    await writer
    assert [r.offset for r in got] == [0, 1]
    assert loop.time() - start < 1.0


async def test_no_restart_rule_pending_records_wait_for_timeout_or_release(make_log):
    old = make_log(visibility_timeout_s=1.0)
    await old.append("t", make_batch(3))
    await old.read("t", "g", "c1", max_records=10)
    await old.close()  # a replica restarts; its pending deliveries may live on elsewhere
    new = make_log(visibility_timeout_s=1.0)
    assert await new.read("t", "g", "c1", max_records=10) == []
    assert await new.read("t", "g", "c2", max_records=10) == []
    assert await new.lag("t", "g") == 3
    assert await new.release("t", "g", "c1") == 3
    again = await new.read("t", "g", "c2", max_records=10)
    assert [(r.offset, r.deliveries) for r in again] == [(0, 2), (1, 2), (2, 2)]


async def test_connection_failure_names_the_url_and_keeps_the_cause():
    url = f"redis://:secret@127.0.0.1:{closed_port()}/0"
    log = RedisLabelLog(url)
    try:
        with pytest.raises(PseudostreamError) as info:
            await log.append("t", make_batch(1))
    finally:
        await log.close()
    message = str(info.value)
    assert "append" in message and "must be reachable" in message
    assert url.replace("secret", "***") in message and "secret" not in message
    assert isinstance(info.value.__cause__, RedisConnectionError)


async def test_redis_errors_are_converted_and_name_the_operation(make_log, redis_url, prefix):
    log = make_log()
    raw = aioredis.Redis.from_url(redis_url)
    try:
        await raw.set(f"{prefix}:{{t}}:next", "not a number")
    finally:
        await raw.aclose()
    with pytest.raises(PseudostreamError, match="append failed") as info:
        await log.append("t", make_batch(1))
    assert info.value.__cause__ is not None


async def test_calls_after_close_raise(make_log):
    log = make_log()
    await log.close()
    await log.close()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        await log.end_offset("t")
    with pytest.raises(RuntimeError, match="closed"):
        await log.read("t", "g", "c", max_records=1)

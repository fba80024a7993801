"""Fixtures of the LabelLog contract tests (``test_contract_*.py``): each test runs against every
implementation and uses the LabelLog interface only.

Add an implementation by adding a factory to FACTORIES; a factory gets the fixture request, to
ask for the fixtures it needs. The visibility timeout is short (VISIBILITY seconds) so
redelivery tests stay fast.
"""

from __future__ import annotations

import uuid
from typing import Awaitable, Callable

import numpy as np
import pytest

from pseudostream.server.labellog import LabelBatch, LabelLog, SqliteLabelLog

VISIBILITY = 0.3


async def _sqlite(request: pytest.FixtureRequest, **options) -> LabelLog:
    db = request.getfixturevalue("tmp_path") / f"labels-{uuid.uuid4().hex}.db"
    return SqliteLabelLog(db, visibility_timeout_s=VISIBILITY, **options)


async def _redis(request: pytest.FixtureRequest, **options) -> LabelLog:
    url = request.getfixturevalue("redis_url")  # skips without redis-server
    from pseudostream.server.labellog.redis import RedisLabelLog

    prefix = f"contract-{uuid.uuid4().hex}"  # a fresh namespace per test
    return RedisLabelLog(url, prefix=prefix, visibility_timeout_s=VISIBILITY, **options)


FACTORIES: dict[str, Callable[..., Awaitable[LabelLog]]] = {
    "redis": _redis, "sqlite": _sqlite}


@pytest.fixture(params=sorted(FACTORIES))
async def log(request: pytest.FixtureRequest):
    instance = await FACTORIES[request.param](request)
    yield instance
    await instance.close()


@pytest.fixture(params=sorted(FACTORIES))
async def make_log(request: pytest.FixtureRequest):
    """``await make_log(**options)``: a log of each kind built with extra options."""
    made: list[LabelLog] = []

    async def make(**options) -> LabelLog:
        made.append(await FACTORIES[request.param](request, **options))
        return made[-1]

    yield make
    for instance in made:
        await instance.close()


@pytest.fixture
def visibility() -> float:
    """The logs' visibility timeout, seconds."""
    return VISIBILITY


@pytest.fixture
def past_visibility() -> float:
    """Seconds to sleep for pending records to become claimable again."""
    return VISIBILITY + 0.1


@pytest.fixture
def make_batch() -> Callable[..., LabelBatch]:
    """``make_batch(n, prefix="s", **extra)``: n rows with distinguishable values: label i % 10,
    confidence 0.5 + i / 1000."""

    def make(n: int, prefix: str = "s", **extra) -> LabelBatch:
        i = np.arange(n)
        return LabelBatch(
            ids=[f"{prefix}{k}" for k in range(n)],
            label=(i % 10).astype(np.int64),
            confidence=(0.5 + i / 1000).astype(np.float32),
            weight=np.ones(n, np.float32),
            threshold=np.full(n, 0.95, np.float32),
            teacher_version="v1",
            policy="fixed",
            **extra,
        )

    return make

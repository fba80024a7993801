"""Per-client rate limits (token buckets keyed by token name) and trusted producers: untrusted
samples are decided but never move the topic's statistics."""

from __future__ import annotations

import json

import grpc
import numpy as np
import pytest
import yaml

from pseudostream.clients.client import AsyncLabelerClient
from pseudostream.server.app import LabelingServer
from pseudostream.server.selection import make_policy

pytestmark = pytest.mark.integration

TOKENS = [{"name": "good", "token": "good-secret", "roles": {"*": ["producer", "admin"]}},
          {"name": "bad", "token": "bad-secret", "roles": {"*": ["producer"]}}]


@pytest.fixture
def tokens_file(tmp_path):
    path = tmp_path / "tokens.yaml"
    path.write_text(yaml.safe_dump(TOKENS))
    return path


async def test_rate_limit_is_per_client(make_config, digits, tokens_file):
    config = make_config(rate_limit_samples_per_s=50, rate_limit_burst=32,
                         security={"tokens_file": tokens_file})
    x = np.ascontiguousarray(digits.stream_x[:16])
    async with LabelingServer(config) as server:
        async with AsyncLabelerClient(server.address, token="bad-secret", retries=0) as bad, \
                AsyncLabelerClient(server.address, token="good-secret", retries=0) as good:
            await bad.label("digits", x, ids=[f"b0-{i}" for i in range(16)])
            await bad.label("digits", x, ids=[f"b1-{i}" for i in range(16)])
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await bad.label("digits", x, ids=[f"b2-{i}" for i in range(16)])
            ok = await good.label("digits", x, ids=[f"g-{i}" for i in range(16)])  # own bucket
        async with AsyncLabelerClient(server.address, token="bad-secret", retries=5) as patient:
            later = await patient.label("digits", x, ids=[f"b3-{i}" for i in range(16)])
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "'bad' is over its rate limit of 50 samples/s" in info.value.details()
    assert int(dict(info.value.trailing_metadata())["retry-after-ms"]) > 0
    assert len(ok) == 16 and len(later) == 16


async def test_untrusted_producers_do_not_move_the_policy(make_config, digits, tokens_file):
    policy = {"name": "freematch", "params": {"momentum": 0.5}}
    config = make_config(security={"tokens_file": tokens_file},
                         topics={"digits": {"policy": policy, "trusted_producers": ["good"]}})
    fresh = json.dumps(make_policy("freematch", 10, policy["params"]).state_dict())
    x = np.ascontiguousarray(digits.stream_x[:32])
    async with LabelingServer(config) as server:
        topic = server.core.topics["digits"]
        async with AsyncLabelerClient(server.address, token="bad-secret") as bad:
            poisoned = await bad.label("digits", x, ids=[f"p{i}" for i in range(32)])
        after_bad = json.dumps(topic.policy.state_dict())
        async with AsyncLabelerClient(server.address, token="good-secret") as good:
            await good.label("digits", x, ids=[f"t{i}" for i in range(32)])
        after_good = json.dumps(topic.policy.state_dict())
    assert len(poisoned) == 32 and topic.samples == 64  # untrusted samples were still decided
    assert after_bad == fresh  # ... but did not move the statistics
    assert after_good != fresh

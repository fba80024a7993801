"""The bench's closed-loop load sends fresh samples in every window: a second ServiceLoad on the
same service must not resend ids the service already decided (it would measure idempotent
replays, which add no log record, instead of labeling)."""

from __future__ import annotations

import numpy as np
import pytest

from pseudostream.benchmarks.bench_load import ServiceLoad
from pseudostream.clients.client import AsyncLabelerClient
from pseudostream.server.app import LabelingServer

pytestmark = pytest.mark.integration


async def test_each_load_labels_new_samples(make_config, digits):
    config = make_config(topics={"digits": {"policy": {"name": "fixed", "params": {"tau": 0.0}}}})
    x = np.ascontiguousarray(digits.stream_x[:16])
    async with LabelingServer(config) as server:
        for _ in range(2):  # two windows, as bench runs N = 1 and then N = 4 on one service
            async with ServiceLoad(server.address, "digits", x, streams=2) as load:
                assert [await load.call(k) for k in range(3)] == [16, 16, 16]
        async with AsyncLabelerClient(server.address) as client:
            state = await client.get_topic("digits")
    # tau 0 accepts every sample: 2 loads x 3 requests x 16 samples, each its own log record.
    assert state.log_end_offset == 96
    assert state.accepted == 96

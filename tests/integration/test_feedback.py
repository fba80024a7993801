"""Trainers report per acked batch (loss before/after the step, audit labels): the service checks
the audits against the log, stores the report with the batch offsets, and exports metrics."""

from __future__ import annotations

import json

import grpc
import numpy as np
import pytest

from pseudostream.clients.client import AsyncLabelerClient
from pseudostream.server.app import LabelingServer

pytestmark = pytest.mark.integration


async def test_feedback_is_checked_stored_and_exported(make_config, digits):
    config = make_config(topics={"digits": {"policy": {"name": "fixed", "params": {"tau": 0.0}}}})
    x, y = np.ascontiguousarray(digits.stream_x[:8]), digits.stream_y[:8]
    async with LabelingServer(config) as server:
        async with AsyncLabelerClient(server.address) as client:
            result = await client.label("digits", x, ids=[f"f{i}" for i in range(8)])
            audit = {int(result.offset[i]): int(y[i]) for i in range(4)}
            audit[999] = 1  # not in the log: ignored
            reply = await client.feedback("digits", "students", result.offset.tolist(),
                                          loss_before=0.9, loss_after=0.7, audit=audit, step=3)
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await client.feedback("digits", "students", [0], loss_before=1, loss_after=1,
                                      audit={0: 42})
        stored = json.loads(await server.core.log.load_state("digits", reply.key))
        registry = server.metrics.registry
        labels = {"topic": "digits", "group": "students"}
        # 0.9 -> 0.7: one improvement of 0.2, in the (0.1, 1] bucket (negative buckets: no _sum)
        improvement = [registry.get_sample_value("pseudostream_trainer_loss_improvement_bucket",
                                                 {**labels, "le": le}) for le in ("0.1", "1.0")]
        wrong = registry.get_sample_value("pseudostream_trainer_audited_total",
                                          {"topic": "digits", "group": "students", "outcome": "wrong"})
    expected_correct = int(sum(result.label[i] == y[i] for i in range(4)))
    assert (reply.audited, reply.audit_correct) == (4, expected_correct)
    assert reply.key == "feedback/students/000000000000-000000000007"
    assert stored["offsets"] == list(range(8)) and stored["step"] == 3
    assert stored["loss_before"] == 0.9 and stored["audit"]["0"] == int(y[0])
    assert improvement == [0.0, 1.0]
    assert wrong == 4 - expected_correct
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "not class indices" in info.value.details()

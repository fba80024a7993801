"""Teacher versions on the embedded backend: publish while producers stream (no failed request,
one switch point), signature checks, and rollback to the exact earlier outputs."""

from __future__ import annotations

import asyncio
import json
import shutil

import grpc
import numpy as np
import pytest

from pseudostream.clients.client import AsyncLabelerClient, make_label_request
from pseudostream.server.app import LabelingServer

pytestmark = pytest.mark.integration


async def _stream(target: str, x: np.ndarray, prefix: str, results: list) -> None:
    async def requests():
        for r in range(30):
            yield make_label_request("digits", x, [f"{prefix}-{r}-{i}" for i in range(len(x))])
            await asyncio.sleep(0.02)

    async with AsyncLabelerClient(target) as client:
        async for result in client.label_stream(requests()):
            results.append(result)


async def test_publish_while_streaming_switches_once_and_fails_nothing(make_config, digits, second_teacher):
    config = make_config(topics={"digits": {"policy": {"name": "fixed", "params": {"tau": 0.0}}}})
    x = np.ascontiguousarray(digits.stream_x[:16])
    async with LabelingServer(config) as server:
        results: list = []
        producers = [asyncio.create_task(_stream(server.address, x, f"p{k}", results)) for k in range(4)]
        await asyncio.sleep(0.15)
        async with AsyncLabelerClient(server.address) as admin:
            published = await admin.publish_teacher("digits-cnn", str(second_teacher))
        await asyncio.gather(*producers)  # raises if any request failed
        async with AsyncLabelerClient(server.address) as client:
            records = []
            async for batch in client.subscribe("digits", "audit", "a", include_samples=False):
                records.extend(batch)
                if len(records) == 4 * 30 * 16:
                    break
    assert published.version == "2" and list(published.versions) == ["1", "2"]
    assert len(results) == 120 and all(len(r) == 16 for r in results)
    versions = [r.teacher_version for r in sorted(records, key=lambda r: r.offset)]
    switch = versions.index("2")
    assert set(versions[:switch]) == {"1"} and set(versions[switch:]) == {"2"}  # one switch point
    assert 0 < switch < len(versions)


async def test_publish_refuses_another_signature_and_rollback_restores_outputs(
        make_config, digits, second_teacher, tmp_path):
    wrong = tmp_path / "wrong"
    shutil.copytree(second_teacher, wrong)
    card = json.loads((wrong / "teacher.json").read_text())
    card["classes"] = card["classes"][:9]
    (wrong / "teacher.json").write_text(json.dumps(card))
    x = np.ascontiguousarray(digits.test_x[:32])
    async with LabelingServer(make_config()) as server:
        async with AsyncLabelerClient(server.address) as client:
            before = await client.label("digits", x, ids=[f"a{i}" for i in range(32)])
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await client.publish_teacher("digits-cnn", str(wrong))
            await client.publish_teacher("digits-cnn", str(second_teacher))
            other = await client.label("digits", x, ids=[f"b{i}" for i in range(32)])
            rolled = await client.rollback_teacher("digits-cnn", "1")
            after = await client.label("digits", x, ids=[f"c{i}" for i in range(32)])
            with pytest.raises(grpc.aio.AioRpcError) as missing:
                await client.rollback_teacher("digits-cnn", "7")
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "classes" in info.value.details()
    assert set(other.teacher_version) == {"2"} and rolled.version == "1"
    assert not np.array_equal(other.confidence, before.confidence)
    assert set(after.teacher_version) == {"1"}
    np.testing.assert_array_equal(after.confidence, before.confidence)  # the exact earlier outputs
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND and "versions: 1, 2" in missing.value.details()

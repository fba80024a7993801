"""Bad input gets the right status and a message saying what was expected, while another
client's stream keeps working and loses nothing."""

from __future__ import annotations

import asyncio

import grpc
import numpy as np
import pytest

from pseudostream.clients.client import AsyncLabelerClient, make_label_request
from pseudostream.proto.v1 import labeler_pb2 as pb
from pseudostream.server.app import LabelingServer

pytestmark = pytest.mark.integration


def _good(n: int = 4, prefix: str = "bad") -> tuple[np.ndarray, list[str]]:
    return np.zeros((n, 1, 8, 8), np.float32), [f"{prefix}-{i}" for i in range(n)]


def _requests() -> dict[str, tuple[pb.LabelRequest, grpc.StatusCode, str]]:
    x, ids = _good()
    wrong_bytes = make_label_request("digits", x, ids)
    wrong_bytes.inputs.data = wrong_bytes.inputs.data[:-4]
    bad_dtype = pb.LabelRequest(topic="digits", ids=ids, inputs=pb.Tensor(
        data=x.tobytes(), shape=[4, 1, 8, 8], dtype="complex64"))
    meta = make_label_request("digits", x, ids, metadata=[{"a": "b"}])
    return {
        "wrong dtype": (make_label_request("digits", x.astype(np.float64), ids),
                        grpc.StatusCode.INVALID_ARGUMENT, "expects float32"),
        "unsupported dtype": (bad_dtype, grpc.StatusCode.INVALID_ARGUMENT, "unsupported dtype"),
        "wrong shape": (make_label_request("digits", np.zeros((4, 1, 8, 9), np.float32), ids),
                        grpc.StatusCode.INVALID_ARGUMENT, "expected [4, 1, 8, 8]"),
        "byte count": (wrong_bytes, grpc.StatusCode.INVALID_ARGUMENT, "bytes do not match shape"),
        "ids vs rows": (make_label_request("digits", x, ids[:3] + ["x", "y"]),
                        grpc.StatusCode.INVALID_ARGUMENT, "expected [5, 1, 8, 8]"),
        "unknown topic": (make_label_request("nope", x, ids), grpc.StatusCode.NOT_FOUND,
                          "configured topics: digits"),
        "empty batch": (pb.LabelRequest(topic="digits"), grpc.StatusCode.INVALID_ARGUMENT,
                        "empty batch"),
        "duplicate ids": (make_label_request("digits", x, ["a", "a", "b", "c"]),
                          grpc.StatusCode.INVALID_ARGUMENT, "duplicate sample ids"),
        "metadata count": (meta, grpc.StatusCode.INVALID_ARGUMENT, "one per id"),
        "missing inputs": (pb.LabelRequest(topic="digits", ids=ids),
                           grpc.StatusCode.INVALID_ARGUMENT, "missing inputs"),
    }


async def test_each_bad_request_gets_its_status_while_another_stream_runs(make_config, digits, steady_producer):
    x = np.ascontiguousarray(digits.stream_x[:8])
    async with LabelingServer(make_config()) as server:
        steady = asyncio.create_task(steady_producer(server.address, x, rounds=40))
        async with AsyncLabelerClient(server.address) as client:
            for name, (request, code, words) in _requests().items():
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    async for _ in client.label_stream([request]):
                        pass
                assert info.value.code() == code, name
                assert words in info.value.details(), (name, info.value.details())
        assert await steady == 40 * len(x)  # the other client lost nothing


async def test_bad_request_ends_stream_after_earlier_responses(make_config, digits):
    x = np.ascontiguousarray(digits.stream_x[:6])
    good = [make_label_request("digits", x, [f"g{r}-{i}" for i in range(6)]) for r in range(3)]
    bad = make_label_request("digits", x.astype(np.float64), [f"b-{i}" for i in range(6)])
    received = []
    async with LabelingServer(make_config()) as server:
        async with AsyncLabelerClient(server.address) as client:
            with pytest.raises(grpc.aio.AioRpcError) as info:
                async for result in client.label_stream(good + [bad]):
                    received.append(result)
            state = await client.get_topic("digits")
            # The stream broke, the service did not: the next stream works.
            after = await client.label("digits", x, ids=[f"after-{i}" for i in range(6)])
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [r.ids[0] for r in received] == ["g0-0", "g1-0", "g2-0"]
    assert state.samples == 18 and len(after) == 6


async def test_unknown_topic_and_bad_names_on_other_rpcs(make_config):
    async with LabelingServer(make_config()) as server:
        async with AsyncLabelerClient(server.address) as client:
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await client.get_topic("nope")
            assert info.value.code() == grpc.StatusCode.NOT_FOUND
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await client.ack("nope", "g", [1])
            assert info.value.code() == grpc.StatusCode.NOT_FOUND
            with pytest.raises(grpc.aio.AioRpcError) as info:
                async for _ in client.subscribe("digits", "", "c"):
                    pass
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "group and consumer" in info.value.details()

"""Limits on what a Label request may carry (NaN/Inf, sizes, metadata, idle streams, clients that
leave mid-batch): each gets its status and a message saying what was expected, while another
client's stream keeps working and loses nothing."""

from __future__ import annotations

import asyncio

import grpc
import numpy as np
import pytest
from grpc import aio

from pseudostream.clients.client import AsyncLabelerClient, make_label_request
from pseudostream.proto.v1 import labeler_pb2 as pb
from pseudostream.proto.v1 import labeler_pb2_grpc as pb_grpc
from pseudostream.server.app import LabelingServer
from pseudostream.server.codec import MAX_ID_LENGTH

pytestmark = pytest.mark.integration

INVALID = grpc.StatusCode.INVALID_ARGUMENT


def _zeros(n: int) -> np.ndarray:
    return np.zeros((n, 1, 8, 8), np.float32)


def _ids(n: int, prefix: str) -> list[str]:
    return [f"{prefix}-{i}" for i in range(n)]


def _limit_requests() -> dict[str, tuple[pb.LabelRequest, grpc.StatusCode, str]]:
    nan = _zeros(4)
    nan[1, 0, 0, 0] = np.nan
    nan[2, 0, 3, 3] = np.inf
    nan[3, 0, 7, 7] = -np.inf
    ids = _ids(4, "lim")
    return {
        "nan/inf": (make_label_request("digits", nan, ids), INVALID,
                    "3 NaN/Inf values, first in sample 'lim-1'"),
        "too many samples": (make_label_request("digits", _zeros(17), _ids(17, "many")), INVALID,
                             "17 samples in one request, limit 16"),
        "over gRPC max message": (make_label_request("digits", _zeros(5000), _ids(5000, "huge")),
                                  grpc.StatusCode.RESOURCE_EXHAUSTED, ""),
        "id too long": (make_label_request("digits", _zeros(2), ["ok", "x" * (MAX_ID_LENGTH + 1)]),
                        INVALID, f"1..{MAX_ID_LENGTH} characters"),
        "empty id": (make_label_request("digits", _zeros(2), ["ok", ""]), INVALID,
                     f"1..{MAX_ID_LENGTH} characters"),
        "empty batch": (pb.LabelRequest(topic="digits"), INVALID, "empty batch"),
        "duplicate ids": (make_label_request("digits", _zeros(3), ["a", "b", "a"]), INVALID,
                          "duplicate sample ids"),
        "metadata key too long": (
            make_label_request("digits", _zeros(2), ["m0", "m1"], metadata=[{}, {"k" * 129: "v"}]),
            INVALID, "metadata of sample 'm1': key of 129 characters, limit 128"),
        "metadata value too long": (
            make_label_request("digits", _zeros(2), ["m0", "m1"], metadata=[{"k": "v" * 1025}, {}]),
            INVALID, "metadata of sample 'm0': value of key 'k' has 1025 characters, limit 1024"),
        "metadata too many entries": (
            make_label_request("digits", _zeros(1), ["m0"],
                               metadata=[{f"k{j}": "v" for j in range(33)}]),
            INVALID, "33 entries, limit 32 per sample"),
        "unknown topic": (make_label_request("nope", _zeros(1), ["u0"]), grpc.StatusCode.NOT_FOUND,
                          "configured topics: digits"),
    }


async def test_each_limit_gets_its_status_while_another_stream_runs(make_config, digits, steady_producer):
    x = np.ascontiguousarray(digits.stream_x[:8])
    config = make_config(max_request_samples=16, max_message_bytes=1 << 20)
    async with LabelingServer(config) as server:
        steady = asyncio.create_task(steady_producer(server.address, x, rounds=40))
        async with AsyncLabelerClient(server.address) as client:
            for name, (request, code, words) in _limit_requests().items():
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    async for _ in client.label_stream([request]):
                        pass
                assert info.value.code() == code, (name, info.value.details())
                assert words in info.value.details(), (name, info.value.details())
            # Limits are limits, not bans: right at them is fine.
            meta = [{f"k{j}"[:128]: "v" * 1024 for j in range(32)}] + [{"k" * 128: ""}] * 15
            ok = await client.label("digits", _zeros(16), ids=["y" * MAX_ID_LENGTH] + _ids(15, "ok"),
                                    metadata=meta)
            assert len(ok) == 16
        assert await steady == 40 * len(x)  # the other client lost nothing
        async with AsyncLabelerClient(server.address) as client:  # and the server still serves
            assert len(await client.label("digits", x, ids=_ids(8, "after"))) == 8


async def test_nonfinite_sanitize_labels_as_zeros(make_config, digits, steady_producer):
    x = np.ascontiguousarray(digits.stream_x[:6])
    dirty = x.copy()
    dirty[0, 0, 0, 0] = np.nan
    dirty[3, 0, 4, 4] = np.inf
    dirty[5, 0, 7, 0] = -np.inf
    clean = np.nan_to_num(dirty, nan=0.0, posinf=0.0, neginf=0.0)
    config = make_config(topics={"digits": {"teacher": "digits-cnn", "nonfinite": "sanitize"}})
    async with LabelingServer(config) as server:
        steady = asyncio.create_task(steady_producer(server.address, x, rounds=20))
        async with AsyncLabelerClient(server.address) as client:
            got = await client.label("digits", dirty, ids=_ids(6, "dirty"))
            want = await client.label("digits", clean, ids=_ids(6, "clean"))
        assert await steady == 20 * len(x)
    assert len(got) == 6
    np.testing.assert_array_equal(got.label, want.label)
    np.testing.assert_allclose(got.confidence, want.confidence, rtol=1e-6)


async def test_idle_stream_ends_with_deadline_exceeded(make_config, digits, steady_producer):
    x = np.ascontiguousarray(digits.stream_x[:4])
    async with LabelingServer(make_config(stream_idle_timeout_s=0.5)) as server:
        steady = asyncio.create_task(steady_producer(server.address, x, rounds=100))

        async def one_then_silence():
            yield make_label_request("digits", x, _ids(4, "idle"))
            await asyncio.sleep(30)  # never closes its half of the stream

        received = []
        loop = asyncio.get_running_loop()
        started = loop.time()
        async with AsyncLabelerClient(server.address) as client:
            with pytest.raises(grpc.aio.AioRpcError) as info:
                async for result in client.label_stream(one_then_silence()):
                    received.append(result)
        waited = loop.time() - started
        assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert "no request for 0.5 s; open a new stream when you have samples" in info.value.details()
        assert [len(r) for r in received] == [4]  # the answer before the silence still came
        assert 0.4 < waited < 10
        assert await steady == 100 * len(x)  # requests every 10 ms: never idle, never cut


async def test_client_cancelling_mid_batch_loses_no_accepted_label(make_config, digits, steady_producer):
    x = np.ascontiguousarray(digits.stream_x[:32])
    small = np.ascontiguousarray(digits.stream_x[:8])
    config = make_config(topics={"digits": {"teacher": "digits-cnn",
                                            "policy": {"name": "fixed", "params": {"tau": 0.0}}}})
    async with LabelingServer(config) as server:
        steady = asyncio.create_task(steady_producer(server.address, small, rounds=60))

        async def many():
            for r in range(200):
                yield make_label_request("digits", x, _ids(32, f"gone{r}"))

        async with aio.insecure_channel(server.address) as channel:
            call = pb_grpc.LabelerStub(channel).Label(many())
            responses = 0
            async for response in call:
                responses += 1
                if responses == 3:
                    call.cancel()  # leaves with requests still in flight
                    break
        assert call.cancelled()
        assert await steady == 60 * len(small)

        async with AsyncLabelerClient(server.address) as client:
            # Everything the server took in is decided and, at tau 0, logged: the log catches up
            # with the samples counter and never goes back.
            ends, state = [], await client.get_topic("digits")
            for _ in range(200):
                state = await client.get_topic("digits")
                ends.append(state.log_end_offset)
                if len(ends) > 3 and ends[-1] == state.samples == ends[-4]:
                    break
                await asyncio.sleep(0.05)
            assert ends == sorted(ends)
            assert state.log_end_offset == state.samples
            assert state.samples >= 60 * len(small) + 3 * 32
            assert state.samples % 8 == 0  # whole requests only
            after = await client.label("digits", small, ids=_ids(8, "after"))
            assert len(after) == 8 and all(after.accepted)
            assert (await client.get_topic("digits")).log_end_offset == state.log_end_offset + 8

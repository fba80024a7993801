"""Structured fuzzing of LabelRequest against one live server: every request gets either one
decision per id or a proper client-error status (never UNKNOWN/INTERNAL), the server stays up and
its memory stays bounded."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any, Coroutine

import grpc
import numpy as np
import pytest
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pseudostream.proto.v1 import labeler_pb2 as pb
from pseudostream.proto.v1 import labeler_pb2_grpc as pb_grpc
from pseudostream.server.app import LabelingServer

pytestmark = pytest.mark.integration

PER_EXAMPLE = 10  # requests per generated example, each on its own stream, sent concurrently
EXAMPLES = 200
EXPECTED = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND,
            grpc.StatusCode.RESOURCE_EXHAUSTED}
VALID_DTYPES = ["float32", "float16", "float64", "uint8", "int8", "int16", "int32", "int64", "bool"]
SAMPLE = (1, 8, 8)  # the demo teacher's input shape (float32)
MAX_MESSAGE = 1 << 20

# Long strings are built from a drawn length and character: drawing them char by char is slow.
_char = st.sampled_from(["x", "é", "\U0001f600", "\x00", " "])
_text = st.text(max_size=6)
_long_text = st.builds(lambda k, c: c * k, st.integers(100, 1100), _char)
_ids = st.one_of(st.sampled_from(["a", "b", "c", "é", "\U0001f600", "\x00"]), _text,
                 st.builds(lambda k, c: c * k, st.integers(250, 300), _char))


@st.composite
def valid_requests(draw: st.DrawFn) -> pb.LabelRequest:
    ids = draw(st.lists(st.one_of(st.text(min_size=1, max_size=8), _ids.filter(bool)),
                        min_size=1, max_size=8, unique=True))
    n = len(ids)
    x = np.random.default_rng(draw(st.integers(0, 2 ** 32 - 1))).normal(size=(n, *SAMPLE))
    request = pb.LabelRequest(topic="digits", ids=ids, request_id=draw(_text), inputs=pb.Tensor(
        data=x.astype("<f4").tobytes(), shape=[n, *SAMPLE], dtype="float32"))
    if draw(st.booleans()):
        entries = st.dictionaries(_text, _text, max_size=3)
        request.metadata.extend(pb.Metadata(entries=m)
                                for m in draw(st.lists(entries, min_size=n, max_size=n)))
    return request


@st.composite
def fuzzed_requests(draw: st.DrawFn) -> pb.LabelRequest:
    ids = draw(st.lists(_ids, max_size=12))  # duplicates, empty, long and unicode ids included
    n = len(ids)
    topic = draw(st.one_of(st.just("digits"), st.just("digits"), _text))
    dtype = draw(st.one_of(st.just("float32"), st.sampled_from(VALID_DTYPES), _text))
    shape = draw(st.one_of(
        st.just([n, *SAMPLE]),
        st.lists(st.integers(-3, 10), max_size=5),
        st.lists(st.one_of(st.integers(-(2 ** 63), 2 ** 63 - 1), st.just(0)), min_size=1, max_size=4),
        st.lists(st.just(1), min_size=30, max_size=40),
    ))
    itemsize = np.dtype(dtype).itemsize if dtype in VALID_DTYPES else 4
    right = int(np.prod([max(d, 0) for d in shape], dtype=np.float64)) * itemsize if shape else 0
    size = draw(st.one_of(
        st.just(right if right < 1 << 16 else 0),
        st.integers(0, 4096),
    ))
    if draw(st.integers(0, 99)) == 50:  # now and then over the server's gRPC receive limit
        size = MAX_MESSAGE + 1024
    fill = draw(st.sampled_from(["zeros", "random", "nan"]))
    if fill == "random":
        data = np.random.default_rng(draw(st.integers(0, 2 ** 32 - 1))).bytes(size)
    elif fill == "nan" and dtype == "float32" and size % 4 == 0:
        data = np.full(size // 4, np.nan, np.float32).tobytes()
    else:
        data = bytes(size)
    request = pb.LabelRequest(topic=topic, ids=ids, request_id=draw(_text))
    if draw(st.booleans()) or shape:
        request.inputs.CopyFrom(pb.Tensor(data=data, shape=shape, dtype=dtype))
    entries = st.dictionaries(st.one_of(_text, _long_text), st.one_of(_text, _long_text), max_size=4)
    metadata = draw(st.one_of(
        st.just([]),
        st.lists(entries, min_size=n, max_size=n),
        st.lists(entries, max_size=n + 2),
        st.just([{f"k{j}": "v" for j in range(40)}] * n),
    ))
    request.metadata.extend(pb.Metadata(entries=m) for m in metadata)
    return request


label_requests = st.one_of(valid_requests(), fuzzed_requests())  # about half of them valid


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


class _Loop:
    """An event loop in a thread, hosting the server and its clients; hypothesis stays sync."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, Any], timeout: float = 60) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


async def _send(stub: pb_grpc.LabelerStub, request: pb.LabelRequest) -> tuple[str, Any]:
    try:
        responses = [r async for r in stub.Label(iter([request]), timeout=30)]
    except grpc.aio.AioRpcError as exc:
        return "error", (exc.code(), exc.details())
    return "ok", responses


def _check(request: pb.LabelRequest, kind: str, result: Any) -> None:
    if kind == "error":
        code, details = result
        assert code in EXPECTED, (code, details, str(request)[:500])
        return
    assert len(result) == 1, result
    response = result[0]
    assert list(response.ids) == list(request.ids)
    n = len(request.ids)
    assert n > 0 and len(set(request.ids)) == n
    assert len(response.accepted) == len(response.label) == len(response.offset) == n


def test_fuzzed_label_requests_get_decisions_or_client_errors(make_config):
    config = make_config(max_message_bytes=MAX_MESSAGE, max_request_samples=8)
    runner = _Loop()
    server = LabelingServer(config)
    runner.run(server.start())
    state: dict[str, Any] = {}

    async def connect() -> None:
        state["channel"] = aio.insecure_channel(server.address)
        state["stub"] = pb_grpc.LabelerStub(state["channel"])

    runner.run(connect())
    counts = {"requests": 0, "ok": 0, "error": 0}
    codes: dict[str, int] = {}

    async def send_all(requests: list[pb.LabelRequest]) -> list[tuple[str, Any]]:
        return await asyncio.gather(*(_send(state["stub"], r) for r in requests))

    @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=False,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                     HealthCheck.large_base_example, HealthCheck.filter_too_much])
    @given(st.lists(label_requests, min_size=PER_EXAMPLE, max_size=PER_EXAMPLE))
    def fuzz(requests: list[pb.LabelRequest]) -> None:
        results = runner.run(send_all(requests))
        for request, (kind, result) in zip(requests, results):
            counts["requests"] += 1
            counts[kind] += 1
            if kind == "error":
                codes[result[0].name] = codes.get(result[0].name, 0) + 1
            _check(request, kind, result)

    try:
        rss_before = _rss_mb()
        started = time.perf_counter()
        fuzz()
        elapsed = time.perf_counter() - started
        rss_after = _rss_mb()

        async def healthy() -> tuple[int, int]:
            health = health_pb2_grpc.HealthStub(state["channel"])
            status = (await health.Check(health_pb2.HealthCheckRequest(service=""))).status
            good = pb.LabelRequest(topic="digits", ids=["after-0", "after-1"], inputs=pb.Tensor(
                data=bytes(2 * 64 * 4), shape=[2, *SAMPLE], dtype="float32"))
            responses = [r async for r in state["stub"].Label(iter([good]), timeout=10)]
            return status, len(responses[0].ids)

        status, decided = runner.run(healthy())
    finally:
        async def shutdown() -> None:
            await state["channel"].close()
            await server.stop(0)

        runner.run(shutdown())
        runner.close()
    n = counts["requests"]
    print(f"fuzz: {n} requests in {elapsed:.1f} s ({counts['ok']} labeled, errors {codes}); "
          f"RSS {rss_before:.0f} -> {rss_after:.0f} MB")
    assert n >= 2000
    assert counts["ok"] > 0 and counts["error"] > 0
    assert status == health_pb2.HealthCheckResponse.SERVING and decided == 2
    assert rss_after - rss_before < 200

"""Graceful stop: Label streams stop taking requests, answer every request already in flight,
then end with UNAVAILABLE ("shutting down"), so producers know exactly what to resend."""

from __future__ import annotations

import asyncio

import grpc
import numpy as np
import pytest

from pseudostream.clients.client import AsyncLabelerClient, make_label_request
from pseudostream.server.app import LabelingServer

pytestmark = pytest.mark.integration


async def test_stop_answers_in_flight_requests_then_ends_streams(make_config, digits):
    x = np.ascontiguousarray(digits.stream_x[:16])
    server = LabelingServer(make_config(topics={"digits": {"policy": {"name": "fixed", "params": {"tau": 0.0}}}}))
    await server.start()
    answered = 0
    errors: list[grpc.aio.AioRpcError] = []

    async def produce(k: int) -> None:
        nonlocal answered

        async def requests():
            for r in range(10_000):
                yield make_label_request("digits", x, [f"d{k}-{r}-{i}" for i in range(16)])
                await asyncio.sleep(0.002)

        async with AsyncLabelerClient(server.address) as client:
            try:
                async for result in client.label_stream(requests()):
                    answered += len(result)
            except grpc.aio.AioRpcError as exc:
                errors.append(exc)

    producers = [asyncio.create_task(produce(k)) for k in range(3)]
    await asyncio.sleep(0.5)
    await server.stop(grace=5.0)
    await asyncio.gather(*producers)
    decided = server.core.topics["digits"].samples
    assert len(errors) == 3 and all(e.code() == grpc.StatusCode.UNAVAILABLE for e in errors)
    # The server's words, or the client's when grpc failed a request's write before the status
    # arrived (clients.client.server_status); either way the producer knows to resend.
    assert all("shutting down" in e.details() or "while a request was being sent" in e.details()
               for e in errors), [e.details() for e in errors]
    assert answered > 0 and answered == decided  # every decided request was answered

"""The event-loop handler that drops grpc.aio's unretrieved AbortError tasks and passes the rest."""

from __future__ import annotations

import asyncio
import logging

from grpc import aio

from pseudostream.server.interceptors import quiet_unretrieved_aborts


def test_unretrieved_aborts_are_dropped_other_errors_pass(caplog):
    loop = asyncio.new_event_loop()
    try:
        quiet_unretrieved_aborts(loop)
        quiet_unretrieved_aborts(loop)  # idempotent: one wrapper
        with caplog.at_level(logging.ERROR, logger="asyncio"):
            loop.call_exception_handler({"message": "Task exception was never retrieved",
                                         "exception": aio.AbortError("Locally aborted.")})
            assert not caplog.records
            loop.call_exception_handler({"message": "Task exception was never retrieved",
                                         "exception": ValueError("a real bug")})
        assert len(caplog.records) == 1 and "never retrieved" in caplog.records[0].getMessage()
    finally:
        loop.close()

"""clients.client.server_status: the status a Label stream really ended with, when grpc.aio
reports INTERNAL "Internal error from Core" for a request whose write failed as the server ended
the stream (seen in tests/integration/test_drain.py)."""

from __future__ import annotations

import grpc
from grpc import aio

from pseudostream.clients.client import server_status


def error(code: grpc.StatusCode, details: str, debug: str) -> aio.AioRpcError:
    return aio.AioRpcError(code, aio.Metadata(), aio.Metadata(), details, debug)


def test_the_servers_status_in_the_debug_string_is_the_one_returned():
    got = server_status(error(grpc.StatusCode.INTERNAL, "Internal error from Core",
                              "UNAVAILABLE:the service is shutting down; resend requests"))
    assert got.code() == grpc.StatusCode.UNAVAILABLE
    assert got.details() == "the service is shutting down; resend requests"


def test_a_failed_write_without_the_servers_status_is_unavailable():
    debug = 'Failed "execute_batch": (<grpc._cython.cygrpc.SendMessageOperation object at 0x1>,)'
    got = server_status(error(grpc.StatusCode.INTERNAL, "Internal error from Core", debug))
    assert got.code() == grpc.StatusCode.UNAVAILABLE
    assert "while a request was being sent" in got.details() and got.debug_error_string() == debug


def test_other_errors_are_returned_as_they_are():
    for exc in (error(grpc.StatusCode.INTERNAL, "boom", "UNAVAILABLE:x"),
                error(grpc.StatusCode.INVALID_ARGUMENT, "bad shape", "INVALID_ARGUMENT:bad shape")):
        assert server_status(exc) is exc

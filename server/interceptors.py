"""The one place where exceptions become gRPC status codes (and RPC metrics are recorded).

Every PseudostreamError carries its status code; anything else is a bug and answers INTERNAL
with a generic message (the traceback goes to the log, not to the client).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, AsyncIterator, Awaitable, Callable

import grpc
from grpc import aio

from pseudostream.server.errors import PseudostreamError
from pseudostream.server.metrics import ServiceMetrics

__all__ = ["ErrorMappingInterceptor", "RETRY_AFTER_KEY", "our_handler", "rewrap", "quiet_unretrieved_aborts"]

log = logging.getLogger(__name__)

RETRY_AFTER_KEY = "retry-after-ms"


async def _abort(context: aio.ServicerContext, exc: BaseException) -> None:
    if isinstance(exc, PseudostreamError):
        if exc.retry_after_s is not None:
            context.set_trailing_metadata(((RETRY_AFTER_KEY, str(int(exc.retry_after_s * 1000))),))
        await context.abort(exc.code, str(exc))
    log.exception("unexpected error in RPC", exc_info=exc)
    await context.abort(grpc.StatusCode.INTERNAL, f"internal error ({type(exc).__name__}); see server log")


def quiet_unretrieved_aborts(loop: asyncio.AbstractEventLoop) -> None:
    """Make ``loop`` skip the traceback of one grpc.aio leftover: when a response stream ends with
    ``context.abort``, grpc.aio keeps an internal task whose AbortError is never retrieved, and
    asyncio logs it with a traceback when the task is garbage-collected. That can happen inside
    another ``ast.parse`` (Python 3.11 formats tracebacks with ``ast``), which breaks CPython
    3.11.7's AST state (``SystemError: AST constructor recursion depth mismatch``). Other
    exceptions go to the previous handler. Idempotent."""
    previous = loop.get_exception_handler()
    if getattr(previous, "_pseudostream_quiet", False):
        return

    def handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        if isinstance(exc, aio.AbortError) and "never retrieved" in str(context.get("message", "")):
            log.debug("grpc.aio left an aborted RPC's task unretrieved: %s", exc)
            return
        if previous is not None:
            previous(loop, context)
        else:
            loop.default_exception_handler(context)

    handler._pseudostream_quiet = True  # type: ignore[attr-defined]
    loop.set_exception_handler(handler)


def _code(context: aio.ServicerContext) -> str:
    code = context.code()
    return "OK" if code is None else getattr(code, "name", str(code))


def rewrap(handler: grpc.RpcMethodHandler,
           wrap_unary: Callable[[Callable[..., Any]], Callable[..., Any]],
           wrap_streaming: Callable[[Callable[..., Any]], Callable[..., Any]]) -> grpc.RpcMethodHandler:
    """The same RPC handler with its behavior wrapped (``wrap_streaming`` where the response
    streams, else ``wrap_unary``); serializers kept. Shared by the service's interceptors."""
    kind = (handler.request_streaming, handler.response_streaming)
    behavior, factory = {
        (False, False): (handler.unary_unary, grpc.unary_unary_rpc_method_handler),
        (False, True): (handler.unary_stream, grpc.unary_stream_rpc_method_handler),
        (True, False): (handler.stream_unary, grpc.stream_unary_rpc_method_handler),
        (True, True): (handler.stream_stream, grpc.stream_stream_rpc_method_handler),
    }[kind]
    wrapped = wrap_streaming(behavior) if handler.response_streaming else wrap_unary(behavior)
    return factory(wrapped, request_deserializer=handler.request_deserializer,
                   response_serializer=handler.response_serializer)


async def our_handler(
    continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
    details: grpc.HandlerCallDetails,
) -> tuple[grpc.RpcMethodHandler, str | None]:
    """(the handler, its RPC name), the name None where the handler is not one of pseudostream's
    services (health, reflection) or there is none: the interceptors pass those through."""
    handler = await continuation(details)
    if handler is None or not details.method.startswith("/pseudostream."):
        return handler, None
    return handler, details.method.rsplit("/", 1)[-1]


class ErrorMappingInterceptor(aio.ServerInterceptor):
    """Maps the exception tree to status codes and counts RPCs by method and code."""

    def __init__(self, metrics: ServiceMetrics) -> None:
        self._metrics = metrics

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler, rpc = await our_handler(continuation, details)
        if rpc is None:
            return handler
        return rewrap(handler, lambda behavior: self._wrap_unary(rpc, behavior),
                      lambda behavior: self._wrap_streaming(rpc, behavior))

    def _wrap_unary(self, rpc: str, behavior: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        async def unary(request: Any, context: aio.ServicerContext) -> Any:
            started = time.perf_counter()
            try:
                return await behavior(request, context)
            except Exception as exc:
                if isinstance(exc, aio.AbortError):
                    raise
                await _abort(context, exc)
            finally:
                self._metrics.rpcs.labels(rpc, _code(context)).inc()
                self._metrics.rpc_latency.labels(rpc).observe(time.perf_counter() - started)

        return unary

    def _wrap_streaming(self, rpc: str, behavior: Callable[..., AsyncIterator[Any]]) -> Callable[..., AsyncIterator[Any]]:
        async def streaming(request: Any, context: aio.ServicerContext) -> AsyncIterator[Any]:
            try:
                async for response in behavior(request, context):
                    yield response
            except Exception as exc:
                if isinstance(exc, aio.AbortError):
                    raise
                await _abort(context, exc)
            finally:
                self._metrics.rpcs.labels(rpc, _code(context)).inc()

        return streaming

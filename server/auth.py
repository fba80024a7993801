"""Bearer-token authorization for the Labeler service: one interceptor, one RPC -> role table.

Installed only when tokens are configured (``security.auth_required``); without tokens every
caller may call every RPC. It runs *inside* ``ErrorMappingInterceptor`` and raises
``Unauthenticated`` / ``PermissionDenied``, which that interceptor turns into status codes and
counts. Health and reflection are not Labeler methods and stay open.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import Any

import grpc
from grpc import aio

from pseudostream.server.errors import PermissionDenied, Unauthenticated
from pseudostream.server.interceptors import our_handler, rewrap
from pseudostream.server.limits import CLIENT
from pseudostream.server.security import ANY_TOPIC, Principal, TokenStore

__all__ = ["RPC_ROLES", "AuthInterceptor"]

log = logging.getLogger(__name__)

SERVICE_PREFIX = "/pseudostream.v1.Labeler/"

RPC_ROLES: dict[str, str] = {
    "Label": "producer",
    "Subscribe": "trainer",
    "Ack": "trainer",
    "Feedback": "trainer",
    "GetTopic": "admin",
    "PublishTeacher": "admin",
    "RollbackTeacher": "admin",
    "ProposeTeacher": "admin",
    "TeacherHistory": "admin",
}
# RPCs whose request names a teacher, not a topic: admin on '*' or on a topic that teacher serves.
TEACHER_RPCS = frozenset({"PublishTeacher", "RollbackTeacher", "TeacherHistory"})

UNAUTHENTICATED = "missing or invalid bearer token: send `authorization: Bearer <token>`"


def _bearer(metadata: Sequence[tuple[str, Any]] | None) -> str | None:
    for key, value in metadata or ():
        if key == "authorization" and isinstance(value, str) and value.startswith("Bearer "):
            return value[len("Bearer "):].strip() or None
    return None


class AuthInterceptor(aio.ServerInterceptor):
    """Checks the caller's bearer token, then its role on the topic of every request message."""

    def __init__(self, store: TokenStore, teacher_topics: Mapping[str, Sequence[str]]) -> None:
        self._store = store
        self._teacher_topics = {t: tuple(topics) for t, topics in teacher_topics.items()}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler, rpc = await our_handler(continuation, details)
        if rpc is None:
            return handler
        role = RPC_ROLES.get(rpc, "admin") if details.method.startswith(SERVICE_PREFIX) else "admin"
        principal = self._authenticate(details)
        streaming_in = handler.request_streaming
        return rewrap(
            handler,
            lambda behavior: self._wrap_unary(rpc, role, principal, behavior, streaming_in),
            lambda behavior: self._wrap_streaming(rpc, role, principal, behavior, streaming_in))

    def _authenticate(self, details: grpc.HandlerCallDetails) -> Principal | None:
        token = _bearer(details.invocation_metadata)
        return self._store.authenticate(token) if token is not None else None

    def _check(self, rpc: str, role: str, principal: Principal | None, request: Any) -> None:
        if principal is None:
            log.info("%s refused: no valid bearer token", rpc)
            raise Unauthenticated(UNAUTHENTICATED)
        if rpc in TEACHER_RPCS:
            teacher = getattr(request, "teacher", "")
            scopes = (ANY_TOPIC, *self._teacher_topics.get(teacher, ()))
            if any(principal.allows(role, t) for t in scopes):
                return
            log.info("%s refused: %s lacks %s for teacher %r", rpc, principal.name, role, teacher)
            raise PermissionDenied(
                f"token {principal.name!r} lacks role {role!r} needed for {rpc} on teacher "
                f"{teacher!r} (admin on '*' or on a topic that teacher serves)")
        topic = getattr(request, "topic", "")
        if not principal.allows(role, topic):
            log.info("%s refused: %s lacks %s on topic %r", rpc, principal.name, role, topic)
            raise PermissionDenied(
                f"token {principal.name!r} lacks role {role!r} needed for {rpc} on topic {topic!r}")

    def _requests(self, rpc: str, role: str, principal: Principal | None,
                  requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
        async def checked() -> AsyncIterator[Any]:
            async for request in requests:
                self._check(rpc, role, principal, request)  # every message names its own topic
                yield request

        return checked()

    def _admit(self, rpc: str, role: str, principal: Principal | None, request: Any,
               streaming_in: bool) -> Any:
        """Check the call (each message of a request stream as it is read) and record who calls."""
        if streaming_in:
            if principal is None:
                self._check(rpc, role, None, None)
            request = self._requests(rpc, role, principal, request)
        else:
            self._check(rpc, role, principal, request)
        if principal is not None:
            CLIENT.set(principal.name)
        return request

    def _wrap_unary(self, rpc: str, role: str, principal: Principal | None,
                    behavior: Callable[..., Awaitable[Any]], streaming_in: bool) -> Callable[..., Awaitable[Any]]:
        async def unary(request: Any, context: aio.ServicerContext) -> Any:
            request = self._admit(rpc, role, principal, request, streaming_in)
            return await behavior(request, context)

        return unary

    def _wrap_streaming(self, rpc: str, role: str, principal: Principal | None,
                        behavior: Callable[..., AsyncIterator[Any]], streaming_in: bool) -> Callable[..., AsyncIterator[Any]]:
        async def streaming(request: Any, context: aio.ServicerContext) -> AsyncIterator[Any]:
            request = self._admit(rpc, role, principal, request, streaming_in)
            async for response in behavior(request, context):
                yield response

        return streaming

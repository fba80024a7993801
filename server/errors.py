"""One exception tree for the service; every domain error carries its gRPC status code.

    PseudostreamError                      (INTERNAL)
    ├── InvalidInput                       (INVALID_ARGUMENT)  bad tensor, shape, dtype, batch
    ├── UnknownName                        (NOT_FOUND)         unknown topic, teacher, policy
    ├── ConfigError                        (INVALID_ARGUMENT)  a config value or name is wrong
    ├── Overloaded                         (RESOURCE_EXHAUSTED) queue full; carries retry_after_s
    ├── TeacherUnavailable                 (UNAVAILABLE)       backend down or failing
    ├── ShuttingDown                       (UNAVAILABLE)       the service is draining
    ├── Unauthenticated                    (UNAUTHENTICATED)
    └── PermissionDenied                   (PERMISSION_DENIED)

Foreign errors (ONNX Runtime, sqlite3, tritonclient) are converted at the boundary where they
are raised; the gRPC layer maps this tree to status codes in one place (``server.interceptors``).
"""

from __future__ import annotations

import grpc

__all__ = [
    "PseudostreamError",
    "InvalidInput",
    "UnknownName",
    "ConfigError",
    "Overloaded",
    "TeacherUnavailable",
    "ShuttingDown",
    "Unauthenticated",
    "PermissionDenied",
    "NotReady",
]


class PseudostreamError(Exception):
    """Base of every error the service raises on purpose. ``retry_after_s``, when set, is sent
    to the client as a ``retry-after-ms`` trailer."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL

    def __init__(self, message: str = "", retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class InvalidInput(PseudostreamError):
    """The request is malformed; the message says what was expected."""

    code = grpc.StatusCode.INVALID_ARGUMENT


class UnknownName(PseudostreamError):
    """A topic, teacher or other named thing does not exist; the message lists what does."""

    code = grpc.StatusCode.NOT_FOUND


class ConfigError(PseudostreamError, ValueError):
    """A configuration value is invalid, or a registry name is unknown."""

    code = grpc.StatusCode.INVALID_ARGUMENT


class NotReady(PseudostreamError):
    """The request is valid but the service is not set up for it (e.g. no audit slice)."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class Overloaded(PseudostreamError):
    """A bounded queue is full; retry after ``retry_after_s`` seconds."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED

    def __init__(self, message: str, retry_after_s: float | None = 0.1) -> None:
        super().__init__(message, retry_after_s)


class TeacherUnavailable(PseudostreamError):
    """The teacher backend failed or cannot be reached; retrying later may succeed."""

    code = grpc.StatusCode.UNAVAILABLE


class ShuttingDown(PseudostreamError):
    """The service is stopping: in-flight requests were answered, resend the rest elsewhere."""

    code = grpc.StatusCode.UNAVAILABLE


class Unauthenticated(PseudostreamError):
    """No valid credentials were presented."""

    code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDenied(PseudostreamError):
    """The caller is known but lacks the role for this topic and RPC."""

    code = grpc.StatusCode.PERMISSION_DENIED

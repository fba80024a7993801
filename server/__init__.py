"""The labeling service: config, gRPC server, batching, backends, selection, label log."""

from pseudostream.server.app import LabelingServer, serve_forever
from pseudostream.server.config import ServiceConfig, load_config
from pseudostream.server.core import LabelingCore
from pseudostream.server.errors import (
    ConfigError,
    InvalidInput,
    Overloaded,
    PermissionDenied,
    PseudostreamError,
    TeacherUnavailable,
    Unauthenticated,
    UnknownName,
)

__all__ = [
    "LabelingServer",
    "LabelingCore",
    "ServiceConfig",
    "load_config",
    "serve_forever",
    "PseudostreamError",
    "InvalidInput",
    "UnknownName",
    "ConfigError",
    "Overloaded",
    "TeacherUnavailable",
    "Unauthenticated",
    "PermissionDenied",
]

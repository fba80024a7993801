"""pseudostream.server.labellog: where accepted pseudo-labels wait for trainers.

``LabelLog`` is the interface (semantics in :mod:`pseudostream.server.labellog.base`);
``SqliteLabelLog`` is the embedded implementation, ``RedisLabelLog`` (Redis Streams, shared by
service replicas; needs the ``[redis]`` extra) is imported on first use.
"""

from __future__ import annotations

from typing import Any

from pseudostream.server.labellog.base import LabelBatch, LabelLog, LabelRecord
from pseudostream.server.labellog.sqlite import SqliteLabelLog

__all__ = ["LabelBatch", "LabelLog", "LabelRecord", "SqliteLabelLog", "RedisLabelLog"]


def __getattr__(name: str) -> Any:
    if name == "RedisLabelLog":
        from pseudostream.server.labellog.redis import RedisLabelLog

        return RedisLabelLog
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

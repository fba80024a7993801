"""Build the label log the config names."""

from __future__ import annotations

from pseudostream.server.config import LabelLogConfig
from pseudostream.server.labellog.base import LabelLog

__all__ = ["make_label_log"]


def make_label_log(config: LabelLogConfig) -> LabelLog:
    """The label log ``config.kind`` names (imported on demand so extras stay optional)."""
    if config.kind == "sqlite":
        from pseudostream.server.labellog.sqlite import SqliteLabelLog

        config.path.parent.mkdir(parents=True, exist_ok=True)
        return SqliteLabelLog(config.path, visibility_timeout_s=config.visibility_timeout_s,
                              synchronous=config.synchronous, page_size=config.page_size,
                              max_len=config.max_len,
                              max_age_s=config.max_age_s)
    if config.kind == "redis":
        from pseudostream.server.labellog.redis import RedisLabelLog

        return RedisLabelLog(config.url, prefix=config.prefix, max_len=config.max_len,
                             max_age_s=config.max_age_s,
                             visibility_timeout_s=config.visibility_timeout_s)
    raise ValueError(f"unknown label log kind {config.kind!r}")  # unreachable: config validates

"""Build the label log the config names."""

from __future__ import annotations

from pseudostream.server.config import LabelLogConfig
from pseudostream.server.labellog.base import LabelLog

__all__ = ["make_label_log", "page_size_for", "LARGE_SAMPLE_BYTES"]

# A stored sample this large or larger gets 64 KiB pages by default. Measured (PERFORMANCE.md,
# session K): 12 KiB samples ran 26-29% faster on 64 KiB pages than on 4 KiB; the digits' 256-byte
# samples lost about 5% of throughput and about 10 ms of half-load p99 on 16 KiB pages.
LARGE_SAMPLE_BYTES = 8192


def page_size_for(config: LabelLogConfig, sample_bytes: int) -> int:
    """The SQLite page size of a new file: the config's, or for ``auto`` 65536 where the largest
    sample a topic stores has ``LARGE_SAMPLE_BYTES`` or more (``sample_bytes``), else 4096."""
    if config.page_size != "auto":
        return int(config.page_size)
    return 65536 if sample_bytes >= LARGE_SAMPLE_BYTES else 4096


def make_label_log(config: LabelLogConfig, sample_bytes: int = 0) -> LabelLog:
    """The label log ``config.kind`` names (imported on demand so extras stay optional).
    ``sample_bytes``: the largest sample a topic stores (0 for none), for SQLite's page size."""
    if config.kind == "sqlite":
        from pseudostream.server.labellog.sqlite import SqliteLabelLog

        config.path.parent.mkdir(parents=True, exist_ok=True)
        return SqliteLabelLog(config.path, visibility_timeout_s=config.visibility_timeout_s,
                              synchronous=config.synchronous, page_size=page_size_for(config, sample_bytes),
                              max_len=config.max_len, max_age_s=config.max_age_s)
    if config.kind == "redis":
        from pseudostream.server.labellog.redis import RedisLabelLog

        return RedisLabelLog(config.url, prefix=config.prefix, max_len=config.max_len,
                             max_age_s=config.max_age_s,
                             visibility_timeout_s=config.visibility_timeout_s)
    raise ValueError(f"unknown label log kind {config.kind!r}")  # unreachable: config validates

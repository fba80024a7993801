"""Per-client limits: who is calling (for rate limits and trust), and a token-bucket limiter.

The client is the authenticated token's name when tokens are configured (the auth interceptor
sets ``CLIENT``), else the peer's host.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from contextvars import ContextVar

__all__ = ["CLIENT", "client_of", "RateLimiter"]

CLIENT: ContextVar[str | None] = ContextVar("pseudostream_client", default=None)


def client_of(peer: str | None) -> str:
    """The calling client: the token name set by the auth interceptor, else the peer host."""
    name = CLIENT.get()
    if name is not None:
        return name
    if not peer:
        return "unknown"
    host = peer.split(":", 1)[1] if ":" in peer else peer  # "ipv4:127.0.0.1:5000" -> host:port
    return host.rsplit(":", 1)[0]


class RateLimiter:
    """Token buckets of ``rate`` samples/s and ``burst`` capacity per client (LRU-bounded)."""

    def __init__(self, rate: float, burst: int, max_clients: int = 10_000) -> None:
        self.rate, self.burst, self.max_clients = rate, burst, max_clients
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def take(self, client: str, samples: int) -> float:
        """Take ``samples`` tokens; returns 0 when allowed, else the seconds until they would be."""
        now = time.monotonic()
        tokens, stamp = self._buckets.pop(client, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - stamp) * self.rate)
        wait = 0.0 if tokens >= samples else (samples - tokens) / self.rate
        if wait == 0.0:
            tokens -= samples
        self._buckets[client] = (tokens, now)
        if len(self._buckets) > self.max_clients:
            self._buckets.popitem(last=False)
        return wait

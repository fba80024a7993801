"""A blocking client: the async client run on a private event-loop thread.

Every method forwards to ``AsyncLabelerClient``; async iterators become plain iterators.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any, AsyncIterator, Coroutine, Iterator, TypeVar

from pseudostream.clients.client import AsyncLabelerClient

__all__ = ["LabelerClient", "LoopThread", "new_async_client"]

T = TypeVar("T")


class LoopThread:
    """An event loop running in a daemon thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="pseudostream-client",
                                        daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def iterate(self, agen: AsyncIterator[T]) -> Iterator[T]:
        try:
            while True:
                try:
                    yield self.run(agen.__anext__())
                except StopAsyncIteration:
                    return
        finally:
            if hasattr(agen, "aclose") and self.loop.is_running():
                self.run(agen.aclose())  # type: ignore[attr-defined]

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join()
        self.loop.close()


class LabelerClient:
    """Blocking twin of AsyncLabelerClient, with the same methods and arguments.

    ``label``, ``ack``, ``get_topic`` block and return; ``label_stream``, ``subscribe`` and
    ``subscribe_columns`` return iterators. Use as a context manager or call ``close``.
    """

    _ITERATORS = frozenset({"label_stream", "subscribe", "subscribe_columns"})

    def __init__(self, target: str, **kwargs: Any) -> None:
        self._thread = LoopThread()
        self._async: AsyncLabelerClient = self._thread.run(new_async_client(target, kwargs))

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._async, name)
        if name in self._ITERATORS:
            return lambda *a, **k: self._thread.iterate(method(*a, **k))
        if asyncio.iscoroutinefunction(method):
            return lambda *a, **k: self._thread.run(method(*a, **k))
        return method

    def close(self) -> None:
        self._thread.run(self._async.close())
        self._thread.close()

    def __enter__(self) -> "LabelerClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


async def new_async_client(target: str, kwargs: dict[str, Any]) -> AsyncLabelerClient:
    """An AsyncLabelerClient built on the running loop (grpc.aio channels bind to it)."""
    # grpc.aio channels bind to the loop they are created on: build it on the client's loop.
    return AsyncLabelerClient(target, **kwargs)

"""The serving process freezes what start-up made, so the collector's full passes skip it, and
sets the allocator once from its config."""

from __future__ import annotations

import asyncio
import gc
import os
import signal

from pseudostream.server.app import serve_forever


async def test_serve_forever_freezes_the_objects_start_up_made(make_config):
    frozen: list[int] = []

    def ready(server) -> None:
        frozen.append(gc.get_freeze_count())
        os.kill(os.getpid(), signal.SIGTERM)  # serve_forever's own handler: a graceful stop

    try:
        # keep_freed_memory_mib 0: the allocator of this test process is left as it is
        await asyncio.wait_for(serve_forever(make_config(keep_freed_memory_mib=0), on_ready=ready), timeout=60)
    finally:
        gc.unfreeze()  # back into the collector's care for the rest of the test session
    # modules, the teacher's session, gRPC stubs: tens of thousands of objects
    assert frozen and frozen[0] > 10_000, frozen


async def test_serve_forever_sets_the_allocator_from_the_config(make_config, monkeypatch, caplog):
    """The process-wide allocator setting (server/allocator.py) is made once, from the config;
    a spy stands in for mallopt so this test process keeps glibc's defaults."""
    import pseudostream.server.app as app

    asked: list[int] = []
    monkeypatch.setattr(app, "keep_freed_memory", lambda keep: asked.append(keep) or "spied")
    with caplog.at_level("INFO", logger="pseudostream.server.app"):
        await asyncio.wait_for(serve_forever(make_config(keep_freed_memory_mib=48),
                                             on_ready=lambda s: os.kill(os.getpid(), signal.SIGTERM)), timeout=60)
    gc.unfreeze()
    assert asked == [48 << 20]
    assert "allocator: spied" in caplog.text

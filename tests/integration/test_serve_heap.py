"""The serving process freezes what start-up made, so the collector's full passes skip it."""

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
        await asyncio.wait_for(serve_forever(make_config(), on_ready=ready), timeout=60)
    finally:
        gc.unfreeze()  # back into the collector's care for the rest of the test session
    # modules, the teacher's session, gRPC stubs: tens of thousands of objects
    assert frozen and frozen[0] > 10_000, frozen

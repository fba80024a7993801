"""Fixtures for in-process pipeline tests: a real teacher, log and batcher, no gRPC."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, AsyncIterator, Callable

import pytest

from pseudostream.server.batcher import MicroBatcher
from pseudostream.server.config import ServiceConfig
from pseudostream.server.labellog.base import LabelLog
from pseudostream.server.metrics import ServiceMetrics
from pseudostream.server.pipeline import TeacherPipeline
from pseudostream.server.topic import TopicRuntime


@pytest.fixture
def labeling_pipeline(teacher_dir: Path) -> Callable[..., Any]:
    """``async with labeling_pipeline(backend, log, depth=..) as (batcher, topic)``: topic
    "digits" of teacher "t" (the demo teacher's config; ``topic`` entries merged in) on a started
    ``backend`` and ``log``, a ``TeacherPipeline`` and a started ``MicroBatcher`` of batches of 8
    cut at once, ``depth`` in flight, behind the pipeline's free-worker gate when ``gate``. The
    batcher is stopped on exit; the backend and log stay the caller's."""

    @contextlib.asynccontextmanager
    async def build(backend: Any, log: LabelLog, *, depth: int, gate: bool = False,
                    topic: dict[str, Any] | None = None) -> AsyncIterator[tuple[MicroBatcher, TopicRuntime]]:
        config = ServiceConfig(topics={"digits": {"teacher": "t", **(topic or {})}},
                               teachers={"t": {"model_dir": teacher_dir}})
        runtime = TopicRuntime("digits", config.topics["digits"], backend.metadata, log, 1000)
        pipeline = TeacherPipeline("t", backend, {"digits": runtime}, log, ServiceMetrics(), depth=depth)
        batcher = MicroBatcher(pipeline.process, max_batch=8, max_delay_s=0.0, max_queue_samples=100,
                               depth=depth, gate=pipeline.teacher_free if gate else None)
        batcher.start()
        try:
            yield batcher, runtime
        finally:
            await batcher.stop()

    return build

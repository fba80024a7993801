"""Where one teacher batch's time goes, in-process (no gRPC): ``profile_batches``.

A ``LabelingCore`` is started on the teacher (ONNX Runtime backend, SQLite label log, the topic
as the benchmark configures it) and ``TeacherPipeline.process`` is called on batches of exactly
``batch`` samples, made of requests of ``request`` samples, as the batcher would cut them. Two
views, each over ``batches`` batches after one that warms up:

* **stages** (wall clock, per batch, with no profiler running): the pipeline's own steps are wrapped with timers on the
  instances: inference (the await on ONNX Runtime's worker thread), output adaptation, selection,
  the label-log append with the idempotency entries (one await on SQLite's worker thread), the
  idempotency recall (asked for beside the inference, so it overlaps it and is not part of the
  sum), metrics; beside them, not summed either, the append's transaction as the log's thread
  runs it (the await also waits for the GIL while the event loop finishes the batch); ``other``
  is the rest of ``process`` (calibration, splitting per request, bookkeeping).
  A ``PriorEMAdapter`` runs on every batch's probabilities in front of the policy (what a topic
  with ``adapters: [{name: prior_em}]`` runs) to measure what output adaptation adds. The server's per-request
  codec (decoding the requests, encoding the responses) is timed beside it, outside ``process``.
* **cProfile** of the event-loop thread over as many batches again, after the timed ones: the
  functions with the most own time, per batch. Work on the ONNX Runtime and SQLite threads shows
  up as waiting there. Its cost per Python call is why the stages are timed without it: with
  it on, the light teacher's share of selection, adaptation and append read 23 to 24% against
  21% without (in-process, 100 batches, two runs each way).
"""

from __future__ import annotations

import asyncio
import cProfile
import dataclasses
import functools
import pstats
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable

import numpy as np

from pseudostream.clients.client import make_label_request
from pseudostream.server import codec
from pseudostream.server.adaptation import AdapterInput, PriorEMAdapter
from pseudostream.server.batcher import WorkItem
from pseudostream.server.config import ServiceConfig
from pseudostream.server.core import LabelingCore
from pseudostream.server.pipeline import TeacherPipeline

__all__ = ["profile_batches"]

TOPIC = "bench"
# Asked for when the batch arrives and answered during its inference: not added to the total.
_RECALL = "idempotency recall (overlaps inference)"
# The append's transaction as the log's thread runs it: the append's await above also waits while
# the event loop finishes the batch's own work (which holds the GIL), and is counted in the total.
_TRANSACTION = "log transaction on its thread (inside the append)"
_BESIDE = (_RECALL, _TRANSACTION)


class _Stages:
    """Accumulated wall time per stage name."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)

    def wrap_async(self, owner: Any, attr: str, stage: str) -> None:
        inner = getattr(owner, attr)

        @functools.wraps(inner)
        async def timed(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return await inner(*args, **kwargs)
            finally:
                self.seconds[stage] += time.perf_counter() - t0

        setattr(owner, attr, timed)

    def wrap(self, owner: Any, attr: str, stage: str) -> None:
        inner = getattr(owner, attr)

        @functools.wraps(inner)
        def timed(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return inner(*args, **kwargs)
            finally:
                self.seconds[stage] += time.perf_counter() - t0

        setattr(owner, attr, timed)


def _adapt_before(select: Callable[..., Any], adapter: PriorEMAdapter, stages: _Stages) -> Callable[..., Any]:
    def adapted_select(batch: Any, trusted: Any = None) -> Any:
        t0 = time.perf_counter()
        probs = adapter.adapt(AdapterInput(batch.probs, batch.logits)).astype(np.float32)
        stages.seconds["output adaptation (prior EM)"] += time.perf_counter() - t0
        return select(dataclasses.replace(batch, probs=probs), trusted)

    return adapted_select


async def _one_batch(pipeline: TeacherPipeline, meta: Any, pool: np.ndarray, batch: int, request: int,
                     k: int) -> tuple[float, float]:
    """Batch ``k`` (``batch`` samples from ``pool``, in requests of ``request``) decoded, labeled
    and answered as the server would: (seconds in ``process``, seconds in the codec)."""
    x = np.resize(pool, (batch, *pool.shape[1:])).astype(np.float32)
    requests = [make_label_request(TOPIC, x[i:i + request], [f"{k}-{i + j}" for j in range(len(x[i:i + request]))])
                for i in range(0, batch, request)]
    t0 = time.perf_counter()
    parsed = [codec.decode_label_request(r, meta, 1 << 20) for r in requests]
    items = [WorkItem(TOPIC, p.ids, p.inputs, future=asyncio.get_running_loop().create_future())
             for p in parsed]
    t1 = time.perf_counter()
    await pipeline.process(items)
    t2 = time.perf_counter()
    for p, item in zip(parsed, items):
        codec.encode_label_response("", p.ids, item.future.result())
    t3 = time.perf_counter()
    return t2 - t1, (t1 - t0) + (t3 - t2)


async def _run(config: ServiceConfig, teacher: str, pool: np.ndarray, batch: int, request: int,
               batches: int, profiler: cProfile.Profile) -> dict[str, Any]:
    core = LabelingCore(config)
    await core.start()
    try:
        backend, topic, log = core.backends[teacher], core.topics[TOPIC], core.log
        pipeline = TeacherPipeline(teacher, backend, core.topics, log, core.metrics)
        stages = _Stages()
        stages.wrap_async(pipeline, "_infer", "inference")
        stages.wrap_async(log, "append_and_remember", "label-log append (with idempotency entries)")
        stages.wrap_async(log, "recall", _RECALL)
        stages.wrap(log, "_append_remember_tx", _TRANSACTION)
        stages.wrap(core.metrics, "observe_decisions", "metrics")
        stages.wrap(topic, "select", "selection")
        topic.select = _adapt_before(topic.select, PriorEMAdapter(
            len(topic.classes), source_prior=None), stages)
        meta = backend.metadata
        total = codec_s = 0.0
        # The first batch warms up and is not counted. The stages are timed with the profiler
        # off (its cost per Python call would swell the Python stages next to inference, which
        # runs in C); then the same number of batches run again under cProfile for its listing.
        for k in range(2 * batches + 1):
            if k == 1:
                stages.seconds.clear()
            if k == batches + 1:
                profiler.enable()
            process_s, batch_codec_s = await _one_batch(pipeline, meta, pool, batch, request, k)
            if 1 <= k <= batches:
                total += process_s
                codec_s += batch_codec_s
            if k == batches:
                timed = dict(stages.seconds)
        profiler.disable()
    finally:
        await core.stop()
    per_batch = {name: s / batches * 1000 for name, s in timed.items()}
    per_batch["other (calibration, per-request split, bookkeeping)"] = (
        total / batches * 1000 - sum(v for k, v in per_batch.items() if k not in _BESIDE))
    return {"process_ms": total / batches * 1000, "stages_ms": per_batch,
            "codec_ms": codec_s / batches * 1000}


def profile_batches(teacher: str, teacher_config: dict[str, Any], topic: dict[str, Any], pool: np.ndarray,
                    *, batch: int = 128, request: int = 16, batches: int = 20, top: int = 12) -> dict[str, Any]:
    """Per-batch stage times (ms) at ``batch`` samples, their shares, and cProfile's top functions."""
    profiler = cProfile.Profile()
    with tempfile.TemporaryDirectory() as tmp:
        config = ServiceConfig(port=0, metrics_port=None, teachers={teacher: teacher_config},
                               topics={TOPIC: {"teacher": teacher, **topic}},
                               label_log={"path": str(Path(tmp) / "profile.db")})
        found = asyncio.run(_run(config, teacher, pool, batch, request, batches, profiler))
    process_ms, stages = found["process_ms"], found["stages_ms"]
    overhead = [s for s in stages if s.startswith(("selection", "output adaptation", "label-log append"))]
    stats = pstats.Stats(profiler)
    rows = sorted(stats.stats.items(), key=lambda kv: kv[1][2], reverse=True)[:top]  # by own time
    return {
        "batch": batch, "request_samples": request, "batches": batches,
        "per_batch_ms": round(process_ms, 3),
        "stages_ms": {k: round(v, 3) for k, v in sorted(stages.items(), key=lambda kv: -kv[1])},
        "stages_share": {k: round(v / process_ms, 4) for k, v in stages.items()},
        "selection_adaptation_append_share": round(sum(stages[s] for s in overhead) / process_ms, 4),
        "codec_ms_beside": round(found["codec_ms"], 3),
        "cprofile_top_own_ms_per_batch": [
            {"function": f"{Path(f).name}:{line}:{fn}", "own_ms": round(v[2] / batches * 1000, 3),
             "calls_per_batch": round(v[1] / batches, 1)}
            for (f, line, fn), v in rows],
    }

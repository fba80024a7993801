"""One closed-loop load window on the service, with CPU per thread: what-if runs of one config.

    python -m pseudostream.benchmarks.service_load [--producers 16] [--seconds 6] [--request 64]
        [--in-flight 1]
        [--teacher '{"inference_workers": 2, "intra_op_threads": 1, "pipeline_depth": 3}']
        [--topic '{"idempotency_window_s": 0, "store_samples": false}']

Starts ``pseudostream serve`` on the teacher in ``--model-dir`` (the digits CNN by default; the
bench's ResNet-18 is ``.cache/teachers/resnet18``) with a SQLite log and FixMatch tau 0.95 unless
--topic says otherwise (the JSON mappings are merged into the teacher and topic config), warms up,
then prints the window (samples/s, p50/p99, effective batch, CPU per 1k samples), how busy the
teacher was (``teacher_busy``: seconds in inference over the window, and inference ms per
sample, from the service's metrics) and each service thread's CPU milliseconds per 1k samples
(the event loop by name, the rest by thread id). Producers send digits for a teacher of 1x8x8
inputs, seeded uniform noise otherwise. The full side-by-side comparison with raw ONNX Runtime
is ``bench``; this is for comparing configs and seeing where the time goes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from pseudostream.benchmarks.bench import teacher_inputs
from pseudostream.benchmarks.bench_load import ServiceLoad, proc_stat, scrape, window
from pseudostream.benchmarks.bench_service import TOPIC, ServiceProcess
from pseudostream.models.card import TeacherCard

TEACHER = Path(".cache/teachers/digits-cnn")
# Seconds in inference and samples inferred, summed over the service's batches.
BUSY = ("pseudostream_inference_latency_seconds_sum", "pseudostream_batch_size_sum")


def producer_samples(model_dir: Path) -> np.ndarray:
    """What producers send: the bench's inputs, the digits stream for a 1x8x8 teacher (light),
    else seeded uniform noise of the teacher's shape (heavy)."""
    card = TeacherCard.load(model_dir)
    return teacher_inputs("light" if tuple(card.input_shape) == (1, 8, 8) else "heavy", card)


def thread_cpu(pid: int) -> dict[int, float]:
    """CPU seconds (user + system) of every thread of ``pid``, by thread id."""
    tick = os.sysconf("SC_CLK_TCK")
    out: dict[int, float] = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            fields = proc_stat(f"/proc/{pid}/task/{tid}/stat")
        except FileNotFoundError:  # the thread ended
            continue
        out[int(tid)] = (int(fields[11]) + int(fields[12])) / tick
    return out


async def run(args: argparse.Namespace, work: Path) -> dict:
    pool = producer_samples(args.model_dir)
    x = np.ascontiguousarray(np.resize(pool, (args.request, *pool.shape[1:])))
    teacher = {"backend": "onnxruntime", "model_dir": str(args.model_dir), **json.loads(args.teacher)}
    topic = {"policy": {"name": "fixed", "params": {"tau": 0.95}}, **json.loads(args.topic)}
    metrics = ("pseudostream_batch_size_sum", "pseudostream_batch_size_count")
    with ServiceProcess(work, "teacher", teacher, topic) as svc:
        pid = svc.pid
        async with ServiceLoad(svc.target, TOPIC, x, streams=args.producers) as load:
            callers = args.producers * args.in_flight
            await window(load, callers, args.seconds / 3, [svc.pid], warmup_s=0)  # warm-up
            before, busy_before = thread_cpu(svc.pid), scrape(svc.metrics_url, BUSY)
            started = time.perf_counter()
            result = await window(load, callers, args.seconds, [svc.pid],
                                  (svc.metrics_url, *metrics), warmup_s=0)
            elapsed = time.perf_counter() - started
            after, busy_after = thread_cpu(svc.pid), scrape(svc.metrics_url, BUSY)
    inference_s, batched = (busy_after[m] - busy_before[m] for m in BUSY)
    result["teacher_busy"] = round(inference_s / elapsed, 3)
    result["inference_ms_per_sample"] = round(inference_s / batched * 1000, 4) if batched else None
    samples = result["samples_per_s"] * args.seconds
    result["thread_cpu_ms_per_1k"] = {
        ("event loop" if tid == pid else str(tid)): round((cpu - before.get(tid, 0.0)) / samples * 1e6, 1)
        for tid, cpu in sorted(after.items(), key=lambda kv: before.get(kv[0], 0.0) - kv[1])
        if cpu - before.get(tid, 0.0) > 0.02}
    return result


def measure(argv: list[str] | None = None) -> dict:
    """One window as the command line ``argv`` describes it (see the module docstring)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model-dir", type=Path, default=TEACHER, help="the teacher (make demo builds it here)")
    p.add_argument("--producers", type=int, default=16)
    p.add_argument("--seconds", type=float, default=6.0)
    p.add_argument("--request", type=int, default=64, help="samples per request")
    p.add_argument("--in-flight", type=int, default=1,
                   help="requests each producer keeps in flight on its stream (label_stream pipelining)")
    p.add_argument("--teacher", default="{}", help="JSON merged into the teacher config")
    p.add_argument("--topic", default="{}", help="JSON merged into the topic config")
    args = p.parse_args(argv)
    if args.in_flight < 1:
        p.error(f"--in-flight must be 1 or more, got {args.in_flight}")
    with tempfile.TemporaryDirectory(prefix="service-load-") as tmp:
        return asyncio.run(run(args, Path(tmp)))


def main(argv: list[str] | None = None) -> dict:
    result = measure(argv)
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()

"""Soak: producers at twice the sustainable rate plus trainers, for a bounded time.

1. Measures the sustainable rate S: producers send back to back (closed loop) for a few seconds.
2. Open loop: producers send requests at 2 x S in total, whatever the answers, while trainers
   subscribe and ack. The service sheds what it cannot queue with RESOURCE_EXHAUSTED (and a
   retry-after-ms trailer) instead of growing without bound.
Reports accepted/s, shed/s, p99 latency of answered requests, and the service's RSS at the start
and end (memory must stay bounded: growth under 10% over 10 minutes with --seconds 600).
Everything runs on loopback, bounded in time.

    python benchmarks/soak.py [--seconds 60] [--producers 8] [--trainers 2] [--out soak-report.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import yaml

from pseudostream.clients.client import AsyncLabelerClient
from pseudostream.models.demo_teacher import build_demo_teacher
from pseudostream.models.digits import load_digits_splits

REQUEST = 32


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def start(work: Path, teacher: Path) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = work / "soak.yaml"
    cfg.write_text(yaml.safe_dump({
        "port": port, "metrics_port": None,
        "teachers": {"digits-cnn": {"model_dir": str(teacher), "max_batch": 128, "max_delay_ms": 5,
                                    "intra_op_threads": 1, "max_queue_samples": 2048}},
        "topics": {"digits": {"teacher": "digits-cnn", "idempotency_window_s": 60}},
        "label_log": {"path": str(work / "labels.db"), "max_len": 200000}}))
    proc = subprocess.Popen([sys.executable, "-m", "pseudostream.clients.cli", "serve", "-c", str(cfg)],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    if "serving on" not in proc.stdout.readline():
        raise RuntimeError("service did not start")
    return proc, f"127.0.0.1:{port}"


async def closed_loop(target: str, x: np.ndarray, producers: int, seconds: float) -> float:
    done = 0
    stop = time.perf_counter() + seconds

    async def one(k: int) -> None:
        nonlocal done
        async with AsyncLabelerClient(target, retries=0) as c:
            i = 0
            while time.perf_counter() < stop:
                await c.label("digits", x, ids=[f"c{k}-{i}-{j}" for j in range(len(x))])
                done += len(x)
                i += 1

    t0 = time.perf_counter()
    await asyncio.gather(*[one(k) for k in range(producers)])
    return done / (time.perf_counter() - t0)


async def open_loop(target: str, x: np.ndarray, producers: int, trainers: int, rate: float,
                    seconds: float) -> dict[str, Any]:
    stats = {"accepted": 0, "answered": 0, "shed": 0, "unavailable": 0, "other": 0}
    latencies: list[float] = []
    stop = time.perf_counter() + seconds
    interval = producers * len(x) / rate  # seconds between requests of one producer

    async def producer(k: int) -> None:
        async with AsyncLabelerClient(target, retries=0) as c:
            pending: set[asyncio.Task] = set()
            i = 0
            while time.perf_counter() < stop:
                pending.add(asyncio.create_task(send(c, k, i)))
                pending = {t for t in pending if not t.done()}
                i += 1
                await asyncio.sleep(interval)
            await asyncio.gather(*pending)

    async def send(c: AsyncLabelerClient, k: int, i: int) -> None:
        t0 = time.perf_counter()
        try:
            r = await c.label("digits", x, ids=[f"o{k}-{i}-{j}" for j in range(len(x))], timeout=30)
        except grpc.aio.AioRpcError as exc:
            key = {grpc.StatusCode.RESOURCE_EXHAUSTED: "shed",
                   grpc.StatusCode.UNAVAILABLE: "unavailable"}.get(exc.code(), "other")
            stats[key] += len(x)
            return
        latencies.append(time.perf_counter() - t0)
        stats["answered"] += len(r)
        stats["accepted"] += int(r.accepted.sum())

    async def trainer(k: int) -> None:
        async with AsyncLabelerClient(target) as c:
            async for records in c.subscribe("digits", "soak", f"t{k}", include_samples=False):
                await c.ack("digits", "soak", [r.offset for r in records])
                if time.perf_counter() > stop:
                    return

    t0 = time.perf_counter()
    train = [asyncio.create_task(trainer(k)) for k in range(trainers)]
    await asyncio.gather(*[producer(k) for k in range(producers)])
    elapsed = time.perf_counter() - t0
    for t in train:
        t.cancel()
    await asyncio.gather(*train, return_exceptions=True)
    ms = np.array(latencies) * 1000 if latencies else np.zeros(1)
    return {**{f"{k}_per_s": round(v / elapsed, 1) for k, v in stats.items()},
            "p50_ms": round(float(np.percentile(ms, 50)), 1), "p99_ms": round(float(np.percentile(ms, 99)), 1),
            "seconds": round(elapsed, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--producers", type=int, default=8)
    parser.add_argument("--trainers", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("soak-report.json"))
    args = parser.parse_args()
    teacher = Path(".cache/teachers/digits-cnn")
    build_demo_teacher(teacher)
    x = np.ascontiguousarray(load_digits_splits(0).stream_x[:REQUEST])
    with tempfile.TemporaryDirectory() as tmp:
        proc, target = start(Path(tmp), teacher)
        try:
            sustainable = asyncio.run(closed_loop(target, x, args.producers, 5.0))
            rss_start = rss_mb(proc.pid)
            result = asyncio.run(open_loop(target, x, args.producers, args.trainers,
                                           2 * sustainable, args.seconds))
            rss_end = rss_mb(proc.pid)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)
    report = {"sustainable_samples_per_s": round(sustainable, 1), "offered_samples_per_s": round(2 * sustainable, 1),
              **result, "rss_start_mb": round(rss_start, 1), "rss_end_mb": round(rss_end, 1),
              "rss_growth": round(rss_end / rss_start - 1, 4),
              "setup": {"producers": args.producers, "trainers": args.trainers, "request_samples": REQUEST,
                        "max_queue_samples": 2048}}
    print(json.dumps(report, indent=2))
    args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()

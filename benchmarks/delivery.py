"""Label delivery end to end: SQLite vs Redis, one service vs two replicas on one Redis.

Producers stream the digits (accept-all policy, so every sample becomes a label) while two
trainers of one group subscribe, ack each batch and time each label from its append to its
arrival. Services run as separate processes (`pseudostream serve`), Redis as a real
`redis-server` on a free loopback port; all of it on this machine, bounded in size and time.

    python benchmarks/delivery.py [--samples 8000] [--out delivery-report.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import yaml

from pseudostream.clients.client import AsyncLabelerClient, make_label_request
from pseudostream.models.demo_teacher import build_demo_teacher
from pseudostream.models.digits import load_digits_splits

PRODUCERS, TRAINERS, REQUEST = 4, 2, 64


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def redis_server(workdir: Path) -> Iterator[str]:
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server not installed: apt-get install redis-server")
    port = free_port()
    proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--dir", str(workdir)], stdout=subprocess.DEVNULL)
    try:
        for _ in range(100):
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@contextmanager
def service(workdir: Path, teacher_dir: Path, label_log: dict[str, Any], name: str) -> Iterator[str]:
    port = free_port()
    config = workdir / f"{name}.yaml"
    config.write_text(yaml.safe_dump({
        "port": port, "metrics_port": None, "replica_id": name,
        "teachers": {"digits-cnn": {"model_dir": str(teacher_dir), "max_delay_ms": 2,
                                    "intra_op_threads": 1}},
        "topics": {"digits": {"teacher": "digits-cnn", "policy": {"name": "fixed", "params": {"tau": 0.0}}}},
        "label_log": label_log}))
    proc = subprocess.Popen([sys.executable, "-m", "pseudostream.clients.cli", "serve", "--config",
                             str(config)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        if "serving on" not in proc.stdout.readline():
            raise RuntimeError(f"service {name} did not start")
        yield f"127.0.0.1:{port}"
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)


async def produce(target: str, x: np.ndarray, prefix: str) -> int:
    requests = (make_label_request("digits", x[i:i + REQUEST], [f"{prefix}-{i + k}" for k in range(len(x[i:i + REQUEST]))])
                for i in range(0, len(x), REQUEST))
    accepted = 0
    async with AsyncLabelerClient(target) as client:
        async for r in client.label_stream(requests):
            accepted += int(r.accepted.sum())
    return accepted


async def train(target: str, consumer: str, lags: list[float], done: asyncio.Event) -> None:
    async with AsyncLabelerClient(target) as client:
        async def consume() -> None:
            async for records in client.subscribe("digits", "trainers", consumer, max_batch=256,
                                                  include_samples=True):
                now = time.time()
                lags.extend(now - r.created_at for r in records)
                await client.ack("digits", "trainers", [r.offset for r in records], consumer)

        task = asyncio.create_task(consume())
        await done.wait()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def run(targets: list[str], x: np.ndarray) -> dict[str, float]:
    lags: list[float] = []
    done = asyncio.Event()
    trainers = [asyncio.create_task(train(targets[k % len(targets)], f"t{k}", lags, done))
                for k in range(TRAINERS)]
    await asyncio.sleep(0.5)  # subscriptions open
    started = time.perf_counter()
    shards = np.array_split(x, PRODUCERS)
    accepted = sum(await asyncio.gather(*[produce(targets[k % len(targets)], shards[k], f"p{k}-{time.time_ns()}")
                                          for k in range(PRODUCERS)]))
    deadline = time.perf_counter() + 60
    while len(lags) < accepted and time.perf_counter() < deadline:
        await asyncio.sleep(0.01)
    elapsed = time.perf_counter() - started
    done.set()
    await asyncio.gather(*trainers)
    lag_ms = np.array(lags) * 1000
    return {"labels": accepted, "delivered": len(lags), "seconds": round(elapsed, 3),
            "labels_per_s": round(len(lags) / elapsed, 1),
            "lag_p50_ms": round(float(np.percentile(lag_ms, 50)), 2),
            "lag_p99_ms": round(float(np.percentile(lag_ms, 99)), 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=8000)
    parser.add_argument("--out", type=Path, default=Path("delivery-report.json"))
    parser.add_argument("--teacher-dir", type=Path, default=Path(".cache/teachers/digits-cnn"))
    args = parser.parse_args()
    build_demo_teacher(args.teacher_dir)
    stream = load_digits_splits(seed=0).stream_x
    x = np.ascontiguousarray(np.resize(stream, (args.samples, *stream.shape[1:])))
    report: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
        work = Path(tmp)
        url = stack.enter_context(redis_server(work))
        setups = {
            "sqlite": [{"kind": "sqlite", "path": str(work / "labels.db")}],
            "redis": [{"kind": "redis", "url": url, "prefix": "bench1"}],
            "redis_2_replicas": [{"kind": "redis", "url": url, "prefix": "bench2"}] * 2,
        }
        for name, logs in setups.items():
            with ExitStack() as services:
                targets = [services.enter_context(service(work, args.teacher_dir, log, f"{name}-{k}"))
                           for k, log in enumerate(logs)]
                report[name] = asyncio.run(run(targets, x))
            print(f"{name:<17} {report[name]['labels_per_s']:>9.0f} labels/s   "
                  f"lag p50 {report[name]['lag_p50_ms']:>7.1f} ms   p99 {report[name]['lag_p99_ms']:>7.1f} ms"
                  f"   ({report[name]['delivered']}/{report[name]['labels']} delivered)")
    report["setup"] = {"samples": args.samples, "producers": PRODUCERS, "trainers": TRAINERS,
                       "request_samples": REQUEST, "cores": 2}
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

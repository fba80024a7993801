"""Raw Triton vs the labeling service over Triton, side by side in one run.

For each teacher (the digits CNN, light; a ResNet-18 on 3x32x32, heavy) a local Triton serves
the model (the bundled CPU tritonserver, python backend running ONNX Runtime). At concurrency N:
(raw) N tritonclient.grpc.aio workers each send requests of R samples back to back; (service)
N producers each stream requests of R samples to a `pseudostream serve` process whose teacher is
that Triton, one request in flight each. Prints samples/s, p50/p99 latency and service/raw.

    python benchmarks/triton_bench.py [--concurrency 4] [--seconds 6] [--out triton-report.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Awaitable, Callable

import numpy as np
import tritonclient.grpc.aio as tc
import yaml

from pseudostream.clients.client import AsyncLabelerClient, make_label_request
from pseudostream.models.card import TeacherCard
from pseudostream.models.demo_teacher import build_demo_teacher
from pseudostream.models.triton_repo import write_model_repository
from pseudostream.models.zoo import build_resnet18_teacher
from pseudostream.server.backends.triton_server import LocalTritonServer


async def measure(n: int, seconds: float, call: Callable[[int], Awaitable[int]]) -> dict[str, float]:
    """Run ``call(worker)`` back to back in ``n`` workers for ``seconds``; samples/s and latency."""
    latencies: list[float] = []
    samples = 0
    stop = time.perf_counter() + seconds

    async def worker(k: int) -> None:
        nonlocal samples
        while time.perf_counter() < stop:
            t0 = time.perf_counter()
            got = await call(k)  # not "samples += await ...": that reads samples before the await
            samples += got
            latencies.append(time.perf_counter() - t0)

    started = time.perf_counter()
    await asyncio.gather(*[worker(k) for k in range(n)])
    elapsed = time.perf_counter() - started
    ms = np.array(latencies) * 1000
    return {"samples_per_s": round(samples / elapsed, 1), "p50_ms": round(float(np.percentile(ms, 50)), 2),
            "p99_ms": round(float(np.percentile(ms, 99)), 2), "requests": len(latencies)}


async def raw(url: str, model: str, x: np.ndarray, n: int, seconds: float) -> dict[str, float]:
    client = tc.InferenceServerClient(url)

    async def call(k: int) -> int:
        inp = tc.InferInput("input", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        out = await client.infer(model, [inp], outputs=[tc.InferRequestedOutput("logits"),
                                                        tc.InferRequestedOutput("features")])
        return out.as_numpy("logits").shape[0]

    await measure(n, 1.0, call)  # warm-up
    try:
        return await measure(n, seconds, call)
    finally:
        await client.close()


async def service(target: str, x: np.ndarray, n: int, seconds: float) -> dict[str, float]:
    queues = [asyncio.Queue(maxsize=1) for _ in range(n)]
    counter = iter(range(10**9))
    clients = [AsyncLabelerClient(target) for _ in range(n)]
    streams = []

    async def requests(q: asyncio.Queue):
        while True:
            item = await q.get()
            if item is None:
                return
            yield item

    for k in range(n):
        streams.append(clients[k].label_stream(requests(queues[k])).__aiter__())

    async def call(k: int) -> int:
        i = next(counter)
        await queues[k].put(make_label_request("bench", x, [f"{i}-{j}" for j in range(len(x))]))
        return len(await streams[k].__anext__())

    await measure(n, 1.0, call)
    try:
        return await measure(n, seconds, call)
    finally:
        for k in range(n):
            await queues[k].put(None)
            await clients[k].close()


def start_service(work: Path, triton: LocalTritonServer, model: str, repo: Path,
                  args_delay_ms: float) -> tuple[subprocess.Popen, str]:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = work / f"{model}.yaml"
    config.write_text(yaml.safe_dump({
        "port": port, "metrics_port": None,
        "teachers": {model: {"backend": "triton", "max_batch": 128, "max_delay_ms": args_delay_ms,
                             "triton": {"url": triton.grpc_url, "model": model, "repository": str(repo),
                                        "platform": "python"}}},
        "topics": {"bench": {"teacher": model, "idempotency_window_s": 0}},
        "label_log": {"path": str(work / f"{model}.db")}}))
    proc = subprocess.Popen([sys.executable, "-m", "pseudostream.clients.cli", "serve", "-c", str(config)],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    if "serving on" not in proc.stdout.readline():
        raise RuntimeError("the service did not start")
    return proc, f"127.0.0.1:{port}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--request", type=int, default=16, help="samples per request")
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--max-delay-ms", type=float, default=2.0, help="the service batcher's")
    parser.add_argument("--out", type=Path, default=Path("triton-report.json"))
    args = parser.parse_args()
    teachers = {"light": Path(".cache/teachers/digits-cnn"), "heavy": Path(".cache/teachers/resnet18")}
    build_demo_teacher(teachers["light"])
    build_resnet18_teacher(teachers["heavy"])
    report: dict[str, Any] = {"setup": {"concurrency": args.concurrency, "request_samples": args.request,
                                        "seconds": args.seconds, "backend": "bundled tritonserver 2.51, python backend (ORT), CPU"}}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for kind, teacher_dir in teachers.items():
            card = TeacherCard.load(teacher_dir)
            repo = work / f"repo-{kind}"
            write_model_repository(repo, teacher_dir, name=card.name, platform="python")
            x = np.random.default_rng(0).random((args.request, *card.input_shape), dtype=np.float32)
            with LocalTritonServer(repo) as triton:
                proc, target = start_service(work, triton, card.name, repo, args.max_delay_ms)
                try:
                    r = asyncio.run(raw(triton.grpc_url, card.name, x, args.concurrency, args.seconds))
                    s = asyncio.run(service(target, x, args.concurrency, args.seconds))
                finally:
                    proc.send_signal(signal.SIGTERM)
                    proc.wait(timeout=30)
            report[kind] = {"teacher": card.name, "raw_triton": r, "service": s,
                            "service_vs_triton": round(s["samples_per_s"] / r["samples_per_s"], 3)}
            print(f"{kind:<6} {card.name:<11} raw {r['samples_per_s']:>8.0f}/s p50 {r['p50_ms']:>7.1f} p99 {r['p99_ms']:>7.1f} ms | "
                  f"service {s['samples_per_s']:>8.0f}/s p50 {s['p50_ms']:>7.1f} p99 {s['p99_ms']:>7.1f} ms | "
                  f"ratio {report[kind]['service_vs_triton']:.2f}")
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

"""Load and accounting for ``bench.py``: producers, process-tree CPU, Prometheus scrapes.

``ServiceLoad`` keeps N Label streams open and lets any number of callers share them (responses
come back in request order, so each stream hands them to its callers first in, first out);
``TritonLoad`` is the same shape over raw ``tritonclient`` (imported only when used: the
benchmark runs without the [triton] extra). Both are driven closed loop by ``window`` (callers
back to back, with the CPU seconds of the processes involved and the effective batch size read
from metrics) or by ``open_loop`` (a fixed request rate, whatever the answers do).
"""

from __future__ import annotations

import asyncio
import itertools
import time
import urllib.request
from pathlib import Path
from typing import Any, Awaitable, Callable, Sequence

import numpy as np
import psutil

from pseudostream.clients.client import AsyncLabelerClient, make_label_request

__all__ = ["ServiceLoad", "TritonLoad", "open_loop", "window", "cpu_seconds", "proc_stat", "scrape", "percentiles"]


def cpu_seconds(pids: Sequence[int]) -> float:
    """User + system CPU seconds of the processes ``pids`` and all their descendants."""
    total = 0.0
    for pid in pids:
        try:
            root = psutil.Process(pid)
            for p in [root, *root.children(recursive=True)]:
                t = p.cpu_times()
                total += t.user + t.system
        except psutil.NoSuchProcess:
            continue
    return total


def proc_stat(path: str | Path) -> list[str]:
    """The fields of a process's or thread's /proc stat file after its command name, which may
    hold spaces (proc(5)): ``[7]`` minor page faults, ``[11]`` and ``[12]`` user and system
    CPU in clock ticks (``os.sysconf("SC_CLK_TCK")`` a second)."""
    text = Path(path).read_text()
    return text[text.rindex(")") + 2:].split()


def scrape(url: str, names: Sequence[str]) -> dict[str, float]:
    """Sum of every sample of each metric in ``names`` at Prometheus endpoint ``url``."""
    text = urllib.request.urlopen(url, timeout=5).read().decode()
    sums = dict.fromkeys(names, 0.0)
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        name = line.split("{", 1)[0].split(" ", 1)[0]
        if name in sums:
            sums[name] += float(line.rsplit(" ", 1)[1])
    return sums


def percentiles(seconds: Sequence[float]) -> dict[str, float]:
    """p50 and p99 in milliseconds."""
    ms = np.asarray(seconds, dtype=np.float64) * 1000
    if ms.size == 0:
        return {"p50_ms": float("nan"), "p99_ms": float("nan")}
    return {"p50_ms": round(float(np.percentile(ms, 50)), 2), "p99_ms": round(float(np.percentile(ms, 99)), 2)}


class ServiceLoad:
    """``streams`` Label streams to ``target``; ``call(k)`` sends one request on stream k % streams
    and returns the number of decisions that came back."""

    def __init__(self, target: str, topic: str, x: np.ndarray, streams: int) -> None:
        self.topic, self.x, self.streams = topic, x, streams
        self._clients = [AsyncLabelerClient(target, retries=0) for _ in range(streams)]
        self._outbox: list[asyncio.Queue] = [asyncio.Queue() for _ in range(streams)]
        self._waiting: list[asyncio.Queue] = [asyncio.Queue() for _ in range(streams)]
        self._readers: list[asyncio.Task] = []

    async def __aenter__(self) -> "ServiceLoad":
        for k, client in enumerate(self._clients):
            self._readers.append(asyncio.create_task(self._read(k, client)))
        return self

    async def _requests(self, k: int):
        while (request := await self._outbox[k].get()) is not None:
            yield request

    async def _read(self, k: int, client: AsyncLabelerClient) -> None:
        try:
            async for result in client.label_stream(self._requests(k)):
                self._waiting[k].get_nowait().set_result(len(result))
        except Exception as exc:  # the stream failed: every caller waiting on it hears it
            while not self._waiting[k].empty():
                self._waiting[k].get_nowait().set_exception(exc)

    async def call(self, k: int) -> int:
        k %= self.streams
        answer = asyncio.get_running_loop().create_future()
        self._waiting[k].put_nowait(answer)
        # The client's own ids, fresh for every request in every load: ids the service has
        # decided before would be idempotent replays, not labeling.
        self._outbox[k].put_nowait(make_label_request(self.topic, self.x))
        return await answer

    async def __aexit__(self, *exc: object) -> None:
        for q in self._outbox:
            q.put_nowait(None)
        await asyncio.wait(self._readers, timeout=30)
        for client in self._clients:
            await client.close()


class TritonLoad:
    """Raw ``tritonclient.grpc.aio`` inference of ``x`` on ``model``; ``call(k)`` as in ServiceLoad."""

    def __init__(self, url: str, model: str, x: np.ndarray, input_name: str = "input") -> None:
        import tritonclient.grpc.aio as tc

        self._tc = tc
        self._client = tc.InferenceServerClient(url)
        self.model, self.x, self.input_name = model, x, input_name

    async def __aenter__(self) -> "TritonLoad":
        return self

    async def call(self, k: int) -> int:
        tc = self._tc
        inp = tc.InferInput(self.input_name, list(self.x.shape), "FP32")
        inp.set_data_from_numpy(self.x)
        outputs = [tc.InferRequestedOutput("logits"), tc.InferRequestedOutput("features")]
        # As the service's Triton backend calls it (TritonSettings.timeout_s: 10).
        out = await self._client.infer(self.model, [inp], outputs=outputs, client_timeout=10.0)
        return out.as_numpy("logits").shape[0]

    async def __aexit__(self, *exc: object) -> None:
        await self._client.close()


async def open_loop(call: Callable[[int], Awaitable[int]], rate_rps: float, seconds: float,
                    streams: int) -> dict[str, float]:
    """Send requests at ``rate_rps`` (evenly spaced, round robin over ``streams``) for ``seconds``
    whatever the answers do; samples/s answered and latency of every request."""
    latencies: list[float] = []
    answered = 0

    async def one(k: int) -> None:
        nonlocal answered
        t0 = time.perf_counter()
        got = await call(k)  # not "answered += await ...": that reads answered before the await
        answered += got
        latencies.append(time.perf_counter() - t0)

    tasks = []
    started = time.perf_counter()
    for k in itertools.count():
        due = started + k / rate_rps
        if due - started >= seconds:
            break
        await asyncio.sleep(max(0.0, due - time.perf_counter()))
        tasks.append(asyncio.create_task(one(k % streams)))
    await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - started
    return {"offered_rps": rate_rps, "samples_per_s": round(answered / elapsed, 1),
            "requests": len(latencies), **percentiles(latencies)}


async def _closed_loop(call: Callable[[int], Awaitable[int]], workers: int,
                       seconds: float) -> tuple[int, list[float]]:
    """(samples answered, latency of each call) of ``workers`` calling back to back."""
    latencies: list[float] = []
    answered = 0
    stop = time.perf_counter() + seconds

    async def worker(k: int) -> None:
        nonlocal answered
        while (t0 := time.perf_counter()) < stop:
            got = await call(k)  # not "answered += await ...": that loses other workers' counts
            answered += got
            latencies.append(time.perf_counter() - t0)

    await asyncio.gather(*(worker(k) for k in range(workers)))
    return answered, latencies


async def window(load: Any, workers: int, seconds: float, pids: Sequence[int],
                 batch_metrics: tuple[str, str, str] | None = None, warmup_s: float = 1.0) -> dict[str, Any]:
    """Closed loop: ``workers`` callers of ``load.call`` back to back for ``seconds`` (after a
    warm-up): samples/s, p50/p99 latency, CPU seconds per 1k samples of ``pids`` (their trees)
    and of this process, and the effective batch size from ``batch_metrics`` = (url, samples
    metric, batches metric)."""
    await _closed_loop(load.call, workers, warmup_s)
    me = psutil.Process()
    cpu0, mine0 = cpu_seconds(pids), me.cpu_times()
    before = scrape(batch_metrics[0], batch_metrics[1:]) if batch_metrics else None
    started = time.perf_counter()
    samples, latencies = await _closed_loop(load.call, workers, seconds)
    elapsed = time.perf_counter() - started
    cpu1, mine1 = cpu_seconds(pids), me.cpu_times()
    result: dict[str, Any] = {"samples_per_s": round(samples / elapsed, 1), "requests": len(latencies),
                              **percentiles(latencies)}
    if batch_metrics:
        after = scrape(batch_metrics[0], batch_metrics[1:])
        n, b = (after[m] - before[m] for m in batch_metrics[1:])
        result["effective_batch"] = round(n / b, 1) if b else None
    server = cpu1 - cpu0
    client = (mine1.user + mine1.system) - (mine0.user + mine0.system)
    result["server_cpu_s_per_1k"] = round(server / samples * 1000, 4) if samples else None
    result["cpu_s_per_1k"] = round((server + client) / samples * 1000, 4) if samples else None
    return result

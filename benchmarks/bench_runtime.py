"""Raw runtimes in the benchmark's own process: ONNX Runtime (fp32, int8) and torch bf16.

``run_for`` calls one runtime back to back on one batch and reports samples/s, latency per
batch and CPU seconds per 1k samples (this process, every thread). ``ort_sweep`` finds ONNX
Runtime's best batch size (the limit the service is compared with); ``interleaved`` measures
several runtimes in alternating rounds. Both alternate what they compare, round after round, so
that a neighbour's load on a shared machine hits every candidate alike, and keep each one's
median round.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import onnxruntime as ort
import psutil

from pseudostream.benchmarks.bench_load import percentiles

__all__ = ["ort_runner", "run_for", "ort_sweep", "interleaved"]

Runner = Callable[[np.ndarray], Any]


class _Workers:
    """``run(x)`` on one session, meant for ``workers`` threads at once: ``run_for`` starts that
    many, each calling it back to back on its own batch (the service's ``inference_workers``)."""

    def __init__(self, run: Runner, workers: int) -> None:
        self.run, self.workers = run, workers

    def __call__(self, x: np.ndarray) -> Any:
        return self.run(x)


def ort_runner(model: str | Path, threads: int, input_name: str = "input", workers: int = 1,
               providers: Sequence[str] = ("CPUExecutionProvider",)) -> Runner:
    """``run(x)`` on an ONNX Runtime session on ``providers`` (the CPU's by default) with
    ``threads`` intra-op threads (as the service's embedded backend builds it, except that idle
    intra-op threads spin: ONNX Runtime's default, its fastest setting when nothing else needs
    the cores). With ``workers`` > 1, ``run_for`` runs it on that many threads at once through
    the one session, each running ``x`` as a batch of its own, none waiting for another (the
    service's ``inference_workers``)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(model), options, providers=list(providers))
    if session.get_providers()[0] != providers[0]:
        raise RuntimeError(f"ONNX Runtime runs {model} on {session.get_providers()}, not {providers[0]}")
    outputs = [o.name for o in session.get_outputs()]

    def run(x: np.ndarray) -> Any:
        return session.run(outputs, {input_name: x})

    return run if workers == 1 else _Workers(run, workers)


def run_for(run: Runner, x: np.ndarray, seconds: float) -> dict[str, float]:
    """Call ``run(x)`` back to back for ``seconds``, after warming up for a tenth of that (at
    least one call: torch and ONNX Runtime both set up kernels on a shape's first calls). A
    runner of several workers (``ort_runner(workers=k)``) is called so on k threads at once:
    samples/s counts all of them, latency is per call, ``batch`` is per worker."""
    workers = getattr(run, "workers", 1)
    warm_until = time.perf_counter() + seconds / 10
    run(x)
    while time.perf_counter() < warm_until:
        run(x)
    me = psutil.Process()
    cpu0 = me.cpu_times()
    latencies: list[float] = []
    started = time.perf_counter()

    def loop() -> None:
        mine = []
        while (t0 := time.perf_counter()) - started < seconds:
            run(x)
            mine.append(time.perf_counter() - t0)
        latencies.extend(mine)

    if workers == 1:
        loop()
    else:
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="raw-ort") as pool:
            list(pool.map(lambda _: loop(), range(workers)))
    elapsed = time.perf_counter() - started
    cpu1 = me.cpu_times()
    samples = len(latencies) * len(x)
    cpu = (cpu1.user + cpu1.system) - (cpu0.user + cpu0.system)
    return {"batch": len(x), **({"workers": workers} if workers > 1 else {}),
            "samples_per_s": round(samples / elapsed, 1), **percentiles(latencies),
            "cpu_s_per_1k": round(cpu / samples * 1000, 4)}


def _median_round(rounds: list[dict[str, float]]) -> dict[str, Any]:
    rates = [r["samples_per_s"] for r in rounds]
    return {**rounds[int(np.argsort(rates)[len(rates) // 2])], "rounds": rates}


def ort_sweep(run: Runner, pool: np.ndarray, batches: Sequence[int], seconds: float,
              rounds: int = 1) -> dict[str, Any]:
    """``run_for`` at each batch size (rows of ``pool``, repeated if needed), alternating for
    ``rounds`` rounds; each size's median round, and the best size by that median."""
    inputs = {b: np.ascontiguousarray(np.resize(pool, (b, *pool.shape[1:]))) for b in batches}
    results: dict[int, list[dict[str, float]]] = {b: [] for b in batches}
    for _ in range(rounds):
        for b in batches:
            results[b].append(run_for(run, inputs[b], seconds))
    by_batch = {b: _median_round(r) for b, r in results.items()}
    best = max(by_batch, key=lambda b: by_batch[b]["samples_per_s"])
    return {"best_batch": best, "best": by_batch[best], "by_batch": by_batch}


def interleaved(runners: Mapping[str, Runner], x: np.ndarray, rounds: int,
                seconds: float) -> dict[str, Any]:
    """Alternate ``runners`` for ``rounds`` rounds of ``seconds`` each; per runner the median
    round, and ``vs_first``: the median of its per-round ratio to the first runner."""
    names = list(runners)
    results: dict[str, list[dict[str, float]]] = {n: [] for n in names}
    for _ in range(rounds):
        for n in names:
            results[n].append(run_for(runners[n], x, seconds))
    out: dict[str, Any] = {}
    for n in names:
        ratios = [r["samples_per_s"] / f["samples_per_s"] for r, f in zip(results[n], results[names[0]])]
        out[n] = {**_median_round(results[n]), "vs_first": round(float(np.median(ratios)), 3)}
    return out

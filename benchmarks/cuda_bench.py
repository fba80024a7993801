"""The service against raw ONNX Runtime on CUDA, side by side, for both bench teachers.

    python -m pseudostream.benchmarks.cuda_bench [--seconds 6] [--producers 16] [--out cuda-report.json]

Needs onnxruntime-gpu in place of onnxruntime (``make gpu``) and a GPU; elsewhere it says so and exits 0.
Per teacher (the digits CNN and the random ResNet-18 of ``bench``): raw ONNX Runtime on the
CUDA provider at batches of 256 and 1024 (numpy in and out, as the service calls it); then, per
teacher variant below, the embedded backend in this process, fed batches of eight sizes from 64
to 1000 in turn (sizes in different buckets: what the micro-batcher cuts), and the service end
to end over gRPC loopback with ``--producers`` producers; then raw again. Each window's ratio is
against the mean of the two raw bests.

The variants are batch buckets (``server/backends/buckets.py``) on and off, crossed with cuDNN's
convolution algorithm search, exhaustive (ONNX Runtime's default: every algorithm timed the first
time a shape is seen) and heuristic (cuDNN's guess, nothing timed).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from pseudostream.benchmarks import service_load
from pseudostream.benchmarks.bench import TEACHERS, teacher_inputs
from pseudostream.benchmarks.bench_runtime import ort_runner, ort_sweep
from pseudostream.models.card import TeacherCard
from pseudostream.server.backends.onnxruntime import OnnxRuntimeBackend, cuda_unavailable

CUDA = "CUDAExecutionProvider"
HEURISTIC = {"provider_options": {CUDA: {"cudnn_conv_algo_search": "HEURISTIC"}}}
VARIANTS: dict[str, dict[str, Any]] = {
    "no buckets, exhaustive search": {"batch_buckets": "off"},
    "no buckets, heuristic search": {"batch_buckets": "off", **HEURISTIC},
    "buckets (auto), exhaustive search": {},
    "buckets (auto), heuristic search": HEURISTIC,
}
REQUEST = {"light": 128, "heavy": 64}  # samples per producer request, as in bench
BACKEND_SIZES = (1000, 130, 517, 260, 64, 999, 300, 200)  # in turn, each in another bucket than the last


def providers() -> list[str]:
    """CUDA, then the CPU (once: the test's stand-in names the CPU as CUDA)."""
    return list(dict.fromkeys([CUDA, "CPUExecutionProvider"]))


def build_teachers() -> None:
    from pseudostream.models.demo_teacher import build_demo_teacher
    from pseudostream.models.zoo import build_resnet18_teacher

    build_demo_teacher(TEACHERS["light"])
    build_resnet18_teacher(TEACHERS["heavy"])


def raw(kind: str, seconds: float) -> dict[str, Any]:
    """Raw ONNX Runtime on CUDA at its better batch of 256 and 1024."""
    model_dir = TEACHERS[kind]
    pool = teacher_inputs(kind, TeacherCard.load(model_dir))
    run = ort_runner(model_dir / "model.onnx", threads=1, providers=providers())
    return ort_sweep(run, pool, (256, 1024), seconds)


async def backend(kind: str, variant: dict[str, Any], seconds: float) -> dict[str, Any]:
    """The embedded backend alone (one worker), ``BACKEND_SIZES`` in turn, back to back."""
    pool = teacher_inputs(kind, TeacherCard.load(TEACHERS[kind]))
    xs = [np.ascontiguousarray(np.resize(pool, (n, *pool.shape[1:]))) for n in BACKEND_SIZES]
    async with OnnxRuntimeBackend(TEACHERS[kind], providers=providers(), max_batch=1024,
                                  batch_buckets=variant.get("batch_buckets", "auto"),
                                  provider_options=variant.get("provider_options")) as teacher:
        for x in xs:  # every size once before the clock starts
            await teacher.infer(x)
        rows, calls, started = 0, 0, time.perf_counter()
        while time.perf_counter() - started < seconds:
            x = xs[calls % len(xs)]
            await teacher.infer(x)
            rows, calls = rows + len(x), calls + 1
        elapsed = time.perf_counter() - started
        return {"samples_per_s": round(rows / elapsed, 1), "calls": calls,
                "ms_per_call": round(elapsed / calls * 1000, 3), "buckets": list(teacher.batch_buckets)}


def service(kind: str, variant: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    teacher = {"providers": providers(), "max_batch": 1024, "inference_workers": 2, **variant}
    topic = {"policy": {"name": "fixed", "params": {"tau": 0.0}}}  # every label is written
    return service_load.measure([
        "--model-dir", str(TEACHERS[kind]), "--producers", str(args.producers),
        "--request", str(REQUEST[kind]), "--seconds", str(args.seconds),
        "--teacher", json.dumps(teacher), "--topic", json.dumps(topic)])


def bench_teacher(kind: str, args: argparse.Namespace) -> dict[str, Any]:
    before = raw(kind, args.seconds / 2)
    alone = {name: asyncio.run(backend(kind, variant, args.seconds / 2)) for name, variant in VARIANTS.items()}
    windows = {name: service(kind, variant, args) for name, variant in VARIANTS.items()}
    after = raw(kind, args.seconds / 2)
    # Rounded once, so that each ratio is its window's rate over the reference the report gives.
    reference = round((before["best"]["samples_per_s"] + after["best"]["samples_per_s"]) / 2, 1)
    for result in (*alone.values(), *windows.values()):
        result["vs_raw"] = round(result["samples_per_s"] / reference, 4)
    return {"raw_before": before, "raw_after": after, "raw_reference": reference,
            "backend": alone, "service": windows}


def table(report: dict[str, Any]) -> str:
    lines = ["| teacher | run | samples/s | p50 ms (backend alone: a call) | p99 ms | batch | vs raw |",
             "|---|---|---|---|---|---|---|"]
    for kind, r in report.items():
        for when in ("raw_before", "raw_after"):
            best = r[when]["best"]
            lines.append(f"| {kind} | raw ORT CUDA ({when[4:]}), batch {best['batch']} | "
                         f"{best['samples_per_s']:.0f} | {best['p50_ms']:.2f} | {best['p99_ms']:.2f} | "
                         f"{best['batch']} | |")
        for name, w in r["backend"].items():
            lines.append(f"| {kind} | backend alone, {name} | {w['samples_per_s']:.0f} | "
                         f"{w['ms_per_call']:.2f} | | 64 to 1000 | {w['vs_raw']:.4f} |")
        for name, w in r["service"].items():
            lines.append(f"| {kind} | service, {name} | {w['samples_per_s']:.0f} | {w['p50_ms']:.1f} | "
                         f"{w['p99_ms']:.1f} | {w['effective_batch']:.0f} | {w['vs_raw']:.4f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=6.0, help="each service window (raw: half)")
    p.add_argument("--producers", type=int, default=16)
    p.add_argument("--teachers", default="light,heavy", help="comma-separated: light, heavy")
    p.add_argument("--out", type=Path, default=Path("cuda-report.json"))
    args = p.parse_args(argv)
    if (reason := cuda_unavailable()) is not None:
        print(f"cuda_bench skipped: {reason}")
        return {"skipped": reason}
    build_teachers()
    started = time.perf_counter()
    report = {kind: bench_teacher(kind, args) for kind in args.teachers.split(",")}
    args.out.write_text(json.dumps(report, indent=1))
    print(table(report))
    print(f"{time.perf_counter() - started:.0f} s; report in {args.out}")
    return report


if __name__ == "__main__":
    main()

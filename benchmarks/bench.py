"""Performance, measured side by side in one run (``make bench``).

For two teachers, the digits CNN (light: transport-bound) and a random-weight ResNet-18 on
3x32x32 (heavy: compute-bound), in this process tree and in one run, so that ratios hold on a
noisy machine:

(a) raw ONNX Runtime in this process at its best batch size (the limit), measured again right
    after each service window;
(b) the service end to end (``pseudostream serve``, embedded ONNX Runtime, SQLite label log) over
    gRPC loopback with N producers (one request in flight each), N = 1, 4, 16; then 4 producers
    that each keep ``--in-flight`` requests in flight on their stream (``label_stream``
    pipelining; not a target figure); then open-loop load at half the peak for the p99 latency;
(c) raw ``tritonclient`` against a local Triton (the bundled CPU tritonserver, python backend)
    and (d) the service over that Triton, at the same N, when the [triton] extra is installed;
(e) where one batch of 128 spends its time, in-process, with stage timers and cProfile;
(f) reduced precision: ``models.quantize`` int8 (QDQ) and bf16 teachers, gated by decision
    agreement, timed beside fp32 in interleaved rounds, and the service on the int8 teacher.

Writes ``bench-report.json`` (see ``bench_report`` for the figures' definitions) and a plot of
throughput and p99 against producers.

    python -m pseudostream.benchmarks.bench [--quick] [--out bench-report.json] [--plot PNG]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import logging
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from pseudostream.benchmarks import bench_report
from pseudostream.benchmarks.bench_load import ServiceLoad, TritonLoad, open_loop, window
from pseudostream.benchmarks.bench_runtime import interleaved, ort_runner, ort_sweep, run_for
from pseudostream.benchmarks.bench_service import TOPIC, ServiceProcess
from pseudostream.models.card import MODEL_FILENAME, TeacherCard
from pseudostream.server.config import TeacherConfig

log = logging.getLogger("bench")

TEACHERS = {"light": Path(".cache/teachers/digits-cnn"), "heavy": Path(".cache/teachers/resnet18")}
SERVICE_METRICS = ("pseudostream_batch_size_sum", "pseudostream_batch_size_count")
TRITON_METRICS = ("nv_inference_count", "nv_inference_exec_count")
TRITON_PIPELINE_DEPTH = 4
# Heavy windows are this many light ones: 20 s hold about 32 batches of 0.6 s, so one batch more
# or less in a window moves its rate by about 3%, not 6%.
HEAVY_WINDOWS = 4


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny sizes, light teacher only, no Triton (smoke test)")
    p.add_argument("--teachers", default="light,heavy", help="which of light,heavy to run")
    p.add_argument("--producers", default="1,4,16")
    p.add_argument("--seconds", type=float, default=5.0, help="light teacher's window; heavy gets HEAVY_WINDOWS x")
    p.add_argument("--light-request", type=int, default=128, help="samples per request, light teacher")
    p.add_argument("--heavy-request", type=int, default=16, help="samples per request, heavy teacher")
    p.add_argument("--light-max-batch", type=int, default=512,
                   help="the service's max batch, light teacher (a batch's fixed costs on the event loop "
                        "and the log's thread, spread over 512 samples: two parts of 256 on 2x1)")
    p.add_argument("--heavy-max-batch", type=int, default=128, help="the same, heavy teacher")
    p.add_argument("--profile-batch", type=int, default=128, help="batch size of the per-stage profile")
    p.add_argument("--max-delay-ms", type=float, default=5.0, help="the service batcher's (the default config)")
    p.add_argument("--fixed-delay", action="store_true",
                   help="the service waits max-delay-ms for every partial batch (adaptive_delay: false) "
                        "instead of running with adaptive_delay, the default")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                   help="ONNX Runtime intra-op threads of the raw baseline (a)")
    cores = os.cpu_count() or 1
    p.add_argument("--light-layout", default=f"{cores}x1",
                   help="the service's inference_workers x intra_op_threads, light teacher (many small batches)")
    p.add_argument("--heavy-layout", default=f"{cores}x1",
                   help="the same, heavy teacher (a lone batch runs split over the idle workers, so it "
                        "takes about what one run over every core takes)")
    p.add_argument("--split-min-rows", type=int, default=TeacherConfig.model_fields["split_min_rows"].default,
                   help="the service's split_min_rows (default: the config's; 0 never splits a batch over "
                        "idle workers)")
    p.add_argument("--in-flight", type=int, default=2,
                   help="requests each producer keeps in flight in the pipelined window, run at 4 producers "
                        "(or the most of --producers without 4); 1 skips it")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds fp32/int8/bf16")
    p.add_argument("--repeats", type=int, default=3,
                   help="times each service window (every N, each bracketed by raw ONNX Runtime) and "
                        "the half-load window run, in rounds over N; the report keeps every repeat and "
                        "headlines the median one")
    p.add_argument("--no-triton", action="store_true")
    p.add_argument("--triton-queue-delay-us", type=int, default=0,
                   help="Triton's dynamic batcher delay: 0 (raw Triton's best here: requests that "
                        "queue while the instance is busy are still batched), the repository's 2000")
    p.add_argument("--out", type=Path, default=Path("bench-report.json"))
    p.add_argument("--plot", type=Path, default=Path("benchmarks/bench-plot.png"))
    args = p.parse_args(argv)
    if args.in_flight < 1:
        p.error(f"--in-flight must be 1 or more, got {args.in_flight}")
    if args.repeats < 1:
        p.error(f"--repeats must be 1 or more, got {args.repeats}")
    if args.quick:
        args.teachers, args.producers, args.seconds, args.rounds, args.repeats = "light", "1,2", 0.5, 1, 2
        args.light_request, args.no_triton = 16, True
    args.layouts = {kind: tuple(int(v) for v in getattr(args, f"{kind}_layout").split("x"))
                    for kind in ("light", "heavy")}
    args.max_batches = {kind: getattr(args, f"{kind}_max_batch") for kind in ("light", "heavy")}
    args.kinds = [k.strip() for k in args.teachers.split(",") if k.strip()]
    args.ns = [int(n) for n in args.producers.split(",")]
    return args


def teacher_inputs(kind: str, card: TeacherCard) -> np.ndarray:
    """Samples producers send: the digits stream (light), seeded uniform noise (heavy)."""
    if kind == "light":
        from pseudostream.models.digits import load_digits_splits

        return np.ascontiguousarray(load_digits_splits(0).stream_x)
    return np.random.default_rng(7).random((256, *card.input_shape), dtype=np.float32)


def topic_config(kind: str) -> dict[str, Any]:
    # The random ResNet-18 is never 95% sure: tau 0 accepts everything, so the log is written.
    return {"policy": {"name": "fixed", "params": {"tau": 0.95 if kind == "light" else 0.0}}}


def ort_teacher(kind: str, model_dir: Path, args: argparse.Namespace) -> dict[str, Any]:
    """The service's teacher: ``--KIND-layout`` = inference_workers x intra_op_threads, at the
    config's default pipeline depth for that many workers."""
    workers, threads = args.layouts[kind]
    return {"backend": "onnxruntime", "model_dir": str(model_dir), "max_batch": args.max_batches[kind],
            "max_delay_ms": args.max_delay_ms, "intra_op_threads": threads,
            "inference_workers": workers,
            "adaptive_delay": not args.fixed_delay, "split_min_rows": args.split_min_rows}


def quantize_phase(kind: str, teacher_dir: Path, work: Path, run: bench_report.TeacherRun) -> dict[str, Path]:
    """int8 and bf16 candidates through the gate; their folders (only those accepted)."""
    from pseudostream.models.quantize import QuantizationError, quantize_bf16, quantize_int8

    run.quantized, accepted = {}, {}
    for precision, build in (("int8", quantize_int8), ("bf16", quantize_bf16)):
        t0 = time.perf_counter()
        try:
            result = build(teacher_dir, work / f"{kind}-{precision}")
        except (QuantizationError, ImportError) as exc:
            run.quantized[precision], run.quantized[f"{precision}_reason"] = None, str(exc)
            continue
        run.quantized[precision] = {"agreement": result.agreement.to_dict(),
                                    "build_s": round(time.perf_counter() - t0, 1)}
        accepted[precision] = result.path
    return accepted


def runtime_phase(teacher_dir: Path, pool: np.ndarray, accepted: dict[str, Path],
                  run: bench_report.TeacherRun, args: argparse.Namespace) -> None:
    """fp32 vs int8 (ONNX Runtime) vs bf16 (torch) at the service's max batch, interleaved."""
    from pseudostream.models.quantize import Bf16Teacher

    runners = {"fp32": ort_runner(teacher_dir / MODEL_FILENAME, args.threads)}
    if "int8" in accepted:
        runners["int8"] = ort_runner(accepted["int8"] / MODEL_FILENAME, args.threads)
    if "bf16" in accepted:
        runners["bf16"] = Bf16Teacher(accepted["bf16"], threads=args.threads)
    x = np.ascontiguousarray(np.resize(pool, (run.max_batch, *pool.shape[1:])))
    seconds = args.seconds * 0.3
    timings = interleaved(runners, x, args.rounds, seconds)
    assert run.quantized is not None
    run.quantized["runtime"] = timings
    for precision in ("int8", "bf16"):
        if run.quantized.get(precision):
            run.quantized[precision]["speedup_vs_fp32"] = timings[precision]["vs_first"]


async def service_phase(kind: str, teacher_dir: Path, pool: np.ndarray, run: bench_report.TeacherRun,
                        work: Path, args: argparse.Namespace, seconds: float, best: Any) -> None:
    """(b) at each N, with (a) at its best batch right before and after each window (their mean
    is the limit that window is compared with), ``--repeats`` rounds over N; then the window with
    several requests in flight; then the half-load p99, ``--repeats`` times. Each N's headline is
    its median repeat (``bench_report.median_repeat``)."""
    x = np.ascontiguousarray(pool[:run.request_samples])
    best_x = np.ascontiguousarray(np.resize(pool, (run.ort_sweep["best_batch"], *pool.shape[1:])))
    with ServiceProcess(work, run.teacher, ort_teacher(kind, teacher_dir, args), topic_config(kind)) as svc:
        metrics = (svc.metrics_url, *SERVICE_METRICS)
        before = run_for(best, best_x, seconds / 2)

        async def bracketed(n: int, callers: int) -> tuple[dict[str, Any], dict[str, Any]]:
            """A window of ``callers`` on ``n`` streams, then raw ORT: (the window, its limit:
            raw ORT right after it, samples/s the mean of the runs before and after)."""
            nonlocal before
            async with ServiceLoad(svc.target, TOPIC, x, streams=n) as load:
                w = await window(load, callers, seconds, [svc.pid], metrics, warmup_s=seconds / 4)
            after = run_for(best, best_x, seconds / 2)
            rates = [before["samples_per_s"], after["samples_per_s"]]
            before = after
            return w, {**after, "samples_per_s": round(sum(rates) / 2, 1), "before_after": rates}

        for repeat in range(args.repeats):
            for n in args.ns:
                w, limit = await bracketed(n, n)
                run.service_repeats.setdefault(n, []).append({"window": w, "limit": limit})
                log.info("%s N=%d (repeat %d) service %s | raw ORT %s", kind, n, repeat + 1, w, limit)
        for n, repeats in run.service_repeats.items():
            chosen = bench_report.median_repeat(repeats)
            run.service[n], run.ort_after[n] = chosen["window"], chosen["limit"]
        if args.in_flight > 1:
            n = 4 if 4 in args.ns else max(args.ns)
            w, limit = await bracketed(n, n * args.in_flight)
            run.pipelined = {"producers": n, "in_flight": args.in_flight, **w,
                             "ort_samples_per_s": limit["samples_per_s"], "ort_before_after": limit["before_after"]}
            log.info("%s N=%d, %d in flight each: service %s", kind, n, args.in_flight, w)
        peak = max(w["samples_per_s"] for w in run.service.values())
        halves = []
        for _ in range(args.repeats):
            async with ServiceLoad(svc.target, TOPIC, x, streams=4) as load:
                halves.append(await open_loop(load.call, 0.5 * peak / len(x), seconds * 1.5, streams=4))
    one_batch_ms = run.ort_sweep["one_batch_ms"]
    run.half_load = {**bench_report.median_by(halves, "p99_ms"), "peak_samples_per_s": peak,
                     "bound_ms": round(2 * (args.max_delay_ms + one_batch_ms), 2),
                     "p99_ms_repeats": [h["p99_ms"] for h in halves], "p50_ms_repeats": [h["p50_ms"] for h in halves]}


async def quantized_service(kind: str, int8_dir: Path, pool: np.ndarray, run: bench_report.TeacherRun,
                            work: Path, args: argparse.Namespace, seconds: float) -> None:
    """The service on the int8 teacher at 4 producers, beside the fp32 window."""
    n = 4 if 4 in run.service else max(run.service)
    x = np.ascontiguousarray(pool[:run.request_samples])
    with ServiceProcess(work, f"{run.teacher}-int8", ort_teacher(kind, int8_dir, args), topic_config(kind)) as svc:
        async with ServiceLoad(svc.target, TOPIC, x, streams=n) as load:
            w = await window(load, n, seconds, [svc.pid], (svc.metrics_url, *SERVICE_METRICS), seconds / 4)
    assert run.quantized is not None
    run.quantized["service_int8"] = {"producers": n, **w,
                                     "vs_fp32_service": bench_report.ratio(w["samples_per_s"],
                                                                           run.service[n]["samples_per_s"])}


async def triton_phase(kind: str, teacher_dir: Path, card: TeacherCard, pool: np.ndarray,
                       run: bench_report.TeacherRun, work: Path, args: argparse.Namespace,
                       seconds: float) -> None:
    """(c) raw tritonclient and (d) the service over Triton at each N, alternating."""
    from pseudostream.models.triton_repo import write_model_repository
    from pseudostream.server.backends.triton_server import LocalTritonServer

    repo = work / f"repo-{kind}"
    write_model_repository(repo, teacher_dir, name=card.name, platform="python", max_batch_size=run.max_batch,
                           max_queue_delay_us=args.triton_queue_delay_us)
    x = np.ascontiguousarray(pool[:run.request_samples])
    with LocalTritonServer(repo, models=[card.name]) as triton:
        # Pipeline depth 4: one batch running in Triton, one queued there (its instance never
        # waits for the round trip), one labeling, one appending.
        teacher = {"backend": "triton", "max_batch": run.max_batch, "max_delay_ms": args.max_delay_ms,
                   "adaptive_delay": not args.fixed_delay, "pipeline_depth": TRITON_PIPELINE_DEPTH,
                   "triton": {"url": triton.grpc_url, "model": card.name, "repository": str(repo),
                              "platform": "python"}}
        with ServiceProcess(work, f"{card.name}-triton", teacher, topic_config(kind)) as svc:
            for n in args.ns:
                async with TritonLoad(triton.grpc_url, card.name, x, card.input_name) as load:
                    run.raw_triton[n] = await window(load, n, seconds, [triton.pid],
                                                     (triton.metrics_url, *TRITON_METRICS), seconds / 4)
                async with ServiceLoad(svc.target, TOPIC, x, streams=n) as load:
                    run.service_triton[n] = await window(load, n, seconds, [svc.pid, triton.pid],
                                                         (svc.metrics_url, *SERVICE_METRICS), seconds / 4)
                log.info("%s N=%d raw triton %s | service %s", kind, n, run.raw_triton[n], run.service_triton[n])


def raw_limit(kind: str, teacher_dir: Path, pool: np.ndarray, run: bench_report.TeacherRun,
              args: argparse.Namespace, seconds: float) -> Any:
    """(a): raw ONNX Runtime swept over batch sizes in every thread layout worth trying, whatever
    the service runs: one session run over ``--threads``, that many single-threaded workers, and
    the service's own (``--KIND-layout``). A layout of several workers runs each back to back on
    batches of its own, none waiting for another; batch sizes are per worker. The fastest layout
    at its best batch is the limit. Returns that runner."""
    sweep = sorted({16, 64, run.max_batch, 2 * run.max_batch} if not args.quick else {8, run.max_batch})
    shapes = dict.fromkeys([(1, args.threads), (args.threads, 1), args.layouts[kind]])
    layouts = {f"{workers}x{threads}": ort_runner(teacher_dir / MODEL_FILENAME, threads, workers=workers)
               for workers, threads in shapes}
    sweeps = {}
    for name, runner in layouts.items():  # batches per worker
        sweeps[name] = ort_sweep(runner, pool, sweep, seconds / 4, rounds=1 if args.quick else 2)
        log.info("%s raw ORT %s: best batch %s %s", run.teacher, name, sweeps[name]["best_batch"],
                 sweeps[name]["best"])
    chosen = max(sweeps, key=lambda n: sweeps[n]["best"]["samples_per_s"])
    # The p99 bound takes one batch of max_batch at the layout that infers it fastest.
    one = min(s["by_batch"][run.max_batch]["p50_ms"] for s in sweeps.values() if run.max_batch in s["by_batch"])
    run.ort_sweep = {**sweeps[chosen], "layout": chosen, "one_batch_ms": one,
                     "layouts": {n: {"best_batch": s["best_batch"], **s["best"]} for n, s in sweeps.items()}}
    return layouts[chosen]


def run_teacher(kind: str, work: Path, args: argparse.Namespace) -> bench_report.TeacherRun:
    """Every part for one teacher, in the order that keeps exports out of threaded phases."""
    from pseudostream.benchmarks.bench_profile import profile_batches

    teacher_dir = TEACHERS[kind]
    card = TeacherCard.load(teacher_dir)
    pool = teacher_inputs(kind, card)
    seconds = args.seconds * (HEAVY_WINDOWS if kind == "heavy" else 1)
    run = bench_report.TeacherRun(card.name, args.light_request if kind == "light" else args.heavy_request,
                                  args.max_batches[kind], args.max_delay_ms)
    accepted = quantize_phase(kind, teacher_dir, work, run)  # exports first: no threads yet
    best = raw_limit(kind, teacher_dir, pool, run, args, seconds)
    run.profile = profile_batches(card.name, ort_teacher(kind, teacher_dir, args), topic_config(kind), pool,
                                  batch=args.profile_batch, request=run.request_samples,
                                  batches=2 if args.quick else (8 if kind == "heavy" else 100))
    runtime_phase(teacher_dir, pool, accepted, run, args)
    asyncio.run(service_phase(kind, teacher_dir, pool, run, work, args, seconds, best))
    if "int8" in accepted:
        asyncio.run(quantized_service(kind, accepted["int8"], pool, run, work, args, seconds))
    missing = [m for m in ("tritonclient", "pytriton") if importlib.util.find_spec(m) is None]
    if args.no_triton or missing:
        run.reasons["triton"] = ("skipped (--no-triton)" if args.no_triton else
                                 f"the [triton] extra is not installed ({', '.join(missing)} missing)")
    else:
        try:
            asyncio.run(triton_phase(kind, teacher_dir, card, pool, run, work, args, seconds))
        except Exception as exc:  # a Triton that cannot start must not cost the rest of the report
            log.warning("%s: Triton part failed: %s", kind, exc)
            run.reasons["triton"] = f"Triton part failed: {exc}"
    return run


def main(argv: list[str] | None = None) -> dict[str, Any]:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    args = parse_args(argv)
    started = time.perf_counter()
    from pseudostream.models.demo_teacher import build_demo_teacher
    from pseudostream.models.zoo import build_resnet18_teacher

    build_demo_teacher(TEACHERS["light"])
    if "heavy" in args.kinds:
        build_resnet18_teacher(TEACHERS["heavy"])
    runs: dict[str, bench_report.TeacherRun | None] = {}
    skipped = {k: f"not run (--teachers {args.teachers})" for k in ("light", "heavy") if k not in args.kinds}
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        for kind in args.kinds:
            runs[kind] = run_teacher(kind, Path(tmp), args)
    setup = {"cpus": os.cpu_count(), "machine": platform.processor() or platform.machine(),
             "python": platform.python_version(), "producers": args.ns, "seconds_light": args.seconds,
             "seconds_heavy": HEAVY_WINDOWS * args.seconds, "max_batch": {k: args.max_batches[k] for k in args.kinds},
             "profile_batch": args.profile_batch, "max_delay_ms": args.max_delay_ms, "ort_threads": args.threads,
             "service_layouts": {k: "x".join(map(str, v)) for k, v in args.layouts.items()},
             "split_min_rows": args.split_min_rows,
             "triton_queue_delay_us": args.triton_queue_delay_us, "triton_pipeline_depth": TRITON_PIPELINE_DEPTH,
             "adaptive_delay": not args.fixed_delay, "pipelined_in_flight": args.in_flight,
             "repeats": args.repeats,
             "requests": {"light": args.light_request, "heavy": args.heavy_request},
             "quick": args.quick, "wall_s": None}
    report = bench_report.build_report(runs, setup, skipped)
    report["setup"]["wall_s"] = round(time.perf_counter() - started, 1)
    bench_report.write_report(report, args.out)
    png = bench_report.plot(report, args.plot)
    print(bench_report.table(report))
    for t in report["targets"]:
        print(f"{'met ' if t['met'] else 'MISS' if t['met'] is False else 'n/a '} {t['target']}: "
              f"{t['measured']} (goal {t['goal']})")
    print(f"wrote {args.out}" + (f" and {png}" if png else " (no plot: pip install matplotlib)"))
    return report


if __name__ == "__main__":
    main()

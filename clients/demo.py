"""The demo: the whole loop on the embedded teacher, with a report.

1. build the digits teacher (cached), 2. start the labeling service in-process (ONNX Runtime,
SQLite label log), 3. stream the shifted unlabeled digits from several concurrent producers over
gRPC, 4. a trainer subscribes through PseudoLabelDataset, trains a student on the accepted labels
and acks what it trained on, 5. report the figures.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
from tqdm import tqdm

from pseudostream.clients.client import AsyncLabelerClient, make_label_request
from pseudostream.clients.demo_trainer import StudentTrainer
from pseudostream.server.app import LabelingServer
from pseudostream.server.config import ServiceConfig

__all__ = ["DemoSettings", "run_demo", "format_report"]

TOPIC = "digits"
TEACHER = "digits-cnn"
STREAM_SHIFT_SEED = 1234  # the stream's corruption draw (fixed: same figures every run)
TEST_SHIFT_SEED = 4321  # the shifted test split's corruption draw


@dataclass
class DemoSettings:
    """Knobs of the demo; the defaults are what ``make demo`` runs."""

    producers: int = 4
    teacher_dir: Path = Path(".cache/teachers/digits-cnn")
    request_size: int = 16
    policy: str = "fixed"
    policy_params: dict[str, Any] = field(default_factory=lambda: {"tau": 0.95})
    seed: int = 0
    severity: int = 1  # models.shift.DEMO_SEVERITY; 2 and 3 break the frozen teacher
    backend: str = "onnxruntime"  # or "triton": a local Triton the demo starts and stops
    rounds: int = 0  # self-training rounds after the first (clients/demo_rounds.py)
    progress: bool = True


def run_demo(settings: DemoSettings) -> dict[str, Any]:
    """Run the demo end to end; returns the report as a dict."""
    from pseudostream.models.demo_teacher import build_demo_teacher
    from pseudostream.models.digits import load_digits_splits
    from pseudostream.models.shift import apply_shift

    card = build_demo_teacher(settings.teacher_dir, seed=settings.seed)
    splits = load_digits_splits(seed=settings.seed)
    stream_x = apply_shift(splits.stream_x, seed=STREAM_SHIFT_SEED, severity=settings.severity)
    stream_ids, stream_y = list(splits.stream_ids), splits.stream_y
    test_x = apply_shift(splits.test_x, seed=TEST_SHIFT_SEED, severity=settings.severity)
    with tempfile.TemporaryDirectory(prefix="pseudostream-demo-") as work, \
            _teacher_service(settings, Path(work)) as (teacher, triton):
        topic: dict[str, Any] = {"teacher": TEACHER, "store_samples": True,
                                 "policy": {"name": settings.policy, "params": settings.policy_params}}
        if settings.rounds:  # the audit slice: labelled stream samples the producers never send
            from pseudostream.clients.demo_rounds import AUDIT_SIZE

            np.savez(Path(work) / "audit.npz", x=stream_x[-AUDIT_SIZE:], y=stream_y[-AUDIT_SIZE:])
            # A candidate must get at least one more audit sample right than the served teacher.
            topic["audit"] = {"path": Path(work) / "audit.npz", "max_accuracy_drop": -0.5 / AUDIT_SIZE}
            stream_x, stream_ids, stream_y = (stream_x[:-AUDIT_SIZE], stream_ids[:-AUDIT_SIZE],
                                              stream_y[:-AUDIT_SIZE])
        config = ServiceConfig(
            port=0, metrics_port=None, work_dir=Path(work) / "service",
            teachers={TEACHER: teacher}, topics={TOPIC: topic},
            label_log={"path": Path(work) / "labels.db", "visibility_timeout_s": 30.0},
        )
        count = None if triton is None else functools.partial(_triton_inference_count, triton.metrics_url)
        report = asyncio.run(_run(config, settings, stream_x, stream_ids, stream_y, test_x,
                                  splits.test_y, count))
    stream_truth = dict(zip(stream_ids, stream_y.tolist()))
    report.update(label_quality(report.pop("_accepted"), stream_truth))
    report["teacher_accuracy_shifted"] = _teacher_accuracy(settings.teacher_dir, test_x, splits.test_y)
    report["teacher_version"] = card.version
    report["shift"] = _describe_shift(settings.severity)
    return report


async def _run(config: ServiceConfig, settings: DemoSettings, stream_x: np.ndarray,
               stream_ids: list[str], stream_y: np.ndarray, test_x: np.ndarray,
               test_y: np.ndarray, triton_count: Callable[[], int] | None = None) -> dict[str, Any]:
    async with LabelingServer(config) as server:
        # The adaptive delay times the teacher at start; let it finish, so that Triton's count
        # over the labeling below holds the producers' samples only.
        await asyncio.gather(*server.core.cost_probes.values(), return_exceptions=True)
        before = triton_count() if triton_count else 0
        report, trainer = await label_and_train(server.address, settings, stream_x, stream_ids,
                                                test_x, test_y)
        if triton_count:
            report["triton_inference_count"] = triton_count() - before
        if settings.rounds:
            from pseudostream.clients.demo_rounds import self_training_rounds

            report["rounds"] = await self_training_rounds(server, settings, trainer, report,
                                                          stream_x, stream_ids, stream_y, test_x, test_y)
    return report


async def label_and_train(target: str, settings: DemoSettings, stream_x: np.ndarray,
                          stream_ids: list[str], test_x: np.ndarray, test_y: np.ndarray,
                          group: str = "students", seed_offset: int = 0) -> tuple[dict[str, Any], StudentTrainer]:
    """Stream the samples from the producers while a student trains on what is accepted."""
    trainer = StudentTrainer(target, TOPIC, group=group, seed=settings.seed + seed_offset)
    thread = threading.Thread(target=trainer.run, name="student-trainer", daemon=True)
    thread.start()
    started = time.perf_counter()
    shards = np.array_split(np.arange(len(stream_ids)), settings.producers)
    bar = tqdm(total=len(stream_ids), desc="labeling", unit="sample", disable=not settings.progress)
    results = await asyncio.gather(*[
        _produce(target, stream_x[idx], [stream_ids[i] for i in idx],
                 settings.request_size, bar) for idx in shards])
    elapsed = time.perf_counter() - started
    bar.close()
    accepted = {sid: lab for part in results for sid, lab in part.items()}
    trainer.expect(len(accepted))
    await asyncio.get_running_loop().run_in_executor(None, thread.join)
    if trainer.error is not None:
        raise trainer.error
    async with AsyncLabelerClient(target) as client:
        state = await client.get_topic(TOPIC, groups=[trainer.group])
    sent = len(stream_ids)
    return {
        "backend": settings.backend,
        "policy": state.policy,
        "producers": settings.producers,
        "samples_sent": sent,
        "samples_per_s": round(sent / elapsed, 1),
        "labeling_seconds": round(elapsed, 3),
        "accepted": len(accepted),
        "acceptance_rate": round(len(accepted) / sent, 4),
        "accepted_per_class": list(state.accepted_per_class),
        "labels_trained_on": trainer.trained_on,
        "trainer_lag_after_ack": int(state.group_lag[trainer.group]),
        "student_accuracy_shifted": round(trainer.evaluate(test_x, test_y), 4),
        "_accepted": accepted,
    }, trainer


async def _produce(target: str, x: np.ndarray, ids: list[str], request_size: int,
                   bar: tqdm) -> dict[str, int]:
    """One producer: stream its shard over one Label stream; returns accepted id -> label."""
    accepted: dict[str, int] = {}
    requests = [make_label_request(TOPIC, x[i:i + request_size], ids[i:i + request_size])
                for i in range(0, len(ids), request_size)]
    async with AsyncLabelerClient(target) as client:
        async for result in client.label_stream(requests):
            for k in np.flatnonzero(result.accepted):
                accepted[result.ids[k]] = int(result.label[k])
            bar.update(len(result))
    return accepted


@contextlib.contextmanager
def _teacher_service(settings: DemoSettings, work: Path) -> Iterator[tuple[dict[str, Any], Any]]:
    """The teacher config for the service, and the local Triton behind it when asked for."""
    batching = {"max_batch": 128, "max_delay_ms": 5.0}
    if settings.backend == "onnxruntime":
        yield {"model_dir": settings.teacher_dir, "intra_op_threads": 1, **batching}, None
        return
    if settings.backend != "triton":
        raise ValueError(f"backend must be onnxruntime or triton, got {settings.backend!r}")
    from pseudostream.models.triton_repo import write_model_repository
    from pseudostream.server.backends.triton_server import LocalTritonServer

    repo = work / "triton-repo"
    write_model_repository(repo, settings.teacher_dir, name=TEACHER, platform="python")
    with LocalTritonServer(repo) as triton:
        yield {"backend": "triton", "triton": {"url": triton.grpc_url, "model": TEACHER,
                                               "repository": repo, "platform": "python"},
               **batching}, triton


def _triton_inference_count(metrics_url: str) -> int:
    """Sum of Triton's ``nv_inference_count`` (samples it has inferred) from its /metrics."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    text = urllib.request.urlopen(metrics_url, timeout=10).read().decode()
    return int(sum(s.value for f in text_string_to_metric_families(text)
                   for s in f.samples if s.name in ("nv_inference_count", "nv_inference_count_total")))


def label_quality(accepted: dict[str, int], truth: dict[str, int]) -> dict[str, Any]:
    correct = sum(truth[sid] == label for sid, label in accepted.items())
    return {"pseudo_label_precision": round(correct / max(len(accepted), 1), 4)}


def _teacher_accuracy(teacher_dir: Path, x: np.ndarray, y: np.ndarray) -> float:
    import onnxruntime as ort

    session = ort.InferenceSession(str(Path(teacher_dir) / "model.onnx"),
                                   providers=["CPUExecutionProvider"])
    logits = session.run(["logits"], {"input": x.astype(np.float32)})[0]
    return round(float((logits.argmax(axis=1) == y).mean()), 4)


def _describe_shift(severity: int) -> dict[str, Any]:
    from pseudostream.models import shift

    return {"kind": shift.SHIFT_KIND, "severity": severity, **shift.severity_params(severity),
            "stream_seed": STREAM_SHIFT_SEED, "test_seed": TEST_SHIFT_SEED}


def format_report(r: dict[str, Any]) -> str:
    """A short human summary of the report."""
    lines = [f"  round {e['round']}: teacher v{e['teacher_version']} acc {e['teacher_accuracy_shifted']:.1%}"
             f", precision {e['pseudo_label_precision']:.1%}, student acc "
             f"{e['student_accuracy_shifted']:.1%} -> "
             f"{'promoted as v' + e['proposal']['version'] if e['proposal']['promoted'] else 'rejected'}"
             f" (served acc {e['teacher_accuracy_after']:.1%})" for e in r.get("rounds", [])]
    return "\n".join([
        f"pseudostream demo ({r['backend']}, policy {r['policy']}, teacher v{r['teacher_version']})",
        f"  samples sent          {r['samples_sent']} from {r['producers']} producers "
        f"({r['samples_per_s']:.0f} samples/s)",
        f"  accepted              {r['accepted']} ({r['acceptance_rate']:.1%})",
        f"  pseudo-label precision {r['pseudo_label_precision']:.1%}",
        f"  teacher acc (shifted) {r['teacher_accuracy_shifted']:.1%}",
        f"  student acc (shifted) {r['student_accuracy_shifted']:.1%} "
        f"(trained on {r['labels_trained_on']} pseudo-labels only)",
        *lines,
    ])

"""Self-training rounds for the demo: label -> train a student -> propose -> gate -> promote.

Round 1 is the demo's own pass (the served teacher labels the shifted stream, a student trains
on the accepted labels). After each round the student is proposed through the real CLI
(``pseudostream teacher propose``, in a child process: it exports the checkpoint to ONNX) and the
service judges it on the topic's audit slice. The next round streams the same samples again,
under new ids, so the teacher now served labels them, and a fresh student (Noisy Student: trained
from scratch on the new labels only) is trained. Each round's trainers use their own consumer
group, committed past the earlier rounds' records, so a student sees only its round's labels.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pseudostream.clients.client import AsyncLabelerClient

if TYPE_CHECKING:
    from pseudostream.clients.demo import DemoSettings
    from pseudostream.clients.demo_trainer import StudentTrainer
    from pseudostream.server.app import LabelingServer

__all__ = ["AUDIT_SIZE", "self_training_rounds"]

AUDIT_SIZE = 240  # labelled shifted stream samples held back as the topic's audit slice


async def self_training_rounds(server: LabelingServer, settings: DemoSettings, trainer: StudentTrainer,
                               first: dict[str, Any], stream_x: np.ndarray, stream_ids: list[str],
                               stream_y: np.ndarray, test_x: np.ndarray,
                               test_y: np.ndarray) -> list[dict[str, Any]]:
    """Run ``settings.rounds`` rounds (the first is the pass already made); one entry each."""
    from pseudostream.clients.demo import TOPIC, label_and_train, label_quality

    rounds: list[dict[str, Any]] = []
    truth = dict(zip(stream_ids, stream_y.tolist()))
    report, accepted = first, first["_accepted"]
    trained = (0, await _log_end(server.address))
    for k in range(1, settings.rounds + 1):
        labeling_version = _served_version(server)
        entry: dict[str, Any] = {
            "round": k,
            "teacher_version": labeling_version,
            "teacher_accuracy_shifted": await _served_accuracy(server, test_x, test_y),
            "accepted": report["accepted"], "acceptance_rate": report["acceptance_rate"],
            "pseudo_label_precision": label_quality(
                {sid.removeprefix(f"r{k}-"): label for sid, label in accepted.items()},
                truth)["pseudo_label_precision"],
            "student_accuracy_shifted": report["student_accuracy_shifted"],
        }
        entry["trained_on_offsets"] = list(trained)
        entry["proposal"] = await _propose(server, trainer, k, trained)
        entry["teacher_version_after"] = _served_version(server)
        entry["teacher_accuracy_after"] = await _served_accuracy(server, test_x, test_y)
        rounds.append(entry)
        if k == settings.rounds:
            break
        group = f"students-r{k + 1}"
        start = await _log_end(server.address)
        if start:  # the new group starts at the log's end: it sees only this round's labels
            async with AsyncLabelerClient(server.address) as client:
                await client.ack(TOPIC, group, list(range(start)))
        ids = [f"r{k + 1}-{sid}" for sid in stream_ids]
        report, trainer = await label_and_train(server.address, settings, stream_x, ids, test_x, test_y,
                                                group=group, seed_offset=k)
        accepted = report.pop("_accepted")
        trained = (start, await _log_end(server.address))
    return rounds


async def _log_end(target: str) -> int:
    from pseudostream.clients.demo import TOPIC

    async with AsyncLabelerClient(target) as client:
        return int((await client.get_topic(TOPIC)).log_end_offset)


def _served_version(server: LabelingServer) -> str:
    from pseudostream.clients.demo import TEACHER

    return server.core.backend(TEACHER).metadata.version


async def _served_accuracy(server: LabelingServer, x: np.ndarray, y: np.ndarray) -> float:
    """Accuracy of the teacher the service serves now (its own backend) on (x, y)."""
    from pseudostream.clients.demo import TEACHER

    out = await server.core.backend(TEACHER).infer(np.ascontiguousarray(x, dtype=np.float32))
    return round(float((out.logits.argmax(axis=1) == y).mean()), 4)


async def _propose(server: LabelingServer, trainer: StudentTrainer, k: int,
             trained: tuple[int, int]) -> dict[str, Any]:
    """Save the round's student and propose it with the CLI; returns the service's verdict."""
    from pseudostream.models.student import save_student

    ckpt = save_student(trainer.model, Path(server.config.work_dir) / f"student-r{k}.pt")
    target = server.address
    # Not subprocess.run: the service answering the CLI runs on this very event loop.
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "pseudostream.clients.cli", "teacher", "propose", "--topic", "digits",
        "--checkpoint", str(ckpt), "--note", f"demo round {k}", "--target", target,
        "--trained-on", f"{trained[0]}:{trained[1]}",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    stdout, stderr = await asyncio.wait_for(child.communicate(), timeout=300)
    if child.returncode not in (0, 2):
        raise RuntimeError(f"teacher propose failed (exit {child.returncode}): {stderr.decode()[-2000:]}")
    verdict = json.loads(stdout)
    return {key: verdict.get(key) for key in ("promoted", "version", "reason", "candidate", "current")}

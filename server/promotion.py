"""Close the loop: proposed students become teachers, behind a topic's audit gate.

``propose`` takes a candidate (ONNX bytes), checks its signature, optionally folds it into the
topic's EMA teacher, scores the candidate (or the EMA) and the served teacher on the topic's audit
slice, and publishes the candidate as a new version only if the gate passes (server/gate.py).
Every decision, promoted or rejected, lands in the teacher's lineage (server/lineage.py).
Proposals to one teacher are judged one at a time.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnx

from pseudostream.server.candidates import Candidate, base_card, load_candidate, write_teacher_dir
from pseudostream.server.ema import OnnxEma
from pseudostream.server.errors import InvalidInput, NotReady
from pseudostream.server.gate import AuditFigures, AuditSlice, passes, score
from pseudostream.server.lineage import Lineage, VersionRecord

if TYPE_CHECKING:
    from pseudostream.server.core import LabelingCore

__all__ = ["Promoter", "ProposalOutcome"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ProposalOutcome:
    promoted: bool
    version: str  # served after the proposal
    reason: str
    candidate: AuditFigures | None
    current: AuditFigures | None
    candidate_id: str
    ema: bool


class Promoter:
    """Audit slices, EMA teachers and lineage for the topics of one ``LabelingCore``."""

    def __init__(self, core: LabelingCore) -> None:
        self.core = core
        self.slices: dict[str, AuditSlice] = {}
        self.emas: dict[str, OnnxEma] = {}  # per topic
        self._locks: dict[str, asyncio.Lock] = {}

    async def start(self) -> None:
        """Load every topic's audit slice (ConfigError if one does not fit its teacher) and
        record each teacher's starting version in its lineage."""
        for name, topic in self.core.topics.items():
            if topic.config.audit is not None:
                teacher = self.core.backends[topic.config.teacher].metadata
                self.slices[name] = AuditSlice.load(topic.config.audit, teacher, name)
        for name, backend in self.core.backends.items():
            await self.lineage(name).ensure_initial(backend.metadata.version,
                                                    note=str(self.core.model_dir(name) or ""))

    def lineage(self, teacher: str) -> Lineage:
        assert self.core.log is not None
        return Lineage(self.core.log, teacher)

    async def propose(self, topic: str, data: bytes, *, trained_from: int = 0, trained_to: int = 0,
                      proposer: str = "anonymous", note: str = "") -> ProposalOutcome:
        """Judge one candidate for ``topic``'s teacher (see the module docstring)."""
        runtime = self.core.topic(topic)
        if topic not in self.slices:
            raise NotReady(f"topic {topic!r} has no audit slice, so no candidate can be judged; set "
                           f"topics.{topic}.audit.path to an .npz of labelled samples (x, y)")
        if trained_to < trained_from or trained_from < 0:
            raise InvalidInput(f"propose: trained offsets [{trained_from}, {trained_to}) are not a range")
        teacher = runtime.config.teacher
        async with self._locks.setdefault(teacher, asyncio.Lock()):
            backend = self.core.backend(teacher)
            served = backend.metadata
            loop = asyncio.get_running_loop()
            candidate = await loop.run_in_executor(None, load_candidate, data, served)
            record = VersionRecord(version="", parent=served.version, origin="propose",
                                   decision="rejected", topic=topic, proposer=proposer,
                                   trained_from_offset=trained_from, trained_to_offset=trained_to,
                                   candidate_id=candidate.digest, note=note)
            ema_cfg = runtime.config.ema
            if ema_cfg is not None:
                ema = self._ema(topic, candidate, ema_cfg.momentum)
                ema.update(candidate.model)
                await loop.run_in_executor(None, ema.save, self._ema_path(topic))
                if ema.updates % ema_cfg.every:
                    reason = f"folded into the EMA teacher ({ema.updates % ema_cfg.every} of {ema_cfg.every} proposals before the next gate)"
                    record.decision, record.reason, record.origin = "accumulated", reason, "ema"
                    await self.lineage(teacher).append(record)
                    return ProposalOutcome(False, served.version, reason, None, None, candidate.digest, True)
                candidate = await loop.run_in_executor(None, load_candidate,
                                                       ema.model().SerializeToString(), served)
                record.origin = "ema"
            audit = self.slices[topic]
            current = score(await self._served_logits(teacher, audit.x), audit.y)
            cand = score(await loop.run_in_executor(None, candidate.logits, audit.x), audit.y)
            ok, reason = passes(cand, current, runtime.config.audit)
            record.reason, record.audit = reason, asdict(cand)
            version = served.version
            if ok:
                version = await self._promote(teacher, candidate, cand, record)
            await self.lineage(teacher).append(record)
            log.info("teacher %s, topic %s: candidate %s %s", teacher, topic, candidate.digest[:19], reason)
            return ProposalOutcome(ok, version, reason, cand, current, candidate.digest, ema_cfg is not None)

    async def _promote(self, teacher: str, candidate: Candidate, figures: AuditFigures,
                       record: VersionRecord) -> str:
        card = base_card(self.core.backend(teacher).metadata, self.core.model_dir(teacher))
        out = self.core.config.work_dir / "teachers" / teacher / candidate.digest.split(":")[1][:16]
        metrics = {f"audit_{k}": float(v) for k, v in asdict(figures).items()}
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, write_teacher_dir, out, candidate.model, card,
                                   figures.temperature, metrics, candidate.digest)
        version = await self.core.publish(teacher, str(out), record_lineage=False)
        record.version, record.decision = version, "promoted"
        return version

    async def _served_logits(self, teacher: str, x: np.ndarray) -> np.ndarray:
        backend = self.core.backend(teacher)
        step = self.core.config.teachers[teacher].max_batch
        parts = [(await backend.infer(x[i:i + step])).logits for i in range(0, len(x), step)]
        return np.concatenate(parts).astype(np.float64)

    def _ema_path(self, topic: str) -> Path:
        return self.core.config.work_dir / "ema" / f"{topic}.onnx"

    def _ema(self, topic: str, candidate: Candidate, momentum: float) -> OnnxEma:
        """The topic's EMA teacher: as saved after its last update (it survives restarts), else
        seeded with the served model (or, if its file is unknown, the first candidate)."""
        if topic not in self.emas:
            served_dir = self.core.model_dir(self.core.topic(topic).config.teacher)
            path = self._ema_path(topic)
            if not path.exists():
                path = Path(served_dir) / "model.onnx" if served_dir else path
            start = onnx.load_model(str(path)) if path.exists() else candidate.model
            self.emas[topic] = OnnxEma(start, momentum)
        return self.emas[topic]

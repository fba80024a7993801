"""Teacher lineage: one record per version served and per candidate judged, kept in the label log.

Records live in the label log's state store (SQLite or Redis), under the pseudo-topic
``teacher:NAME``, so they survive restarts and every replica sharing the log sees the same
history. Each record says which version it made (empty for a rejected candidate), its parent
(the version served when it was made), where it came from (initial, publish, propose, ema,
rollback), who asked, the label-log offsets its student trained on, and its audit figures.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import asdict, dataclass, field

from pseudostream.server.labellog.base import LabelLog

__all__ = ["VersionRecord", "Lineage"]


@dataclass
class VersionRecord:
    """One lineage entry (the proto's VersionRecord)."""

    version: str
    parent: str
    origin: str  # initial | publish | propose | ema | rollback
    decision: str  # served | promoted | rejected
    topic: str = ""
    proposer: str = "anonymous"
    trained_from_offset: int = 0
    trained_to_offset: int = 0
    audit: dict[str, float] = field(default_factory=dict)  # accuracy, ece, temperature, samples
    reason: str = ""
    candidate_id: str = ""
    note: str = ""
    created_at: float = field(default_factory=time.time)


class Lineage:
    """Append and read one teacher's records (oldest first)."""

    def __init__(self, log: LabelLog, teacher: str) -> None:
        self.log = log
        self.teacher = teacher
        self._space = f"teacher:{teacher}"

    async def records(self) -> list[VersionRecord]:
        blobs = await self.log.list_state(self._space, "lineage/")
        return [VersionRecord(**json.loads(blobs[key])) for key in sorted(blobs)]

    async def append(self, record: VersionRecord) -> VersionRecord:
        """Store ``record`` after the existing ones; returns it."""
        # Keys sort by time; a random suffix keeps two appends in the same microsecond (from two
        # replicas) apart without reading what is stored.
        key = f"lineage/{record.created_at:017.6f}-{uuid.uuid4().hex[:12]}"
        await self.log.save_state(self._space, key, json.dumps(asdict(record)).encode())
        return record

    async def ensure_initial(self, version: str, note: str = "") -> None:
        """Record the version the service started with, the first time it serves this teacher."""
        if not await self.log.list_state(self._space, "lineage/"):
            await self.append(VersionRecord(version=version, parent="", origin="initial",
                                            decision="served", note=note))

"""Replicas sharing a label log merge their topics' policy statistics, in rounds.

Round r starts when the wall clock passes ``r * interval_s`` (replicas agree on rounds by their
clocks). Each replica publishes its policy state for the round under ``sync/<r>/<replica>`` in
the topic's store, waits half an interval for the others, then merges the states of the round it
finds (``ThresholdPolicy.merge``; base plus each replica's delta, so nothing is counted twice).
Staleness bound: a replica's policy lacks the others' samples of at most the last
``1.5 * interval_s`` seconds. A replica whose state arrives late for a round is merged in the next
one; replicas that saw different sets in one round agree again after the next full round.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any, Mapping

from pseudostream.server.labellog.base import LabelLog
from pseudostream.server.topic import TopicRuntime

__all__ = ["PolicySync"]

log = logging.getLogger(__name__)

_KEEP_ROUNDS = 3


class PolicySync:
    """Runs the merge rounds of every topic of this replica until cancelled."""

    def __init__(self, topics: Mapping[str, TopicRuntime], label_log: LabelLog, replica_id: str,
                 interval_s: float) -> None:
        self.topics, self.log = topics, label_log
        self.replica_id, self.interval_s = replica_id, interval_s
        self.rounds = 0

    async def run(self) -> None:
        while True:
            now = time.time()
            round_no = int(now // self.interval_s) + 1
            await asyncio.sleep(round_no * self.interval_s - now)
            try:
                await self.sync_round(round_no)
            except Exception as exc:  # a failed round is healed by the next one
                log.warning("policy sync round %d failed: %s", round_no, exc)

    async def sync_round(self, round_no: int) -> None:
        """Publish, wait for the others, merge; drop rounds older than a few intervals."""
        prefix = f"sync/{round_no:012d}/"
        published: dict[str, dict[str, Any]] = {}
        for name, topic in self.topics.items():
            state = topic.policy.state_dict()
            state["_samples"] = topic.policy.samples_since_merge
            published[name] = state
            await self.log.save_state(name, prefix + self.replica_id, json.dumps(state).encode())
        await asyncio.sleep(self.interval_s / 2)
        for name, topic in self.topics.items():
            blobs = await self.log.list_state(name, prefix)
            others = [json.loads(b) for key, b in sorted(blobs.items())
                      if key != prefix + self.replica_id]
            topic.policy.merge(others, published=published[name])
            old = await self.log.list_state(name, "sync/")
            await self.log.delete_state(name, [k for k in old
                                               if int(k.split("/")[1]) <= round_no - _KEEP_ROUNDS])
        self.rounds += 1

"""A topic at run time: its threshold policy, its counters, and their checkpoints."""

from __future__ import annotations

import json
import logging
from typing import Any

import numpy as np

from pseudostream.server.backends.base import TeacherMetadata
from pseudostream.server.config import TopicConfig
from pseudostream.server.labellog.base import LabelLog
from pseudostream.server.selection import Decisions, PolicyBatch, make_policy

__all__ = ["TopicRuntime"]

log = logging.getLogger(__name__)

_STATE_KEY = "policy"


class TopicRuntime:
    """One labeling stream: a teacher name, a policy that owns its state, and counters.

    The policy state and counters are checkpointed to the label log's store (every
    ``checkpoint_every`` batches and at shutdown) and restored on start, so a restart continues
    the curriculum instead of starting it again.
    """

    def __init__(self, name: str, config: TopicConfig, teacher: TeacherMetadata,
                 label_log: LabelLog, checkpoint_every: int = 50) -> None:
        self.name = name
        self.config = config
        self.teacher = teacher
        self.log = label_log
        self.checkpoint_every = checkpoint_every
        self.policy = make_policy(config.policy.name, teacher.num_classes, config.policy.params)
        self.samples = 0
        self.accepted = 0
        self.accepted_per_class = np.zeros(teacher.num_classes, np.int64)
        self._batches_since_checkpoint = 0

    @property
    def classes(self) -> tuple[str, ...]:
        return self.teacher.classes

    def select(self, batch: PolicyBatch) -> Decisions:
        """Run the policy on one batch and count the outcome."""
        decisions = self.policy.select(batch)
        self.samples += len(decisions)
        accepted_labels = decisions.label[decisions.accept & (decisions.label >= 0)]
        self.accepted += int(decisions.accept.sum())
        self.accepted_per_class += np.bincount(accepted_labels, minlength=self.teacher.num_classes)
        self._batches_since_checkpoint += 1
        return decisions

    @property
    def checkpoint_due(self) -> bool:
        return self._batches_since_checkpoint >= self.checkpoint_every

    def _state(self) -> dict[str, Any]:
        return {
            "policy": self.policy.name,
            "policy_state": self.policy.state_dict(),
            "samples": self.samples,
            "accepted": self.accepted,
            "accepted_per_class": self.accepted_per_class.tolist(),
        }

    async def checkpoint(self) -> None:
        """Save the policy state and counters to the label log's store."""
        blob = json.dumps(self._state(), default=_json_default).encode()
        await self.log.save_state(self.name, _STATE_KEY, blob)
        self._batches_since_checkpoint = 0

    async def restore(self) -> bool:
        """Load the last checkpoint, if one exists for the same policy; returns whether it did."""
        blob = await self.log.load_state(self.name, _STATE_KEY)
        if blob is None:
            return False
        state = json.loads(blob)
        if state.get("policy") != self.policy.name:
            log.warning("topic %s: checkpoint is for policy %r, now %r; starting fresh",
                        self.name, state.get("policy"), self.policy.name)
            return False
        self.policy.load_state_dict(state["policy_state"])
        self.samples = int(state["samples"])
        self.accepted = int(state["accepted"])
        per_class = np.asarray(state["accepted_per_class"], np.int64)
        if per_class.shape == self.accepted_per_class.shape:
            self.accepted_per_class = per_class
        log.info("topic %s: restored policy state after %d samples", self.name, self.samples)
        return True


def _json_default(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"cannot checkpoint {type(value).__name__}")

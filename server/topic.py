"""A topic at run time: its threshold policy, its counters, and their checkpoints."""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, Any

import numpy as np

from pseudostream.server.adaptation.chain import AdapterChain
from pseudostream.server.backends.base import TeacherMetadata
from pseudostream.server.config import TopicConfig
from pseudostream.server.errors import ConfigError
from pseudostream.server.idempotency import concat_decisions
from pseudostream.server.labellog.base import LabelLog
from pseudostream.server.selection import Decisions, PolicyBatch, ThresholdPolicy, make_policy
from pseudostream.server.selection.dist_align import AlignedPolicy, DistributionAlignment
from pseudostream.server.views import AugmentedViews

if TYPE_CHECKING:
    from pseudostream.server.adaptation.weight_loop import WeightAdaptation

__all__ = ["TopicRuntime", "build_policy"]

log = logging.getLogger(__name__)

_STATE_KEY = "policy"


def build_policy(config: TopicConfig, num_classes: int) -> ThresholdPolicy:
    """The topic's policy, wrapped in distribution alignment when configured."""
    policy = make_policy(config.policy.name, num_classes, config.policy.params)
    if policy.needs_views and config.views is None:
        raise ConfigError(f"policy {policy.name!r} needs several views per sample: "
                          "set the topic's `views` (test-time augmentation)")
    if config.dist_align is not None:
        align = DistributionAlignment(num_classes, **config.dist_align.model_dump())
        policy = AlignedPolicy(policy, align)
    return policy


class TopicRuntime:
    """One labeling stream: a policy that owns its state, and the topic's counters.

    Counters: samples, accepted (per class), predicted per class, the sum of weights (SoftMatch's
    quantity = mean weight) and, for samples carrying an audit label, the weighted precision
    (SoftMatch's quality). Policy state and counters are checkpointed to the label log's store
    every ``checkpoint_every`` batches and at shutdown, and restored on start, so a restart
    continues the curriculum instead of starting it again.
    """

    def __init__(self, name: str, config: TopicConfig, teacher: TeacherMetadata,
                 label_log: LabelLog, checkpoint_every: int = 50) -> None:
        self.name = name
        self.config = config
        self.teacher = teacher
        self.log = label_log
        self.checkpoint_every = checkpoint_every
        self.policy = build_policy(config, teacher.num_classes)
        self.views = AugmentedViews(config.views) if config.views is not None else None
        self.adapters: AdapterChain | None = None  # set by the core (it knows the model folder)
        self.weight: WeightAdaptation | None = None  # weight-level adaptation, set by the core
        c = teacher.num_classes
        self.samples = self.accepted = self.audited = 0
        self.weight_sum = self.audit_weight = self.audit_correct = 0.0
        self.accepted_per_class = np.zeros(c, np.int64)
        self.predicted_per_class = np.zeros(c, np.int64)
        self._batches_since_checkpoint = 0

    @property
    def classes(self) -> tuple[str, ...]:
        return self.teacher.classes

    @property
    def quantity(self) -> float:
        """Mean weight over every decided sample (0 before the first)."""
        return self.weight_sum / self.samples if self.samples else 0.0

    @property
    def quality(self) -> float:
        """Weighted precision over audited samples: sum w 1[label = y] / sum w (0 if none)."""
        return self.audit_correct / self.audit_weight if self.audit_weight else 0.0

    def select(self, batch: PolicyBatch, trusted: np.ndarray | None = None) -> Decisions:
        """Run the policy on one batch and count the outcome. Rows not ``trusted`` are decided
        under the current state but do not move it (untrusted producers cannot steer it)."""
        if trusted is None or trusted.all():
            return self._count(self.policy.select(batch))
        if not trusted.any():
            return self._count(self.policy.decide(batch))
        order = np.concatenate([np.flatnonzero(trusted), np.flatnonzero(~trusted)])
        parts = [self.policy.select(_rows(batch, trusted)), self.policy.decide(_rows(batch, ~trusted))]
        position = np.empty(order.size, np.int64)
        position[order] = np.arange(order.size)
        return self._count(concat_decisions(parts).take(position))

    def _count(self, d: Decisions) -> Decisions:
        c = self.teacher.num_classes
        self.samples += len(d)
        self.accepted += int(d.accept.sum())
        self.weight_sum += float(d.weight.sum())
        self.predicted_per_class += np.bincount(d.label[d.label >= 0], minlength=c)
        self.accepted_per_class += np.bincount(d.label[d.accept & (d.label >= 0)], minlength=c)
        self._batches_since_checkpoint += 1
        return d

    def score_audit(self, decisions: Decisions, truth: np.ndarray) -> None:
        """Fold audited samples (``truth`` >= 0; -1 where a sample has no audit label) into quality."""
        audited = truth >= 0
        if not audited.any():
            return
        w = decisions.weight[audited].astype(np.float64)
        self.audited += int(audited.sum())
        self.audit_weight += float(w.sum())
        self.audit_correct += float(w[decisions.label[audited] == truth[audited]].sum())

    @property
    def checkpoint_due(self) -> bool:
        return self._batches_since_checkpoint >= self.checkpoint_every

    _COUNTERS = ("samples", "accepted", "audited", "weight_sum", "audit_weight", "audit_correct")
    _PER_CLASS = ("accepted_per_class", "predicted_per_class")

    async def checkpoint(self) -> None:
        """Save the policy state and counters to the label log's store."""
        state: dict[str, Any] = {"policy": self.policy.name, "policy_state": self.policy.state_dict()}
        state.update({k: getattr(self, k) for k in self._COUNTERS})
        state.update({k: getattr(self, k).tolist() for k in self._PER_CLASS})
        if self.adapters is not None:
            state["adapters"] = self.adapters.state_dict()
        blob = json.dumps(state, default=_json_default).encode()
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
        for key in self._COUNTERS:
            setattr(self, key, type(getattr(self, key))(state.get(key, 0)))
        for key in self._PER_CLASS:
            values = np.asarray(state.get(key, []), np.int64)
            if values.shape == getattr(self, key).shape:
                setattr(self, key, values)
        if self.adapters is not None and "adapters" in state:
            self.adapters.load_state_dict(state["adapters"])
        log.info("topic %s: restored policy state after %d samples", self.name, self.samples)
        return True


def _rows(batch: PolicyBatch, mask: np.ndarray) -> PolicyBatch:
    """The rows of ``batch`` where ``mask`` is true."""
    return PolicyBatch(probs=batch.probs[mask], ids=np.asarray(batch.ids, dtype=object)[mask],
                       logits=None if batch.logits is None else batch.logits[mask],
                       views=None if batch.views is None else batch.views[:, mask])


def _json_default(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"cannot checkpoint {type(value).__name__}")

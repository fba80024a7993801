"""The selection interface: a policy turns a batch of calibrated probabilities into decisions.

Policies own their state (O(classes), keyed by class; per-sample memory keyed by sample id and
bounded), run on batched numpy, and are checkpointed through ``state_dict``/``load_state_dict``.
Label generation (argmax, or the aligned argmax) is separate from masking.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar, Sequence

import numpy as np

from pseudostream.server.registry import Registry

__all__ = ["PolicyBatch", "Decisions", "ThresholdPolicy", "PerClassThresholdPolicy", "POLICIES",
           "REASON_BELOW_THRESHOLD"]

REASON_BELOW_THRESHOLD = "below_class_threshold"


@dataclass(frozen=True)
class PolicyBatch:
    """What a policy sees for one batch of one topic.

    probs:  [B, C] float, temperature-scaled class probabilities (sigmoid scores for multi-label).
    logits: [B, C] float, temperature-scaled logits (``probs = softmax(logits)``), or None.
    ids:    B sample ids (strings), for policies with per-sample memory.
    views:  [K, B, C] probabilities of K views (test-time augmentation / ensemble), or None.
    """

    probs: np.ndarray
    ids: Sequence[str]
    logits: np.ndarray | None = None
    views: np.ndarray | None = None

    @property
    def size(self) -> int:
        return int(self.probs.shape[0])

    @property
    def num_classes(self) -> int:
        return int(self.probs.shape[1])


@dataclass
class Decisions:
    """One decision per sample, as columns (no per-sample Python objects).

    accept:     [B] bool
    label:      [B] int64 (the hard label; -1 where a multi-label decision carries lists instead)
    confidence: [B] float32, the confidence the mask was computed on
    weight:     [B] float32, 1 for hard masks, soft for SoftMatch-style weighting, 0 if rejected
    threshold:  [B] float32, the threshold used for the sample's class
    reason:     [B] str, empty where accepted, else why not (e.g. "below_class_threshold")
    positive / negative: [B, C] bool for multi-label decisions (classes neither are "unknown").
    """

    accept: np.ndarray
    label: np.ndarray
    confidence: np.ndarray
    weight: np.ndarray
    threshold: np.ndarray
    reason: np.ndarray
    positive: np.ndarray | None = None
    negative: np.ndarray | None = None
    soft: np.ndarray | None = field(default=None, repr=False)

    @classmethod
    def from_mask(
        cls,
        accept: np.ndarray,
        label: np.ndarray,
        confidence: np.ndarray,
        threshold: np.ndarray,
        weight: np.ndarray | None = None,
        reason: str = REASON_BELOW_THRESHOLD,
    ) -> "Decisions":
        """Build decisions from a hard mask; rejected samples get ``reason`` and weight 0."""
        accept = np.asarray(accept, dtype=bool)
        w = np.ones(accept.shape, np.float32) if weight is None else np.asarray(weight, np.float32)
        return cls(
            accept=accept,
            label=np.asarray(label, dtype=np.int64),
            confidence=np.asarray(confidence, dtype=np.float32),
            weight=np.where(accept, w, np.float32(0)).astype(np.float32),
            threshold=np.broadcast_to(np.asarray(threshold, np.float32), accept.shape).copy(),
            reason=np.where(accept, "", reason),
        )

    def __len__(self) -> int:
        return int(self.accept.shape[0])

    def take(self, index: np.ndarray | slice) -> "Decisions":
        """The decisions of a subset of samples, in the given order."""

        def pick(a: np.ndarray | None) -> np.ndarray | None:
            return None if a is None else a[index]

        return Decisions(
            accept=self.accept[index],
            label=self.label[index],
            confidence=self.confidence[index],
            weight=self.weight[index],
            threshold=self.threshold[index],
            reason=self.reason[index],
            positive=pick(self.positive),
            negative=pick(self.negative),
            soft=pick(self.soft),
        )


class ThresholdPolicy(ABC):
    """A selection policy: ``select`` = ``decide`` and ``update`` in the method's published order.

    Subclasses set ``name`` (the config name) and ``update_first`` (True where the method updates
    its statistics before masking, as FreeMatch does), and implement the four abstract methods.
    """

    name: str
    update_first: ClassVar[bool] = False
    needs_views: ClassVar[bool] = False  # True where the method needs K views per sample (UPS)

    def __init__(self, num_classes: int) -> None:
        self.num_classes = num_classes

    def select(self, batch: PolicyBatch) -> Decisions:
        """Decide for one batch and advance the policy's state, in the published order."""
        if self.update_first:
            self.update(batch)
            return self.decide(batch)
        decisions = self.decide(batch)
        self.update(batch)
        return decisions

    @abstractmethod
    def decide(self, batch: PolicyBatch) -> Decisions:
        """Decisions for ``batch`` under the current state; does not change state."""

    @abstractmethod
    def update(self, batch: PolicyBatch) -> None:
        """Advance the policy's statistics with ``batch``."""

    @abstractmethod
    def thresholds(self) -> np.ndarray:
        """The current threshold per class, [C] float (for GetTopic and metrics)."""

    def state_dict(self) -> dict[str, Any]:
        """The policy's state as plain values and numpy arrays (checkpointed by the service)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what ``state_dict`` returned."""


class PerClassThresholdPolicy(ThresholdPolicy):
    """A policy whose mask is ``max p >= threshold[argmax p]``: subclasses give the vector."""

    @abstractmethod
    def _thresholds(self) -> np.ndarray:
        """The current [C] thresholds, float64."""

    def thresholds(self) -> np.ndarray:
        return self._thresholds().astype(np.float32)

    def decide(self, batch: PolicyBatch) -> Decisions:
        from pseudostream.server.selection._common import batch_probs

        probs = batch_probs(batch, self.num_classes, self.name)
        conf, label = probs.max(axis=1), probs.argmax(axis=1)
        thr = self._thresholds()[label]
        return Decisions.from_mask(conf >= thr, label, conf, thr)


POLICIES: Registry[ThresholdPolicy] = Registry("threshold policy")

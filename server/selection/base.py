"""The selection interface: a policy turns a batch of calibrated probabilities into decisions.

Policies own their state (O(classes), keyed by class; per-sample memory keyed by sample id and
bounded), run on batched numpy, and are checkpointed through ``state_dict``/``load_state_dict``.
Label generation (argmax, or the aligned argmax) is separate from masking.

Merging replicas (``ThresholdPolicy.merge``). Several replicas serve one topic, each running its
own copy of the policy on the samples it sees. Every few seconds each replica publishes its state
and merges everyone's, so that N replicas act as ONE policy that saw all their samples. The caller
(one round; states travel as JSON):

    state = policy.state_dict(); state["_samples"] = policy.samples_since_merge   # publish
    ... gather the other replicas' states of this round (``select`` may go on meanwhile) ...
    policy.merge(others, published=state)

Every replica must merge the same set of states, each state once: rounds (e.g. one Redis key per
round and replica), not "the latest state of each peer", which would merge a slow peer's state
twice (its delta counted twice) or skip one (its delta lost). With ``published``, the samples
selected between taking the state and merging are replayed on the merged state and become this
replica's delta for the next round, so the merge is exact however long the exchange takes.

Base plus deltas. After a merge every replica holds the same state: the *base*. Each policy's
``state_dict`` also carries, under "merge", what it needs to say what changed since its base
(the base itself, a count, or how far its EMAs have moved), so a merge adds every replica's delta
to the base exactly once. Merging full states instead would count the history they share once
per replica and per round. ``merge`` folds this replica's state (as published) and the others'
into one state with a pure, order-independent function of that set of states (sums in a canonical
order), then loads it: replicas that merged the same set of states hold identical states, bit for
bit.

- Additive statistics (confident learning's counts and running means, Curriculum's sample count):
  base + the sum of the deltas. Exact: equal, up to float rounding, to one policy that saw the
  replicas' new samples as one batch.
- Windows and memories (Curriculum, Adsh, multi-label quotas, FlexMatch's per-id memory): the
  base part, then every replica's new entries since the merge, interleaved by their relative
  position in each replica's period, newest ``window`` (or ``max_memory``) kept. Exact as a set
  while nothing is evicted; which entries are evicted first is an approximation of arrival order.
- EMA statistics (FreeMatch tau_g and p_tilde, SoftMatch mu and var, DebiasPL q_hat, distribution
  alignment's p_model, multi-label tau+): each replica records lam_j = sum of -log m over its
  updates since the base x0, so its value is S_j = d_j x0 + (1 - d_j) mu_j with d_j = exp(-lam_j)
  and mu_j the EMA-weighted mean of its inputs. One EMA over all replicas' updates keeps
  D = prod_j d_j of x0 and shares the rest among the inputs by update rate:
      merged = D x0 + (1 - D) sum_j (lam_j / Lam) mu_j = x0 + kappa sum_j g_j (S_j - x0),
      kappa = (1 - D) / Lam,  g_j = lam_j / (1 - d_j),  Lam = sum_j lam_j.
  With frequent merges (small lam), kappa and g_j ~ 1: the base plus every replica's drift.
  Exact when each replica's batch statistics are constant within the period and the replicas'
  updates interleave evenly (so exact in expectation on a stationary stream); otherwise it differs from one EMA over the interleaved stream only in how the inputs are
  weighted by recency ("up to ordering"), which vanishes as merges get more frequent. A plain
  mean of the replicas' EMAs, sample-weighted, is NOT what one policy would hold: each replica's
  EMA forgot the base only by its own d_j, so the mean adapts N times slower than one policy
  seeing all N replicas' traffic (it agrees only once the stream is stationary and the EMAs have
  converged). Values stay within the inputs' range (a convex combination of x0 and the mu_j).
- Distribution alignment before its first merge has no base (p_model is initialized by the first
  batch): the p_models are averaged with the replicas' "_samples" as weights.
- Stateless policies (fixed, uncertainty): nothing to merge.

Robustness. Because the result depends only on the set of states, a replica whose base drifted
(a missed round, a restart, a merge without ``published`` after selecting) is pulled back at the
next full round: EMA bases are averaged, additive statistics take the base with the most history,
windows the longest base part. A replica that starts empty joins as a copy of one peer: it loads
that peer's published state (``load_state_dict``, and ``samples_since_merge = state["_samples"]``)
and merges the other states of that round, which gives it the same state as everyone else.
"""

from __future__ import annotations

import dataclasses
import logging
from abc import ABC, abstractmethod
from collections import deque
from dataclasses import dataclass, field
from typing import Any, ClassVar, Mapping, Sequence

import numpy as np

from pseudostream.server.errors import ConfigError, InvalidInput
from pseudostream.server.registry import Registry

__all__ = ["PolicyBatch", "Decisions", "ThresholdPolicy", "PerClassThresholdPolicy", "POLICIES",
           "REASON_BELOW_THRESHOLD"]

REASON_BELOW_THRESHOLD = "below_class_threshold"

logger = logging.getLogger(__name__)


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
    its statistics before masking, as FreeMatch does), and implement the four abstract methods;
    stateful ones implement ``_merged_state`` so replicas can ``merge`` (module docstring).
    ``samples_since_merge`` counts the samples ``select`` has seen since the last merge; the
    newest ``replay_limit`` of them are kept (without views) for ``merge(published=...)``.
    """

    name: str
    update_first: ClassVar[bool] = False
    needs_views: ClassVar[bool] = False  # True where the method needs K views per sample (UPS)
    replay_limit: ClassVar[int] = 8192

    def __init__(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.samples_since_merge = 0
        self._recent: deque[PolicyBatch] = deque()  # the latest batches, >= replay_limit samples
        self._recent_size = 0

    def select(self, batch: PolicyBatch) -> Decisions:
        """Decide for one batch and advance the policy's state, in the published order."""
        self._record(batch)
        return self._step(batch)

    def _record(self, batch: PolicyBatch) -> None:
        """Count a selected batch and keep it for replay (views dropped: no ``update`` reads them)."""
        self.samples_since_merge += batch.size
        self._recent.append(dataclasses.replace(batch, views=None))
        self._recent_size += batch.size
        while self._recent_size - self._recent[0].size >= self.replay_limit:
            self._recent_size -= self._recent.popleft().size

    def _selected_since(self, samples: int) -> list[PolicyBatch] | None:
        """The batches selected after the first ``samples`` since the merge; None if not kept."""
        extra = self.samples_since_merge - samples
        if extra < 0:
            raise InvalidInput(
                f"{self.name} policy: the published state counts {samples} samples, more than the "
                f"{self.samples_since_merge} this policy selected since its last merge: it is not "
                "this replica's state of this round"
            )
        later: list[PolicyBatch] = []
        for batch in reversed(self._recent):
            if extra <= 0:
                break
            later.insert(0, batch)
            extra -= batch.size
        return later if extra == 0 else None

    def _step(self, batch: PolicyBatch) -> Decisions:
        """``decide`` and ``update`` in the published order, without merge bookkeeping."""
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

    def merge(self, others: Sequence[dict[str, Any]], published: dict[str, Any] | None = None) -> None:
        """Fold other replicas' states (their state_dict()s, each with the number of samples that
        replica has seen since the last merge, under the key "_samples") into this policy, so that
        after every replica has merged everyone's states they all hold the same, combined state.

        ``published``: this replica's own state for the round, as published (``state_dict()``
        with "_samples"); the batches selected since it was taken are replayed on the merged
        state and count toward the next round (``samples_since_merge``). Without it, this
        replica's current state is used and ``samples_since_merge`` resets to 0: exact only if
        nothing was selected since publishing. (If more than ``replay_limit`` samples were
        selected since, the current state is used too, with a warning.)
        ``others``: one state per other replica. A state passed twice, or this replica's own
        among them, adds its delta twice; identical states are not dropped, since two replicas
        can legitimately hold the same state: filter by replica on the caller's side.
        InvalidInput without "_samples"; ConfigError if a state does not fit this policy.
        The scheme, and what is exact and what approximate: the module docstring.
        """
        later: list[PolicyBatch] | None = []
        if published is not None:
            later = self._selected_since(_checked(self.name, published)["_samples"])
            if later is None:
                logger.warning("%s policy: more than replay_limit=%d samples selected since the state "
                               "was published; merging the current state", self.name, self.replay_limit)
        if published is None or later is None:
            own, later = self.state_dict(), []
            own["_samples"] = self.samples_since_merge
        else:
            own = dict(published)
        states = [own, *(_checked(self.name, s) for s in others)]
        try:
            self.load_state_dict(self._merged_state(states))
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            raise ConfigError(
                f"{self.name} policy: cannot merge another replica's state ({exc!r}); every "
                "replica of a topic must run the same policy with the same parameters"
            ) from None
        self.samples_since_merge, self._recent_size = 0, 0
        self._recent.clear()
        for batch in later:  # what this replica selected since publishing: the next round's delta
            self._record(batch)
            self.update(batch)

    def _merged_state(self, states: list[dict[str, Any]]) -> dict[str, Any]:
        """The combined state of all replicas' ``states`` (this replica's first, each with
        "_samples"), as ``load_state_dict`` takes it; must not depend on the states' order.
        The default keeps this replica's state: right for stateless policies."""
        return states[0]


def _checked(owner: str, state: Any) -> dict[str, Any]:
    """A replica's state for ``merge``: a mapping with a non-negative integer "_samples"."""
    samples = state.get("_samples") if isinstance(state, Mapping) else None
    if isinstance(samples, bool) or not isinstance(samples, (int, np.integer)) or samples < 0:
        raise InvalidInput(
            f"{owner} policy: merge needs each replica's state_dict() with \"_samples\" set to "
            f"that replica's samples_since_merge (an integer >= 0), got {samples!r}"
        )
    return dict(state)


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

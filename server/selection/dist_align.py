"""Distribution alignment, as a composable step in front of any softmax policy.

Berthelot et al., "ReMixMatch", ICLR 2020; USB ``semilearn/algorithms/hooks/dist_align.py``
(DistAlignEMAHook). p_model is an EMA of the batch mean of p, initialized with the first batch
mean; q = p * (p_target + 1e-6) / (p_model + 1e-6), renormalized. The EMA is updated before the
batch is aligned, as in USB. Only meaningful for softmax outputs (not multi-label scores).

``AlignedPolicy`` wraps any policy: the service config's ``dist_align: {...}`` for a topic builds
a ``DistributionAlignment`` and wraps the topic's policy, so no policy needs its own option.

Replicas merge p_model as an EMA (``base.py``). Before the first merge there is no common base (each
replica initialized p_model with its own first batch): the replicas' p_models are then averaged
with their "_samples" as weights. ``AlignedPolicy`` merges both parts.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import numpy as np

from pseudostream.server.errors import ConfigError
from pseudostream.server.selection._common import EmaTracks, Momentum, merge_ema, weighted_mean
from pseudostream.server.selection.base import Decisions, PolicyBatch, ThresholdPolicy

__all__ = ["DistributionAlignment", "AlignedPolicy"]

_EPS = 1e-6


class DistributionAlignment:
    """Aligns predicted distributions so their running marginal matches ``target``."""

    def __init__(
        self,
        num_classes: int,
        momentum: float = 0.999,
        target: str | Sequence[float] = "uniform",
        momentum_per_sample: float | None = None,
    ) -> None:
        self.num_classes = num_classes
        self.momentum = Momentum("dist_align", momentum, momentum_per_sample)
        if isinstance(target, str):
            if target != "uniform":
                raise ConfigError(f"dist_align: target must be 'uniform' or a list of {num_classes} priors")
            t = np.full(num_classes, 1.0 / num_classes)
        else:
            t = np.asarray(target, np.float64)
            if t.shape != (num_classes,) or (t < 0).any() or t.sum() <= 0:
                raise ConfigError(
                    f"dist_align: target must be {num_classes} non-negative priors, got {target!r}"
                )
            t = t / t.sum()
        self.p_target = t
        self.p_model: np.ndarray | None = None
        self._ema: EmaTracks | None = None  # None until a merge gives p_model a common base

    def update(self, probs: np.ndarray) -> None:
        """Fold a batch's mean prediction into p_model."""
        probs = np.asarray(probs, np.float64)
        if probs.shape[0] == 0:
            return
        mean = probs.mean(axis=0)
        if self.p_model is None:
            self.p_model = mean
        else:
            m = self.momentum.for_batch(probs.shape[0])
            self.p_model = m * self.p_model + (1.0 - m) * mean
            if self._ema is not None:
                self._ema.forget(m, "p_model")

    def ratio(self) -> np.ndarray:
        """(p_target + eps) / (p_model + eps); ones before the first batch."""
        if self.p_model is None:
            return np.ones(self.num_classes)
        return (self.p_target + _EPS) / (self.p_model + _EPS)

    def align(self, probs: np.ndarray) -> np.ndarray:
        """Aligned, renormalized probabilities under the current p_model (no state change)."""
        q = np.asarray(probs, np.float64) * self.ratio()
        return q / q.sum(axis=-1, keepdims=True)

    def __call__(self, probs: np.ndarray) -> np.ndarray:
        """Update p_model with ``probs``, then align them (USB's order)."""
        self.update(probs)
        return self.align(probs)

    def state_dict(self) -> dict[str, Any]:
        return {
            "p_model": None if self.p_model is None else self.p_model.tolist(),
            "p_target": self.p_target.tolist(),
            "merge": None if self._ema is None else self._ema.state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pm = state.get("p_model")
        self.p_model = None if pm is None else np.asarray(pm, np.float64).reshape(self.num_classes)
        self.p_target = np.asarray(state["p_target"], np.float64).reshape(self.num_classes)
        # "merge": None means no base yet; no "merge" key (a merged state) makes p_model the base
        track = state.get("merge", False)
        if self.p_model is None or track is None:
            self._ema = None
        else:
            self._ema = EmaTracks(p_model=self.p_model)
            self._ema.load(track or None, p_model=self.p_model)

    def merged_state(self, states: Sequence[dict[str, Any]]) -> dict[str, Any]:
        """The combined state of the replicas' ``states`` (each with "_samples"); see ``base.py``."""
        live = [s for s in states if s.get("p_model") is not None]
        based = [s for s in live if s.get("merge") is not None]
        if based:
            p_model = merge_ema(based, "p_model").tolist()
        elif live:
            p_model = weighted_mean([s["p_model"] for s in live], [s["_samples"] for s in live]).tolist()
        else:
            p_model = None
        return {"p_model": p_model, "p_target": states[0]["p_target"]}


class AlignedPolicy(ThresholdPolicy):
    """A policy applied to distribution-aligned probabilities.

    ``select`` updates the alignment first, then runs the inner policy's ``select`` on the aligned
    batch (the inner policy keeps its own published order). Logits are shifted by
    log(ratio), so softmax(logits) stays equal to the aligned probabilities; views are aligned
    with the same ratio (views never update p_model).
    """

    name = "aligned"

    def __init__(self, inner: ThresholdPolicy, align: DistributionAlignment) -> None:
        if inner.num_classes != align.num_classes:
            raise ConfigError("dist_align: num_classes differs from the wrapped policy's")
        super().__init__(inner.num_classes)
        self.inner, self.align = inner, align
        self.name = f"{inner.name}+dist_align"  # what labels and checkpoints record

    def _aligned(self, batch: PolicyBatch) -> PolicyBatch:
        ratio = self.align.ratio()
        logits = None if batch.logits is None else np.asarray(batch.logits, np.float64) + np.log(ratio)
        views = None if batch.views is None else self.align.align(batch.views)
        return dataclasses.replace(batch, probs=self.align.align(batch.probs), logits=logits, views=views)

    def select(self, batch: PolicyBatch) -> Decisions:
        self._record(batch)
        self.align.update(batch.probs)
        return self.inner._step(self._aligned(batch))

    def decide(self, batch: PolicyBatch) -> Decisions:
        return self.inner.decide(self._aligned(batch))

    def update(self, batch: PolicyBatch) -> None:
        self.align.update(batch.probs)
        self.inner.update(self._aligned(batch))

    def thresholds(self) -> np.ndarray:
        return self.inner.thresholds()

    def state_dict(self) -> dict[str, Any]:
        return {"align": self.align.state_dict(), "inner": self.inner.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.align.load_state_dict(state["align"])
        self.inner.load_state_dict(state["inner"])

    def _merged_state(self, states: list[dict[str, Any]]) -> dict[str, Any]:
        def part(key: str) -> list[dict[str, Any]]:
            return [{**s[key], "_samples": s["_samples"]} for s in states]

        return {"align": self.align.merged_state(part("align")),
                "inner": self.inner._merged_state(part("inner"))}

"""Curriculum Labeling: accept the top q% most confident, q growing by stages.

Cascante-Bonilla et al., "Curriculum Labeling: Revisiting Pseudo-Labeling for Semi-Supervised
Learning", AAAI 2021; uvavision/Curriculum-Labeling ``methods/entropy/curriculum_labeling.py``
(``do_iteration``): threshold = np.percentile(max scores, 100 - mu * k), mu = 20, stage k = 1, 2,
... (20%, 40%, ..., 100% kept), one global threshold (not per class); accept conf >= threshold.

Online: the percentile is taken over a ring buffer of the last ``window`` confidences, and the
stage advances by samples seen: k = ceil(seen / stage_samples), capped where mu * k reaches 100.
The paper ranks the very set it labels, so the batch joins the window before masking
(``update_first``). ``np.percentile``'s linear interpolation, as in the official code.

Replicas merge (``base.py``): samples seen = base + everyone's samples since the last merge (so
the stage advances with the topic's total traffic); the window is the base part plus everyone's
new confidences, interleaved, newest ``window`` kept.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from pseudostream.server.errors import ConfigError
from pseudostream.server.selection._common import batch_probs, merge_windows
from pseudostream.server.selection._window import RowWindow
from pseudostream.server.selection.base import POLICIES, Decisions, PolicyBatch, ThresholdPolicy

__all__ = ["CurriculumPolicy"]


@POLICIES.register("curriculum")
class CurriculumPolicy(ThresholdPolicy):
    """A global percentile threshold over a rolling window; the kept share grows by stage."""

    name = "curriculum"
    update_first = True

    def __init__(
        self,
        num_classes: int,
        window: int = 10_000,
        stage_samples: int = 10_000,
        step_percent: float = 20.0,
    ) -> None:
        super().__init__(num_classes)
        if int(window) < 1 or int(stage_samples) < 1:
            raise ConfigError("curriculum policy: window and stage_samples must be >= 1")
        if not 0.0 < step_percent <= 100.0:
            raise ConfigError(f"curriculum policy: step_percent must be in (0, 100], got {step_percent!r}")
        self.stage_samples, self.step_percent = int(stage_samples), float(step_percent)
        self.num_stages = math.ceil(100.0 / self.step_percent)
        self._window = RowWindow(int(window), 1)
        self.seen = 0
        self._fresh = 0  # samples seen since the last merge

    @property
    def stage(self) -> int:
        """The current stage k (1-based), by samples seen including the latest batch."""
        return min(max(1, -(-self.seen // self.stage_samples)), self.num_stages)

    def _threshold(self) -> float:
        if len(self._window) == 0:
            return 1.0
        percentile = max(100.0 - self.step_percent * self.stage, 0.0)
        return float(np.percentile(self._window.values()[:, 0], percentile))

    def thresholds(self) -> np.ndarray:
        return np.full(self.num_classes, self._threshold(), np.float32)

    def decide(self, batch: PolicyBatch) -> Decisions:
        probs = batch_probs(batch, self.num_classes, self.name)
        conf, label = probs.max(axis=1), probs.argmax(axis=1)
        thr = self._threshold()
        return Decisions.from_mask(conf >= thr, label, conf, thr)

    def update(self, batch: PolicyBatch) -> None:
        probs = batch_probs(batch, self.num_classes, self.name)
        self._window.push(probs.max(axis=1)[:, None])
        self.seen += probs.shape[0]
        self._fresh += probs.shape[0]

    def state_dict(self) -> dict[str, Any]:
        window = self._window.values()[:, 0].tolist()
        return {"window": window, "seen": self.seen, "merge": {"fresh": self._fresh}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._window.load(state["window"])
        self.seen = int(state["seen"])
        self._fresh = int((state.get("merge") or {}).get("fresh", 0))

    def _merged_state(self, states: list[dict[str, Any]]) -> dict[str, Any]:
        fresh = [int((s.get("merge") or {}).get("fresh", 0)) for s in states]
        base_seen = [int(s["seen"]) - f for s, f in zip(states, fresh)]
        window, best = merge_windows([s["window"] for s in states], fresh, self._window.capacity, base_seen)
        return {"window": window, "seen": base_seen[best] + sum(fresh)}

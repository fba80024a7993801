"""Confident learning's per-class thresholds (expected self-confidence).

Northcutt et al., "Confident Learning: Estimating Uncertainty in Dataset Labels", JAIR 2021;
cleanlab ``count.py`` (``get_confident_thresholds``): t_j = mean of p_j over the samples labelled
j, classes never seen get a threshold above 1 (cleanlab: BIG_VALUE = 2 * max p, i.e. 2 for
probabilities); streamed as in ``experimental/label_issues_batched.py``
(``update_confident_thresholds``): t <- (n t + n_b t_b) / (n + n_b) per class.

Here "labelled j" means predicted j (yhat = j, so p_j = conf) and a sample is accepted when
conf >= t_yhat. Decisions use the state *before* the batch (the default order), so a class's
first predictions are always rejected and the first batch is rejected entirely: that is the
published rule for unseen classes, kept exact. ``thresholds()`` reports 2.0 for unseen classes
(the one policy whose thresholds may exceed 1). ``max_count`` (off by default) caps n, turning the
running mean into an exponential average with an effective memory of ``max_count`` samples per
class, for drifting streams.

Replicas merge exactly (``base.py``): each keeps its per-class count and sum of confidences since
the last merge, and the merged state is the base updated with everyone's as one batch (then
capped by ``max_count``), i.e. (sum_i n_i t_i) / (sum_i n_i) without double counting the base.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pseudostream.server.errors import ConfigError
from pseudostream.server.selection._common import batch_probs, canonical_sum
from pseudostream.server.selection.base import POLICIES, PerClassThresholdPolicy, PolicyBatch

__all__ = ["ConfidentLearningPolicy", "UNSEEN_THRESHOLD"]

UNSEEN_THRESHOLD = 2.0  # cleanlab's BIG_VALUE for probabilities: rejects every sample


@POLICIES.register("confident")
class ConfidentLearningPolicy(PerClassThresholdPolicy):
    """Accept a prediction when it reaches its class's running mean self-confidence."""

    name = "confident"

    def __init__(self, num_classes: int, max_count: int | None = None) -> None:
        super().__init__(num_classes)
        if max_count is not None and int(max_count) < 1:
            raise ConfigError(f"confident policy: max_count must be >= 1, got {max_count!r}")
        self.max_count = None if max_count is None else int(max_count)
        self.t = np.zeros(num_classes)
        self.n = np.zeros(num_classes, np.int64)
        self._rebase()

    def _rebase(self) -> None:
        """Make the current state the base; nothing new since."""
        self._base_t, self._base_n = self.t.copy(), self.n.copy()
        self._new_n = np.zeros(self.num_classes, np.int64)
        self._new_sum = np.zeros(self.num_classes)

    def _thresholds(self) -> np.ndarray:
        return np.where(self.n > 0, self.t, UNSEEN_THRESHOLD)

    def update(self, batch: PolicyBatch) -> None:
        probs = batch_probs(batch, self.num_classes, self.name)
        label = probs.argmax(axis=1)
        n_b = np.bincount(label, minlength=self.num_classes)
        sum_b = np.bincount(label, weights=probs.max(axis=1), minlength=self.num_classes)
        self._new_n += n_b
        self._new_sum += sum_b
        total = self.n + n_b
        self.t = np.where(total > 0, (self.n * self.t + sum_b) / np.maximum(total, 1), self.t)
        self.n = total if self.max_count is None else np.minimum(total, self.max_count)

    def state_dict(self) -> dict[str, Any]:
        merge = {"t": self._base_t.tolist(), "n": self._base_n.tolist(),
                 "new_n": self._new_n.tolist(), "new_sum": self._new_sum.tolist()}
        return {"t": self.t.tolist(), "n": self.n.tolist(), "merge": merge}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.t = np.asarray(state["t"], np.float64).reshape(self.num_classes)
        self.n = np.asarray(state["n"], np.int64).reshape(self.num_classes)
        self._rebase()
        if state.get("merge") is not None:
            self._load_bookkeeping(state["merge"])

    def _load_bookkeeping(self, merge: dict[str, Any]) -> None:
        c = self.num_classes
        self._base_t = np.asarray(merge["t"], np.float64).reshape(c)
        self._base_n = np.asarray(merge["n"], np.int64).reshape(c)
        self._new_n = np.asarray(merge["new_n"], np.int64).reshape(c)
        self._new_sum = np.asarray(merge["new_sum"], np.float64).reshape(c)

    def _merged_state(self, states: list[dict[str, Any]]) -> dict[str, Any]:
        parts = []
        for s in states:
            part = ConfidentLearningPolicy(self.num_classes, self.max_count)
            part.load_state_dict(s)
            parts.append(part)
        # the base with the most history (all equal after a merge; the largest heals a lagging one)
        base = max(parts, key=lambda p: (int(p._base_n.sum()), p._base_n.tolist(), p._base_t.tolist()))
        new_n = np.sum([p._new_n for p in parts], axis=0)
        new_sum = canonical_sum([p._new_sum for p in parts])
        total = base._base_n + new_n
        t = np.where(new_n > 0, (base._base_n * base._base_t + new_sum) / np.maximum(total, 1), base._base_t)
        n = total if self.max_count is None else np.minimum(total, self.max_count)
        return {"t": t.tolist(), "n": n.tolist()}

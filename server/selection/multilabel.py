"""Multi-label selection: per class positive, negative or unknown, from sigmoid scores.

Rule (METHODS.md, "Multi-label"): positive if p_c >= tau+_c, negative if p_c <= tau-_c, else
unknown. The probabilities here are independent per-class sigmoid scores.

tau+_c, FreeMatch-style (Wang et al., ICLR 2023; USB ``algorithms/freematch/utils.py``) but per
class: FreeMatch tracks the EMA of the mean confidence of the predictions, starting at the lowest
confidence a prediction can have (1/C). A sigmoid class's predicted positives are the scores
p_c >= 0.5, with confidence p_c, so
    tau+_c <- m_c tau+_c + (1 - m_c) mean{p_c : p_c >= 0.5 in the batch}     (init ``pos_init`` 0.5)
where classes without a predicted positive in the batch keep tau+_c (m_c = 1; with
``momentum_per_sample``, m_c = m_sample ** (number of predicted positives of c)). Updated before
masking, as FreeMatch does (``update_first``).

tau-_c: fixed ``neg_threshold`` (0.05), or with ``neg_quota`` = q the q-quantile of class c's
scores over a rolling window of the last ``window`` samples (the lowest q share per class, as in
the APL quota of "Acknowledging the Unknown for Multi-label Learning with Single Positive
Labels"). A class that passes both tests is positive, never negative.

Decisions: ``positive``/``negative`` [B, C]; accept = any class decided; label = -1;
confidence = mean of max(p_c, 1 - p_c) over the decided classes (over all classes when none is);
threshold = mean_c tau+_c; reason "all_unknown" when nothing is decided. ``thresholds()`` = tau+.

Replicas merge tau+ as an EMA and the quota window by its new rows (``base.py``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pseudostream.server.errors import ConfigError
from pseudostream.server.selection._common import (
    EmaTracks,
    Momentum,
    batch_probs,
    check_fraction,
    merge_ema,
    merge_windows,
)
from pseudostream.server.selection._window import RowWindow
from pseudostream.server.selection.base import POLICIES, Decisions, PolicyBatch, ThresholdPolicy

__all__ = ["MultiLabelPolicy", "REASON_ALL_UNKNOWN"]

REASON_ALL_UNKNOWN = "all_unknown"


@POLICIES.register("multilabel")
class MultiLabelPolicy(ThresholdPolicy):
    """Per-class positive EMA thresholds and fixed or quota negative thresholds."""

    name = "multilabel"
    update_first = True

    def __init__(
        self,
        num_classes: int,
        momentum: float = 0.999,
        momentum_per_sample: float | None = None,
        pos_init: float = 0.5,
        neg_threshold: float = 0.05,
        neg_quota: float | None = None,
        window: int = 1000,
    ) -> None:
        super().__init__(num_classes)
        self.momentum = Momentum(self.name, momentum, momentum_per_sample)
        self.neg_threshold = check_fraction(self.name, "neg_threshold", neg_threshold)
        self.neg_quota = None if neg_quota is None else check_fraction(self.name, "neg_quota", neg_quota)
        if int(window) < 1:
            raise ConfigError(f"multilabel policy: window must be >= 1, got {window!r}")
        self.tau_pos = np.full(num_classes, check_fraction(self.name, "pos_init", pos_init))
        self._window = RowWindow(int(window), num_classes) if self.neg_quota is not None else None
        self._ema = EmaTracks(tau_pos=self.tau_pos)
        self._fresh = 0  # rows pushed into the window since the last merge

    def _tau_neg(self) -> np.ndarray:
        if self._window is None or len(self._window) == 0:
            return np.full(self.num_classes, self.neg_threshold)
        return np.quantile(self._window.values(), self.neg_quota, axis=0)

    def thresholds(self) -> np.ndarray:
        return self.tau_pos.astype(np.float32)

    def decide(self, batch: PolicyBatch) -> Decisions:
        p = batch_probs(batch, self.num_classes, self.name)
        positive = p >= self.tau_pos
        negative = (p <= self._tau_neg()) & ~positive
        decided = positive | negative
        n_decided = decided.sum(axis=1)
        margin = np.maximum(p, 1.0 - p)
        decided_mean = (margin * decided).sum(axis=1) / np.maximum(n_decided, 1)
        conf = np.where(n_decided > 0, decided_mean, margin.mean(axis=1))
        accept = n_decided > 0
        label = np.full(p.shape[0], -1, np.int64)
        decisions = Decisions.from_mask(accept, label, conf, self.tau_pos.mean(), reason=REASON_ALL_UNKNOWN)
        decisions.positive, decisions.negative = positive, negative
        return decisions

    def update(self, batch: PolicyBatch) -> None:
        p = batch_probs(batch, self.num_classes, self.name)
        if p.shape[0] == 0:
            return
        predicted = p >= 0.5
        n = predicted.sum(axis=0)
        mean_pos = (p * predicted).sum(axis=0) / np.maximum(n, 1)
        m = self.momentum.for_counts(n, min_count=1)
        self.tau_pos = m * self.tau_pos + (1.0 - m) * mean_pos
        self._ema.forget(m, "tau_pos")
        if self._window is not None:
            self._window.push(p)
            self._fresh += p.shape[0]

    def state_dict(self) -> dict[str, Any]:
        return {
            "tau_pos": self.tau_pos.tolist(),
            "window": None if self._window is None else self._window.state(),
            "merge": {**self._ema.state(), "fresh": self._fresh},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.tau_pos = np.asarray(state["tau_pos"], np.float64).reshape(self.num_classes)
        self._ema.load(state.get("merge"), tau_pos=self.tau_pos)
        self._fresh = int((state.get("merge") or {}).get("fresh", 0))
        if self._window is not None and state.get("window") is not None:
            self._window.load(state["window"])

    def _merged_state(self, states: list[dict[str, Any]]) -> dict[str, Any]:
        window = None
        if self._window is not None:
            fresh = [int((s.get("merge") or {}).get("fresh", 0)) for s in states]
            window, _ = merge_windows([s["window"] for s in states], fresh, self._window.capacity)
        return {"tau_pos": merge_ema(states, "tau_pos").tolist(), "window": window}

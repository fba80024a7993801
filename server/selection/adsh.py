"""Adsh: adaptive thresholds that select the same share of every class.

Guo & Li, "Class-Imbalanced Semi-Supervised Learning with Adaptive Thresholding", ICML 2022;
USB ``semilearn/imb_algorithms/adsh/utils.py`` (AdaptiveThresholdingHook). Per class k, C_k are
the confidences of samples predicted k, sorted descending; rho is the fraction of the most
frequent class's confidences >= tau1 (0.95); s_k = -log C_k[floor(|C_k| rho) - 1] and
mask = conf >= exp(-s_yhat), i.e. the threshold of class k is the confidence ranked
floor(|C_k| rho) in C_k: every class keeps the share rho that the majority keeps at tau1.

Online: C_k is a bounded per-class ring buffer of the last ``window`` confidences predicted k
(exact ranks, O(C * window) state, sorted once per update), and the thresholds use the windows as
they were before the batch. Edge cases: a class with no data, or with floor(|C_k| rho) < 1 (too
few samples to keep even one at share rho, which includes rho = 0), uses tau1. Differences from
USB: USB takes class 0 as the most frequent class, its rho loop is off by one (it stores i / |C_0|
for the last i that passes), it indexes C_k[-1] (the lowest confidence, accepting everything)
when floor(|C_k| rho) = 0, and starts at s = tau1 (threshold exp(-0.95) ~= 0.39) not at tau1.

Replicas merge (``base.py``) each class's window: its base part plus everyone's new confidences
for that class, interleaved, newest ``window`` kept; thresholds are recomputed. The state
carries "merge" once the policy has merged; before that the base is empty and every entry is new.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pseudostream.server.errors import ConfigError
from pseudostream.server.selection._common import batch_probs, check_fraction, merge_windows
from pseudostream.server.selection._window import ClassWindows
from pseudostream.server.selection.base import POLICIES, Decisions, PolicyBatch, ThresholdPolicy

__all__ = ["AdshPolicy"]


@POLICIES.register("adsh")
class AdshPolicy(ThresholdPolicy):
    """Per-class quantile thresholds matched to the majority class's selection rate at tau1."""

    name = "adsh"

    def __init__(self, num_classes: int, tau1: float = 0.95, window: int = 1000) -> None:
        super().__init__(num_classes)
        self.tau1 = check_fraction(self.name, "tau1", tau1)
        if int(window) < 1:
            raise ConfigError(f"adsh policy: window must be >= 1, got {window!r}")
        self._windows = ClassWindows(num_classes, int(window))
        self._thr = np.full(num_classes, self.tau1)
        self._fresh = np.zeros(num_classes, np.int64)  # per class, values pushed since the last merge
        self._merged = False  # whether a merge gave this policy a base (then "merge" is in the state)

    def _recompute(self) -> None:
        sizes = self._windows.sizes
        if sizes.max() == 0:
            self._thr = np.full(self.num_classes, self.tau1)
            return
        ranked = self._windows.sorted_descending()
        major = int(sizes.argmax())
        passing = int((ranked[major] >= self.tau1).sum())
        keep = sizes * passing // sizes[major]  # floor(|C_k| rho), exactly, in integers
        picked = ranked[np.arange(self.num_classes), np.maximum(keep - 1, 0)]
        self._thr = np.where(keep >= 1, picked, self.tau1)

    def thresholds(self) -> np.ndarray:
        return self._thr.astype(np.float32)

    def decide(self, batch: PolicyBatch) -> Decisions:
        probs = batch_probs(batch, self.num_classes, self.name)
        conf, label = probs.max(axis=1), probs.argmax(axis=1)
        thr = self._thr[label]
        return Decisions.from_mask(conf >= thr, label, conf, thr)

    def update(self, batch: PolicyBatch) -> None:
        probs = batch_probs(batch, self.num_classes, self.name)
        if probs.shape[0] == 0:
            return
        label = probs.argmax(axis=1)
        self._windows.push(probs.max(axis=1), label)
        self._fresh += np.bincount(label, minlength=self.num_classes)
        self._recompute()

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"windows": self._windows.state()}
        if self._merged:
            state["merge"] = {"fresh": self._fresh.tolist()}
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        windows = state["windows"]
        if len(windows) != self.num_classes:
            raise ConfigError(f"adsh policy: state has {len(windows)} classes, expected {self.num_classes}")
        self._windows.load(windows)
        self._merged = state.get("merge") is not None
        self._fresh = np.asarray(_fresh(state), np.int64).reshape(self.num_classes)
        self._recompute()

    def _merged_state(self, states: list[dict[str, Any]]) -> dict[str, Any]:
        fresh = [_fresh(s) for s in states]
        capacity = self._windows.capacity
        windows = [
            merge_windows([s["windows"][k] for s in states], [int(f[k]) for f in fresh], capacity)[0]
            for k in range(self.num_classes)
        ]
        return {"windows": windows, "merge": {"fresh": [0] * self.num_classes}}


def _fresh(state: dict[str, Any]) -> list[int]:
    """Per class, how many of the newest window entries are new since the base (all before a merge)."""
    merge = state.get("merge")
    return [len(w) for w in state["windows"]] if merge is None else list(merge["fresh"])

"""FlexMatch's curriculum pseudo-labeling (class-wise flexible thresholds).

Zhang et al., "FlexMatch: Boosting Semi-Supervised Learning with Curriculum Pseudo Labeling",
NeurIPS 2021; USB ``semilearn/algorithms/flexmatch/utils.py`` (FlexMatchThresholdingHook).

Per batch: mask = conf >= tau * M(beta[yhat]) with beta from the memory *before* the batch;
then every sample with conf >= tau (the raw tau) records selected[id] = yhat. sigma(c) counts the
ids whose recorded label is c; with warm-up beta(c) = sigma(c) / max(max_c sigma, #unused),
without it beta(c) = sigma(c) / max_c sigma (0 while nothing was selected). M is the convex
mapping x / (2 - x) (the paper's default) or the linear (x + 1) / 2. At start beta = 0: the
convex mapping accepts everything and the thresholds rise as the memory fills.

Online adaptations:
- The memory keeps at most ``max_memory`` selected ids (LRU: an id selected again moves to the
  newest end). Evicted ids no longer count, so sigma describes the most recent ``max_memory``
  selected samples: a sliding window, not the whole stream.
- #unused is, in the paper, the number of the N unlabeled samples never selected. A stream has no
  N, so ``expected_samples`` stands for it (default ``max_memory``): #unused =
  max(0, expected_samples - ids in memory). Warm-up therefore ends once the memory holds
  ``expected_samples`` ids; a larger value keeps thresholds low for longer.

Replicas merge memories (``base.py``): the ids each replica selected since the last merge are the
newest entries of its memory; the merged memory is the base with everyone's new entries applied in
interleaved order (a later selection of an id wins), newest ``max_memory`` kept; sigma is
recounted. With disjoint ids and no eviction this is exactly one policy's memory over all samples.
The state carries "merge" once the policy has merged; before that (a single replica, an older
checkpoint) the base is the empty memory and every entry is new (merging keyed by id, repeats
collapse).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Hashable

import numpy as np

from pseudostream.server.errors import ConfigError
from pseudostream.server.selection._common import batch_probs, check_fraction, merge_windows
from pseudostream.server.selection.base import POLICIES, PerClassThresholdPolicy, PolicyBatch

__all__ = ["FlexMatchPolicy"]

_MAPPINGS = ("convex", "linear")


@POLICIES.register("flexmatch")
class FlexMatchPolicy(PerClassThresholdPolicy):
    """Class-wise thresholds scaled by each class's learning status (selected counts)."""

    name = "flexmatch"

    def __init__(
        self,
        num_classes: int,
        tau: float = 0.95,
        warmup: bool = True,
        mapping: str = "convex",
        max_memory: int = 100_000,
        expected_samples: int | None = None,
    ) -> None:
        super().__init__(num_classes)
        self.tau = check_fraction(self.name, "tau", tau)
        if mapping not in _MAPPINGS:
            raise ConfigError(f"flexmatch policy: mapping must be one of {_MAPPINGS}, got {mapping!r}")
        if int(max_memory) < 1:
            raise ConfigError(f"flexmatch policy: max_memory must be >= 1, got {max_memory!r}")
        n = int(max_memory if expected_samples is None else expected_samples)
        if n < 1:
            raise ConfigError(f"flexmatch policy: expected_samples must be >= 1, got {expected_samples!r}")
        self.warmup, self.mapping = bool(warmup), mapping
        self.max_memory, self.expected_samples = int(max_memory), n
        self._memory: OrderedDict[Hashable, int] = OrderedDict()
        self._sigma = np.zeros(num_classes, np.int64)
        self._fresh: set[Hashable] = set()  # ids selected since the last merge: the memory's newest
        self._merged = False  # whether a merge gave this policy a base (then "merge" is in the state)

    def _beta(self) -> np.ndarray:
        top = int(self._sigma.max())
        if self.warmup:
            top = max(top, self.expected_samples - len(self._memory))
        return self._sigma / top if top > 0 else np.zeros(self.num_classes)

    def _thresholds(self) -> np.ndarray:
        beta = self._beta()
        mapped = beta / (2.0 - beta) if self.mapping == "convex" else (beta + 1.0) / 2.0
        return self.tau * mapped

    def update(self, batch: PolicyBatch) -> None:
        probs = batch_probs(batch, self.num_classes, self.name)
        select = probs.max(axis=1) >= self.tau
        ids = np.asarray(batch.ids, dtype=object)[select].tolist()
        labels = probs.argmax(axis=1)[select].tolist()
        # Bounded per-id memory: the one per-sample loop (over selected samples only).
        for sid, lab in zip(ids, labels):
            old = self._memory.pop(sid, None)
            if old is not None:
                self._sigma[old] -= 1
            self._memory[sid] = lab
            self._sigma[lab] += 1
            self._fresh.add(sid)
            if len(self._memory) > self.max_memory:
                gone, evicted = self._memory.popitem(last=False)
                self._sigma[evicted] -= 1
                self._fresh.discard(gone)

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"memory": [[sid, lab] for sid, lab in self._memory.items()]}
        if self._merged:
            state["merge"] = {"fresh": len(self._fresh)}
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._memory = OrderedDict((sid, int(lab)) for sid, lab in state["memory"])
        while len(self._memory) > self.max_memory:
            self._memory.popitem(last=False)
        self._sigma = np.bincount(
            np.fromiter(self._memory.values(), np.int64, len(self._memory)), minlength=self.num_classes
        ).astype(np.int64)
        self._merged = state.get("merge") is not None
        fresh = min(_fresh(state), len(self._memory))
        self._fresh = set(list(self._memory)[len(self._memory) - fresh :])

    def _merged_state(self, states: list[dict[str, Any]]) -> dict[str, Any]:
        def lru(base: list, new: list) -> list:
            memory = OrderedDict(base)
            for sid, lab in new:
                memory.pop(sid, None)
                memory[sid] = lab
            return list(memory.items())

        memories = [[(sid, int(lab)) for sid, lab in s["memory"]] for s in states]
        memory, _ = merge_windows(memories, [_fresh(s) for s in states], self.max_memory, combine=lru)
        return {"memory": [[sid, lab] for sid, lab in memory], "merge": {"fresh": 0}}


def _fresh(state: dict[str, Any]) -> int:
    """How many of the state's newest memory entries are new since its base (all before a merge)."""
    merge = state.get("merge")
    return len(state["memory"]) if merge is None else int(merge["fresh"])

"""Helpers shared by the selection policies: momentum, parameter checks, input checks.

Online vs. training-loop momentum (METHODS.md): the papers use a per-batch EMA momentum
(m = 0.999) tuned for ~10^6 training steps of a fixed batch size. A service sees batches of
varying size, so every EMA policy also accepts ``momentum_per_sample``; when given, a batch of B
samples uses m_batch = m_sample ** B, so the statistics forget at the same rate per sample
whatever the batching. The constructor default stays the published per-batch value, for exact
reproduction of the papers; topics that see small or uneven batches should set the per-sample one
(e.g. 0.999 ** (1 / 64) ~= 0.99998 matches the paper at batch 64).

Merge helpers (the scheme is described in ``base.py``): ``EmaTracks`` and ``merge_ema`` for EMA
statistics, ``merge_windows`` / ``interleave`` for rolling windows and memories, ``canonical_sum``
so that every replica adds the same numbers in the same order and gets bit-identical results.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np

from pseudostream.server.errors import ConfigError, InvalidInput
from pseudostream.server.selection.base import PolicyBatch

__all__ = [
    "Momentum",
    "check_fraction",
    "batch_probs",
    "softmax",
    "LAMBDA_CAP",
    "forgetting",
    "canonical_sum",
    "EmaTracks",
    "merge_ema",
    "weighted_mean",
    "split_tail",
    "interleave",
    "merge_windows",
]


def check_fraction(owner: str, name: str, value: float, *, open_low: bool = False) -> float:
    """``value`` as a float in [0, 1] (or (0, 1] with ``open_low``); ConfigError otherwise."""
    v = float(value)
    if not (0.0 < v <= 1.0 if open_low else 0.0 <= v <= 1.0):
        interval = "(0, 1]" if open_low else "[0, 1]"
        raise ConfigError(f"{owner} policy: {name} must be in {interval}, got {value!r}")
    return v


class Momentum:
    """EMA momentum per batch: the published per-batch value, or ``m_sample ** B``."""

    def __init__(self, owner: str, momentum: float, momentum_per_sample: float | None) -> None:
        self.momentum = check_fraction(owner, "momentum", momentum)
        self.per_sample = (
            None
            if momentum_per_sample is None
            else check_fraction(owner, "momentum_per_sample", momentum_per_sample)
        )

    def for_batch(self, size: int) -> float:
        """The momentum to apply for one batch of ``size`` samples (size >= 1)."""
        return self.momentum if self.per_sample is None else self.per_sample**size

    def for_counts(self, counts: np.ndarray, min_count: int = 1) -> np.ndarray:
        """Per-entry momentum for statistics updated by ``counts`` samples each.

        Entries with fewer than ``min_count`` samples get momentum 1 (left unchanged).
        """
        counts = np.asarray(counts)
        m = np.full(counts.shape, self.momentum) if self.per_sample is None else self.per_sample**counts
        return np.where(counts >= min_count, m, 1.0)


def batch_probs(batch: PolicyBatch, num_classes: int, owner: str) -> np.ndarray:
    """The batch's probabilities as float64 [B, C]; InvalidInput if the shape is wrong."""
    probs = np.asarray(batch.probs, dtype=np.float64)
    if probs.ndim != 2 or probs.shape[1] != num_classes:
        raise InvalidInput(
            f"{owner} policy: expected probabilities of shape [B, {num_classes}], got {probs.shape}"
        )
    return probs


def softmax(z: np.ndarray) -> np.ndarray:
    """Row-wise softmax, numerically stable, float64."""
    z = np.asarray(z, dtype=np.float64)
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


# --- merging replicas' states ----------------------------------------------------------------

LAMBDA_CAP = 50.0  # forgetting beyond which the base's weight exp(-lam) < 2e-22: forgotten


def forgetting(m: float | np.ndarray) -> np.ndarray:
    """-log m: how much an EMA step with momentum ``m`` forgets (capped, so m = 0 is finite)."""
    with np.errstate(divide="ignore"):
        return np.minimum(-np.log(np.asarray(m, np.float64)), LAMBDA_CAP)


def canonical_sum(rows: np.ndarray) -> np.ndarray:
    """The sum over axis 0, in an order fixed by the values (sorted), not by the rows' order.

    Replicas receive the same states in different orders; floating-point addition is not
    associative, so summing in arrival order could differ in the last bit between replicas.
    """
    return np.sort(np.asarray(rows, np.float64), axis=0).sum(axis=0)


class EmaTracks:
    """Merge bookkeeping for a policy's EMA statistics (see ``merge_ema``).

    Per statistic: ``base``, its value at the last merge (common to all replicas), and ``lam``,
    its forgetting since then: the sum of -log m over the updates applied, so the base still has
    weight exp(-lam) in the current value. ``lam`` is per element for per-class momenta.
    """

    def __init__(self, **values: Any) -> None:
        self.base: dict[str, np.ndarray] = {}
        self.lam: dict[str, np.ndarray] = {}
        self.rebase(**values)

    def rebase(self, **values: Any) -> None:
        """Take ``values`` as the new base, with nothing forgotten since."""
        for key, value in values.items():
            self.base[key] = np.array(value, np.float64)
            self.lam[key] = np.zeros(self.base[key].shape)

    def forget(self, m: float | np.ndarray, *keys: str) -> None:
        """Record one EMA step with momentum ``m`` (scalar or per element) on ``keys``."""
        step = forgetting(m)
        for key in keys:
            self.lam[key] = np.minimum(self.lam[key] + step, LAMBDA_CAP)

    def state(self) -> dict[str, Any]:
        return {k: {"base": self.base[k].tolist(), "lam": self.lam[k].tolist()} for k in self.base}

    def load(self, state: dict[str, Any] | None, **current: Any) -> None:
        """Restore ``state()``; without one (a merged state, an older checkpoint) rebase on ``current``."""
        if state is None:
            self.rebase(**current)
            return
        for key, value in current.items():
            shape = np.shape(value)
            self.base[key] = np.asarray(state[key]["base"], np.float64).reshape(shape)
            self.lam[key] = np.asarray(state[key]["lam"], np.float64).reshape(shape)


def _track(state: dict[str, Any], key: str) -> tuple[Any, Any]:
    """(base, lam) of ``key`` in a replica's state; a state without bookkeeping has not moved."""
    track = (state.get("merge") or {}).get(key)
    if track is None:
        return state[key], np.zeros(np.shape(state[key]))
    return track["base"], track["lam"]


def merge_ema(states: Sequence[dict[str, Any]], key: str) -> np.ndarray:
    """One EMA statistic combined over all replicas' states, as one EMA over all their updates.

    With x0 the common base, replica j's value is S_j = d_j x0 + (1 - d_j) mu_j, where
    d_j = exp(-lam_j) and mu_j is the (EMA-weighted) mean of its inputs. One EMA over all the
    replicas' updates keeps D = prod_j d_j = exp(-sum lam_j) of x0 and gives the rest to the
    inputs, replica j's share in proportion to its update rate lam_j:
        merged = D x0 + (1 - D) sum_j (lam_j / Lam) mu_j
               = x0 + kappa sum_j g_j (S_j - x0),  kappa = (1 - D) / Lam,  g_j = lam_j / (1 - d_j).
    For small lam (frequent merges) kappa, g -> 1: the base plus the sum of every replica's drift.
    x0 is the mean of the replicas' bases (equal after a merge; the mean heals any disagreement).
    """
    values = np.stack([np.asarray(s[key], np.float64) for s in states])
    tracks = [_track(s, key) for s in states]
    bases = np.stack([np.asarray(b, np.float64).reshape(values.shape[1:]) for b, _ in tracks])
    lams = np.stack([np.asarray(lam, np.float64).reshape(values.shape[1:]) for _, lam in tracks])
    same = (bases == bases[0]).all(axis=0)
    x0 = np.where(same, bases[0], canonical_sum(bases) / len(states))
    gain = np.divide(lams, -np.expm1(-lams), out=np.ones_like(lams), where=lams > 0)
    total = np.asarray(canonical_sum(lams))
    kappa = np.divide(-np.expm1(-total), total, out=np.ones_like(total), where=total > 0)
    return np.asarray(x0 + kappa * canonical_sum(gain * (values - bases)))


def weighted_mean(values: Sequence[Any], weights: Sequence[float]) -> np.ndarray:
    """sum w_i v_i / sum w_i (the plain mean where every weight is 0), order-independent."""
    v = np.stack([np.asarray(x, np.float64) for x in values])
    w = np.asarray(weights, np.float64).reshape((-1,) + (1,) * (v.ndim - 1))
    if not (w > 0).any():
        w = np.ones_like(w)
    return canonical_sum(w * v) / canonical_sum(w.reshape(-1))


def split_tail(entries: list, fresh: int) -> tuple[list, list]:
    """(older entries, the newest ``fresh`` ones): a window's base part and its new part."""
    k = min(max(int(fresh), 0), len(entries))
    return entries[: len(entries) - k], entries[len(entries) - k :]


def interleave(tails: Sequence[list]) -> list:
    """The replicas' new entries as one stream, oldest first.

    Each replica's entries are taken as spread evenly over the period since the last merge
    (entry k of n at time (k + 1) / n); ties are broken by the entries themselves, so the order
    does not depend on the order of ``tails``.
    """
    timed = [((k + 1) / len(tail), entry) for tail in tails for k, entry in enumerate(tail)]
    timed.sort(key=lambda te: (te[0], te[1]))
    return [entry for _, entry in timed]


def merge_windows(
    windows: Sequence[list],
    fresh: Sequence[int],
    capacity: int,
    history: Sequence[int] | None = None,
    combine: Callable[[list, list], list] | None = None,
) -> tuple[list, int]:
    """Replicas' rolling windows combined: the base part, then everyone's new entries, interleaved.

    ``windows`` are oldest first and end with ``fresh`` entries added since the last merge. Every
    replica's window starts with the newest part of the same base window, minus what its own new
    entries pushed out; the longest such part (most ``history`` first, where given) contains all
    that survives in the combined window. ``combine(base, new)`` joins them (default: append);
    the newest ``capacity`` entries are kept. Returns the window and the index of the replica
    whose base part was used.
    """
    parts = [split_tail(list(w), f) for w, f in zip(windows, fresh)]
    rank = history if history is not None else [0] * len(parts)
    best = max(range(len(parts)), key=lambda i: (rank[i], len(parts[i][0]), parts[i][0]))
    new = interleave([tail for _, tail in parts])
    joined = combine(parts[best][0], new) if combine is not None else parts[best][0] + new
    return joined[len(joined) - min(capacity, len(joined)) :], best

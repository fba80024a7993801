"""Collapse guard: per window, compare an adapted teacher with the frozen source on the same inputs.

Test-time adaptation can collapse (TENT on long streams: every sample one class) or drift on
class-correlated windows (BN statistics of a one-class window). The guard watches the signals
METHODS.md lists, each against the frozen source's predictions for the same window:

* ``entropy_ema``: EMA of the adapted predictions' mean entropy / ln C (collapse drives it to 0;
  SAR's recovery rule, Niu et al. ICLR 2023, is the same signal on raw entropy);
* ``top_class_excess``: adapted top-class fraction minus the source's (one class swallowing the
  window while the source still sees several);
* ``classes_ratio``: effective number of classes exp(H(mean p)) of the adapted predictions over
  the source's;
* ``agreement``: fraction of samples where the adapted argmax equals the source argmax, counted
  over the samples the source is confident on (conf >= ``agreement_confidence``; all samples if
  none is), since on the others disagreeing is the point of adapting;
* ``kl_to_prior``: KL(adapted window marginal || prior). The default prior is the running mean
  (EMA, ``prior_momentum``) of the adapted marginals of the windows before: a window whose
  marginal jumps away from it is class-correlated (BN statistics of a few-class window are
  biased; LAME's KL check, Boudiaf et al. CVPR 2022, watches the same) or collapsing. ``prior``
  may instead be "em" (the EM label-shift estimate on the source's window, Saerens et al. 2002,
  as ``prior_em``) or a fixed distribution.

``check`` returns a ``GuardVerdict``: ``alarm``, the reasons, every figure and the ``action``:
"reset" to the source on a collapse signal, "rollback" to the last good state when only the
window looks class-correlated, else "keep"; on an alarm the window's labels should come from the
source (or be marked low trust). ``reset_every`` adds RDumb's periodic hard reset (Press et al.,
NeurIPS 2023): ``reset`` is set on every T-th check. Pure numpy, no torch: the server imports it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pseudostream.server.adaptation.base import entropy
from pseudostream.server.adaptation.prior_em import em_prior
from pseudostream.server.errors import ConfigError, InvalidInput

__all__ = ["CollapseGuard", "GuardVerdict", "COLLAPSE_REASONS", "GUARD_SIGNALS", "effective_classes",
           "marginal_kl"]


def effective_classes(probs: np.ndarray) -> float:
    """exp(H(mean_x p(.|x))): 1 when every row is the same one-hot, C for a uniform marginal."""
    marginal = probs.mean(axis=0, keepdims=True)
    return float(np.exp(entropy(marginal)[0]))


def marginal_kl(probs: np.ndarray, prior: np.ndarray) -> float:
    """KL(mean_x p(.|x) || prior) in nats."""
    m = probs.mean(axis=0)
    nz = m > 0
    return float((m[nz] * np.log(m[nz] / np.maximum(prior[nz], 1e-12))).sum())


COLLAPSE_REASONS = frozenset({"entropy_ema", "top_class_excess", "classes_ratio", "agreement"})
GUARD_SIGNALS = (*sorted(COLLAPSE_REASONS), "kl_to_prior")  # every reason an alarm can name


@dataclass(frozen=True)
class GuardVerdict:
    """One window's decision. ``alarm``: some check failed (``reasons`` names them); ``reset``:
    the periodic hard reset is due; ``figures``: every signal. What to do is ``action``."""

    alarm: bool
    reset: bool
    reasons: tuple[str, ...] = ()
    figures: dict[str, float] = field(default_factory=dict)

    @property
    def action(self) -> str:
        """"reset": a collapse signal failed or the periodic reset is due, so restore the source
        weights; "rollback": only ``kl_to_prior`` failed, the window looks class-correlated, so
        discard this window's update and keep the last good state; "keep": publish it."""
        if self.reset or COLLAPSE_REASONS.intersection(self.reasons):
            return "reset"
        return "rollback" if self.alarm else "keep"


class CollapseGuard:
    """Checks adapted vs source predictions per window; thresholds are keyword-only.

    An alarm fires when any check fails: ``entropy_ema`` < ``min_entropy``, top-class excess >
    ``max_top_excess``, classes ratio < ``min_classes_ratio``, agreement < ``min_agreement``, or
    ``kl_to_prior`` > ``max_kl``. A threshold of None disables its check. ``prior``: "running"
    (default), "em" (EM from ``source_prior``, uniform if None) or a fixed distribution.
    ``warmup``: windows checked before any alarm can fire.

    Defaults were set on the digits shift suite (``benchmarks/adaptation.py``): they never fire
    on i.i.d. covariate, label-shifted or long streams there and catch an induced TENT collapse
    (Adam lr 0.1, 10 steps per window); entropy and agreement are off by default because on a
    heavy shift the source is confidently wrong and adapted models are confident and right.
    """

    def __init__(self, num_classes: int, *, min_entropy: float | None = None,
                 max_top_excess: float | None = 0.2, min_classes_ratio: float | None = 0.8,
                 min_agreement: float | None = None, agreement_confidence: float = 0.9,
                 max_kl: float | None = 0.2, prior: Any = "running", prior_momentum: float = 0.9,
                 source_prior: Any = None, entropy_momentum: float = 0.9,
                 reset_every: int | None = None, warmup: int = 0) -> None:
        if num_classes < 2:
            raise ConfigError(f"guard: num_classes must be >= 2, got {num_classes}")
        momenta_ok = 0 <= entropy_momentum < 1 and 0 <= prior_momentum < 1
        if not momenta_ok or (reset_every is not None and reset_every < 1) or warmup < 0:
            raise ConfigError("guard: momenta in [0, 1), reset_every >= 1 or None, warmup >= 0")
        self.num_classes = int(num_classes)
        self.min_entropy, self.max_top_excess = min_entropy, max_top_excess
        self.min_classes_ratio, self.min_agreement = min_classes_ratio, min_agreement
        self.agreement_confidence, self.max_kl = float(agreement_confidence), max_kl
        self.prior_mode = prior if isinstance(prior, str) else "fixed"
        if self.prior_mode not in ("running", "em", "fixed"):
            raise ConfigError(f"guard: prior must be 'running', 'em' or {num_classes} "
                              f"probabilities, got {prior!r}")
        self.prior = self._distribution(prior, "prior") if self.prior_mode == "fixed" else None
        self.prior_momentum = float(prior_momentum)
        self.source_prior = (np.full(num_classes, 1.0 / num_classes) if source_prior is None
                             else self._distribution(source_prior, "source_prior"))
        self.momentum, self.reset_every, self.warmup = float(entropy_momentum), reset_every, int(warmup)
        self.entropy_ema: float | None = None
        self.checks = 0  # since the last reset()
        self.updates = 0  # since the last periodic reset (or reset())

    def _distribution(self, value: Any, what: str) -> np.ndarray:
        p = np.asarray(value, dtype=np.float64)
        if p.shape != (self.num_classes,) or np.any(p <= 0):
            raise ConfigError(f"guard: {what} must be {self.num_classes} positive numbers")
        return p / p.sum()

    def _probs(self, probs: Any, what: str) -> np.ndarray:
        p = np.asarray(probs, dtype=np.float64)
        if p.ndim != 2 or p.shape[1] != self.num_classes or p.shape[0] == 0:
            raise InvalidInput(f"guard: {what} must be [B, {self.num_classes}] with B >= 1, "
                               f"got shape {p.shape}")
        return p

    def figures(self, source_probs: Any, adapted_probs: Any) -> dict[str, float]:
        """Every signal for one window, without changing the guard's state (``entropy_ema``
        is the value this window would give)."""
        src, ada = self._probs(source_probs, "source_probs"), self._probs(adapted_probs, "adapted_probs")
        if src.shape != ada.shape:
            raise InvalidInput(f"guard: source_probs {src.shape} and adapted_probs {ada.shape} differ")
        norm_entropy = float(entropy(ada).mean() / math.log(self.num_classes))
        ema = norm_entropy if self.entropy_ema is None else (
            self.momentum * self.entropy_ema + (1 - self.momentum) * norm_entropy)
        top_src = np.bincount(src.argmax(1), minlength=self.num_classes).max() / src.shape[0]
        top_ada = np.bincount(ada.argmax(1), minlength=self.num_classes).max() / ada.shape[0]
        confident = src.max(axis=1) >= self.agreement_confidence
        pool = confident if confident.any() else np.ones(src.shape[0], dtype=bool)
        if self.prior_mode == "em":
            prior = em_prior(src, self.source_prior)
        else:  # running: none before the first window, so the first KL is 0
            prior = ada.mean(axis=0) if self.prior is None else self.prior
        prior = np.clip(prior, 1e-6, None)
        eff_src, eff_ada = effective_classes(src), effective_classes(ada)
        return {
            "entropy": norm_entropy, "entropy_ema": ema,
            "top_class_fraction": float(top_ada), "source_top_class_fraction": float(top_src),
            "top_class_excess": float(top_ada - top_src),
            "effective_classes": eff_ada, "source_effective_classes": eff_src,
            "classes_ratio": eff_ada / eff_src,
            "agreement": float(np.mean(src[pool].argmax(1) == ada[pool].argmax(1))),
            "agreement_support": float(pool.sum()),
            "kl_to_prior": marginal_kl(ada, prior), "source_kl_to_prior": marginal_kl(src, prior),
        }

    def check(self, source_probs: Any, adapted_probs: Any) -> GuardVerdict:
        """The verdict for one window (count it as one adaptation update)."""
        figures = self.figures(source_probs, adapted_probs)
        self.entropy_ema = figures["entropy_ema"]
        if self.prior_mode == "running":
            mean = np.asarray(adapted_probs, dtype=np.float64).mean(axis=0)
            self.prior = mean if self.prior is None else (
                self.prior_momentum * self.prior + (1 - self.prior_momentum) * mean)
        self.checks += 1
        self.updates += 1
        reasons: list[str] = []
        if self.checks > self.warmup:
            reasons = [name for name, failed in (
                ("entropy_ema", self.min_entropy is not None
                 and figures["entropy_ema"] < self.min_entropy),
                ("top_class_excess", self.max_top_excess is not None
                 and figures["top_class_excess"] > self.max_top_excess),
                ("classes_ratio", self.min_classes_ratio is not None
                 and figures["classes_ratio"] < self.min_classes_ratio),
                ("agreement", self.min_agreement is not None
                 and figures["agreement"] < self.min_agreement),
                ("kl_to_prior", self.max_kl is not None and figures["kl_to_prior"] > self.max_kl),
            ) if failed]
        periodic = self.reset_every is not None and self.updates >= self.reset_every
        if periodic:
            self.updates = 0
        return GuardVerdict(alarm=bool(reasons), reset=periodic, reasons=tuple(reasons), figures=figures)

    def reset(self) -> None:
        """Forget the entropy EMA, the running prior and the counters (a new stream or domain)."""
        self.entropy_ema = None
        if self.prior_mode == "running":
            self.prior = None
        self.checks = self.updates = 0

    def state_dict(self) -> dict[str, Any]:
        """JSON-safe state."""
        running = self.prior_mode == "running" and self.prior is not None
        return {"entropy_ema": self.entropy_ema, "checks": self.checks, "updates": self.updates,
                "prior": self.prior.tolist() if running else None}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what ``state_dict`` returned."""
        self.entropy_ema = state["entropy_ema"]
        self.checks, self.updates = int(state["checks"]), int(state["updates"])
        if self.prior_mode == "running":
            self.prior = None if state["prior"] is None else np.asarray(state["prior"], dtype=np.float64)

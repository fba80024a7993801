"""UPS: uncertainty-aware pseudo-label selection, positive and negative.

Rizve et al., "In Defense of Pseudo-Labeling: An Uncertainty-Aware Pseudo-label Selection
Framework for Semi-Supervised Learning", ICLR 2021; nayeemrizve/ups
``utils/pseudo_labeling_util.py``. Over K views (MC dropout, test-time augmentation, ensemble):
p_bar = mean over views, std = unbiased std over views (``torch.std``).
    positive: max p_bar >= tau_p (0.70) and std of that class < kappa_p (0.05); label argmax p_bar
    negative: p_bar_c < tau_n (0.05) and std_c < kappa_n (0.005), argmax excluded, only for
              samples not selected positive -> ``Decisions.negative`` [B, C]
Rejected samples carry reason "below_class_threshold" (confidence test failed) or "uncertain"
(confident but std too high). UPS trains on negative labels too, so by default
(``deliver_negatives``) a sample with no positive but at least one negative class is accepted
with label -1 and its negative classes, and reaches trainers like a multi-label record; with
``deliver_negatives=False`` the negatives are only reported on the rejected decision. Stateless. The
official code takes the negatives from a separately tempered softmax (``temp_nl``); here the
views are used as given (temper them in the teacher if wanted).
"""

from __future__ import annotations

import numpy as np

from pseudostream.server.errors import ConfigError, InvalidInput
from pseudostream.server.selection._common import check_fraction
from pseudostream.server.selection.base import (
    POLICIES,
    REASON_BELOW_THRESHOLD,
    Decisions,
    PolicyBatch,
    ThresholdPolicy,
)

__all__ = ["UncertaintyPolicy", "REASON_UNCERTAIN"]

REASON_UNCERTAIN = "uncertain"


@POLICIES.register("uncertainty")
class UncertaintyPolicy(ThresholdPolicy):
    """Confidence and low spread across views for positives; near-zero, stable scores for negatives."""

    name = "uncertainty"
    needs_views = True

    def __init__(
        self,
        num_classes: int,
        tau_p: float = 0.70,
        kappa_p: float = 0.05,
        tau_n: float = 0.05,
        kappa_n: float = 0.005,
        deliver_negatives: bool = True,
    ) -> None:
        super().__init__(num_classes)
        self.tau_p = check_fraction(self.name, "tau_p", tau_p)
        self.kappa_p = check_fraction(self.name, "kappa_p", kappa_p)
        self.tau_n = check_fraction(self.name, "tau_n", tau_n)
        self.kappa_n = check_fraction(self.name, "kappa_n", kappa_n)
        self.deliver_negatives = bool(deliver_negatives)

    def _views(self, batch: PolicyBatch) -> np.ndarray:
        if batch.views is None:
            raise ConfigError(
                "uncertainty policy needs K >= 2 views per sample: configure the topic with "
                "test-time augmentation, MC dropout or an ensemble (PolicyBatch.views is None)"
            )
        views = np.asarray(batch.views, np.float64)
        if views.ndim != 3 or views.shape[0] < 2 or views.shape[2] != self.num_classes:
            raise InvalidInput(
                f"uncertainty policy: expected views [K >= 2, B, {self.num_classes}], got {views.shape}"
            )
        return views

    def thresholds(self) -> np.ndarray:
        return np.full(self.num_classes, self.tau_p, np.float32)

    def decide(self, batch: PolicyBatch) -> Decisions:
        views = self._views(batch)
        p_bar, std = views.mean(axis=0), views.std(axis=0, ddof=1)
        rows = np.arange(p_bar.shape[0])
        label = p_bar.argmax(axis=1)
        conf = p_bar[rows, label]
        confident = conf >= self.tau_p
        accept = confident & (std[rows, label] < self.kappa_p)
        negative = (p_bar < self.tau_n) & (std < self.kappa_n) & ~accept[:, None]
        negative[rows, label] = False
        decisions = Decisions.from_mask(accept, label, conf, self.tau_p)
        decisions.reason = np.where(accept, "", np.where(confident, REASON_UNCERTAIN, REASON_BELOW_THRESHOLD))
        decisions.negative = negative
        if self.deliver_negatives:
            negative_only = ~accept & negative.any(axis=1)
            decisions.accept = accept | negative_only
            decisions.label = np.where(negative_only, -1, decisions.label)
            decisions.weight = np.where(negative_only, np.float32(1), decisions.weight)
            decisions.reason = np.where(negative_only, "", decisions.reason)
        return decisions

    def update(self, batch: PolicyBatch) -> None:
        return None

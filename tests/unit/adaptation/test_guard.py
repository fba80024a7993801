"""The collapse guard on hand-made windows: each signal, each alarm and its action."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from pseudostream.server.adaptation.guard import CollapseGuard, effective_classes, marginal_kl
from pseudostream.server.errors import ConfigError, InvalidInput

C = 4
EYE = np.eye(C)
DIVERSE = EYE[[0, 1, 2, 3, 0, 1, 2, 3]]  # one-hot, every class twice
ALL_ZERO = EYE[[0] * 8]
OFF = {"max_top_excess": None, "min_classes_ratio": None, "max_kl": None}


def test_effective_classes_and_marginal_kl_by_hand():
    assert effective_classes(DIVERSE) == pytest.approx(4.0)
    assert effective_classes(ALL_ZERO) == pytest.approx(1.0)
    assert effective_classes(np.array([[0.5, 0.5, 0, 0], [0.5, 0.5, 0, 0]])) == pytest.approx(2.0)
    m = np.array([[0.5, 0.5, 0.0, 0.0]])
    prior = np.array([0.25, 0.25, 0.25, 0.25])
    assert marginal_kl(m, prior) == pytest.approx(math.log(2))


def test_identical_predictions_pass():
    verdict = CollapseGuard(C).check(DIVERSE, DIVERSE)
    assert not verdict.alarm and verdict.action == "keep" and verdict.reasons == ()
    f = verdict.figures
    assert (f["agreement"], f["classes_ratio"], f["top_class_excess"], f["kl_to_prior"]) == (1.0, 1.0, 0.0, 0.0)
    assert f["entropy"] == 0.0 and f["effective_classes"] == pytest.approx(4.0)


def test_collapse_onto_one_class_resets():
    verdict = CollapseGuard(C).check(DIVERSE, ALL_ZERO)
    f = verdict.figures
    assert f["top_class_fraction"] == 1.0 and f["source_top_class_fraction"] == 0.25
    assert f["top_class_excess"] == pytest.approx(0.75)
    assert f["classes_ratio"] == pytest.approx(0.25)
    assert f["agreement"] == pytest.approx(0.25)  # rows 0 and 4 agree
    assert verdict.alarm and set(verdict.reasons) == {"top_class_excess", "classes_ratio"}
    assert verdict.action == "reset"


def test_a_window_away_from_the_running_prior_rolls_back():
    guard = CollapseGuard(C)
    assert not guard.check(DIVERSE, DIVERSE).alarm  # running prior: uniform
    # Source and adapted agree that this window is all class 0: no collapse, but class-correlated.
    verdict = guard.check(ALL_ZERO, ALL_ZERO)
    assert verdict.figures["kl_to_prior"] == pytest.approx(math.log(4))
    assert verdict.reasons == ("kl_to_prior",) and verdict.action == "rollback"
    np.testing.assert_allclose(guard.prior, 0.9 * np.full(C, 0.25) + 0.1 * EYE[0])


def test_fixed_and_em_priors():
    half = np.array([[0.5, 0.5, 0.0, 0.0]] * 2)
    fixed = CollapseGuard(C, prior=[0.25, 0.25, 0.25, 0.25], max_kl=0.5)
    verdict = fixed.check(half, half)
    assert verdict.figures["kl_to_prior"] == pytest.approx(math.log(2)) and verdict.reasons == ("kl_to_prior",)
    # EM on one-hot source rows converges to their histogram: the marginal matches it, KL 0.
    em = CollapseGuard(C, prior="em")
    assert em.check(DIVERSE, DIVERSE).figures["kl_to_prior"] == pytest.approx(0.0, abs=1e-6)


def test_entropy_ema_by_hand():
    uniform = np.full((8, C), 1 / C)
    guard = CollapseGuard(C, min_entropy=0.5, **OFF)
    first = guard.check(uniform, uniform)  # normalised entropy 1
    assert first.figures["entropy_ema"] == pytest.approx(1.0) and not first.alarm
    second = guard.check(uniform, DIVERSE)  # entropy 0: ema = 0.9
    assert second.figures["entropy_ema"] == pytest.approx(0.9) and not second.alarm
    for _ in range(6):
        verdict = guard.check(uniform, DIVERSE)
    assert verdict.figures["entropy_ema"] == pytest.approx(0.9 ** 7)  # 0.478 < 0.5
    assert verdict.reasons == ("entropy_ema",) and verdict.action == "reset"


def test_agreement_counts_the_confident_source_samples():
    source = np.array([[0.97, 0.01, 0.01, 0.01],   # confident: class 0
                       [0.01, 0.97, 0.01, 0.01],   # confident: class 1
                       [0.4, 0.3, 0.2, 0.1],       # not confident
                       [0.3, 0.4, 0.2, 0.1]])      # not confident
    adapted = EYE[[0, 2, 3, 3]]
    guard = CollapseGuard(C, min_agreement=0.75, **OFF)
    verdict = guard.check(source, adapted)
    assert verdict.figures["agreement"] == 0.5 and verdict.figures["agreement_support"] == 2
    assert verdict.reasons == ("agreement",)
    unsure = source[2:]  # no confident sample: every sample counts
    verdict = guard.check(unsure, EYE[[0, 2]])
    assert verdict.figures["agreement"] == 0.5 and verdict.figures["agreement_support"] == 2


def test_periodic_reset_every_t_checks_and_warmup():
    guard = CollapseGuard(C, reset_every=3, warmup=1)
    first = guard.check(DIVERSE, ALL_ZERO)  # in warm-up: no alarm
    assert not first.alarm and first.action == "keep"
    assert not guard.check(DIVERSE, DIVERSE).reset
    third = guard.check(DIVERSE, DIVERSE)
    assert third.reset and third.action == "reset"
    assert not guard.check(DIVERSE, DIVERSE).reset  # the count restarted


def test_state_round_trip_and_reset():
    guard = CollapseGuard(C, min_entropy=0.1)
    guard.check(DIVERSE, DIVERSE)
    guard.check(DIVERSE, ALL_ZERO)
    other = CollapseGuard(C, min_entropy=0.1)
    other.load_state_dict(json.loads(json.dumps(guard.state_dict())))
    assert other.state_dict() == guard.state_dict()
    np.testing.assert_allclose(other.check(DIVERSE, DIVERSE).figures["kl_to_prior"],
                               guard.check(DIVERSE, DIVERSE).figures["kl_to_prior"])
    guard.reset()
    assert guard.state_dict() == {"entropy_ema": None, "checks": 0, "updates": 0, "prior": None}


def test_bad_input_and_config():
    guard = CollapseGuard(C)
    with pytest.raises(InvalidInput, match=r"\[B, 4\]"):
        guard.check(np.zeros((2, 3)), np.zeros((2, 3)))
    with pytest.raises(InvalidInput, match="differ"):
        guard.check(DIVERSE, DIVERSE[:4])
    with pytest.raises(ConfigError):
        CollapseGuard(1)
    with pytest.raises(ConfigError):
        CollapseGuard(C, reset_every=0)
    with pytest.raises(ConfigError, match="prior"):
        CollapseGuard(C, prior="median")
    with pytest.raises(ConfigError, match="prior"):
        CollapseGuard(C, prior=[1.0, 0.0, 0.0, 0.0])

"""Properties every policy keeps, on random probability batches (hypothesis).

- thresholds() is [C] float32 within [0, 1]; the one exception is confident learning, which
  reports 2.0 (cleanlab's BIG_VALUE) for classes it has never seen;
- decide() leaves the state unchanged; decisions are well-formed columns;
- state_dict() is JSON-serializable and a restored policy decides exactly as the original;
- EMA statistics fed the same batch repeatedly move monotonically toward their fixed point;
- with per-sample momentum, a batch fed twice equals the batch doubled fed once.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from pseudostream.server.selection import (
    AdshPolicy,
    AlignedPolicy,
    ConfidentLearningPolicy,
    CurriculumPolicy,
    DebiasPLPolicy,
    DistributionAlignment,
    FixedThresholdPolicy,
    FlexMatchPolicy,
    FreeMatchPolicy,
    MultiLabelPolicy,
    PolicyBatch,
    SoftMatchPolicy,
    UncertaintyPolicy,
)
from pseudostream.server.selection.confident import UNSEEN_THRESHOLD

FACTORIES = {
    "fixed": lambda c: FixedThresholdPolicy(c),
    "flexmatch": lambda c: FlexMatchPolicy(c, tau=0.7, max_memory=5),
    "flexmatch_linear": lambda c: FlexMatchPolicy(c, tau=0.7, warmup=False, mapping="linear"),
    "freematch": lambda c: FreeMatchPolicy(c, momentum=0.9),
    "freematch_quantile": lambda c: FreeMatchPolicy(c, momentum_per_sample=0.95, quantile=0.8, clip=0.95),
    "softmatch": lambda c: SoftMatchPolicy(c, momentum=0.9),
    "softmatch_per_class": lambda c: SoftMatchPolicy(
        c, momentum_per_sample=0.9, per_class=True, min_weight=0.5
    ),
    "curriculum": lambda c: CurriculumPolicy(c, window=7, stage_samples=3),
    "debiaspl": lambda c: DebiasPLPolicy(c, momentum=0.9),
    "adsh": lambda c: AdshPolicy(c, tau1=0.8, window=4),
    "confident": lambda c: ConfidentLearningPolicy(c),
    "confident_capped": lambda c: ConfidentLearningPolicy(c, max_count=3),
    "uncertainty": lambda c: UncertaintyPolicy(c),
    "multilabel": lambda c: MultiLabelPolicy(c, momentum=0.9),
    "multilabel_quota": lambda c: MultiLabelPolicy(c, momentum_per_sample=0.9, neg_quota=0.3, window=5),
    "aligned_freematch": lambda c: AlignedPolicy(
        FreeMatchPolicy(c, momentum=0.9), DistributionAlignment(c, momentum=0.9)
    ),
}
SETTINGS = settings(max_examples=50, deadline=None)


def softmax(z):
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def make_batch(kind: str, raw: np.ndarray, ids: list[int]) -> PolicyBatch:
    """raw [1 + K, B, C]: logits, then per-view perturbations."""
    logits = raw[0] * 2.0
    views = softmax(logits[None] + 0.3 * raw[1:])
    probs = 1.0 / (1.0 + np.exp(-logits)) if kind.startswith("multilabel") else softmax(logits)
    return PolicyBatch(probs=probs, ids=[f"s{i}" for i in ids], logits=logits, views=views)


@st.composite
def streams(draw, min_batches=1, max_batches=4):
    """(C, [(raw, ids)]) with batches of 1..8 samples and ids from a small pool (re-selections)."""
    c = draw(st.integers(2, 5))
    batches = []
    for _ in range(draw(st.integers(min_batches, max_batches))):
        b = draw(st.integers(1, 8))
        raw = draw(hnp.arrays(np.float64, (4, b, c), elements=st.floats(-4, 4, width=32)))
        ids = draw(st.lists(st.integers(0, 9), min_size=b, max_size=b))
        batches.append((raw, ids))
    return c, batches


def check_decisions(d, size: int, c: int) -> None:
    assert len(d) == size
    assert d.accept.dtype == bool and d.label.dtype == np.int64
    for col in (d.confidence, d.weight, d.threshold):
        assert col.dtype == np.float32 and col.shape == (size,)
    assert np.all(d.weight[~d.accept] == 0)
    assert np.all((d.weight >= 0) & (d.weight <= 1))
    assert np.array_equal(d.reason == "", d.accept)
    for mask in (d.positive, d.negative):
        assert mask is None or (mask.dtype == bool and mask.shape == (size, c))


def check_thresholds(kind: str, policy, c: int) -> None:
    thr = policy.thresholds()
    assert thr.dtype == np.float32 and thr.shape == (c,)
    if kind.startswith("confident"):
        unseen = policy.n == 0
        assert np.all(thr[unseen] == UNSEEN_THRESHOLD)
        thr = thr[~unseen]
    assert np.all((thr >= 0) & (thr <= 1))


def assert_same_decisions(a, b) -> None:
    for field in ("accept", "label", "confidence", "weight", "threshold", "reason", "positive", "negative"):
        x, y = getattr(a, field), getattr(b, field)
        assert (x is None) == (y is None), field
        if x is not None:
            np.testing.assert_array_equal(x, y, err_msg=field)


@pytest.mark.parametrize("kind", sorted(FACTORIES))
@SETTINGS
@given(stream=streams())
def test_contract_and_threshold_bounds(kind, stream):
    c, batches = stream
    policy = FACTORIES[kind](c)
    check_thresholds(kind, policy, c)
    for raw, ids in batches:
        batch = make_batch(kind, raw, ids)
        before = json.dumps(policy.state_dict())
        policy.decide(batch)
        assert json.dumps(policy.state_dict()) == before  # decide never changes state
        check_decisions(policy.select(batch), len(ids), c)
        check_thresholds(kind, policy, c)


@pytest.mark.parametrize("kind", sorted(FACTORIES))
@SETTINGS
@given(stream=streams(min_batches=2, max_batches=5))
def test_state_round_trip(kind, stream):
    c, batches = stream
    original, raw_copy, json_copy = (FACTORIES[kind](c) for _ in range(3))
    for raw, ids in batches[:-1]:
        original.select(make_batch(kind, raw, ids))
    state = original.state_dict()
    raw_copy.load_state_dict(state)
    json_copy.load_state_dict(json.loads(json.dumps(state)))
    last = make_batch(kind, *batches[-1])
    expected = original.select(last)
    for restored in (raw_copy, json_copy):
        assert_same_decisions(restored.select(last), expected)
        np.testing.assert_array_equal(restored.thresholds(), original.thresholds())
        assert json.dumps(restored.state_dict()) == json.dumps(original.state_dict())


# EMA statistics: (factory, state getter, whether it needs >= 2 samples per batch)
EMA_STATS = {
    "freematch": (lambda c: FreeMatchPolicy(c, momentum=0.8), lambda p: np.r_[p.tau_g, p.p_tilde]),
    "softmatch": (lambda c: SoftMatchPolicy(c, momentum=0.8, dist_align=False), lambda p: np.r_[p.mu, p.var]),
    "softmatch_per_class": (
        lambda c: SoftMatchPolicy(c, momentum=0.8, dist_align=False, per_class=True),
        lambda p: np.r_[p.mu, p.var],
    ),
    "debiaspl": (lambda c: DebiasPLPolicy(c, momentum=0.8), lambda p: p.q_hat),
    "multilabel": (lambda c: MultiLabelPolicy(c, momentum=0.8), lambda p: p.tau_pos),
    "dist_align": (
        lambda c: AlignedPolicy(FixedThresholdPolicy(c), DistributionAlignment(c, momentum=0.8)),
        lambda p: p.align.p_model,
    ),
}


@pytest.mark.parametrize("kind", sorted(EMA_STATS))
@SETTINGS
@given(stream=streams(min_batches=1, max_batches=1))
def test_ema_monotone_under_constant_input(kind, stream):
    c, [(raw, ids)] = stream
    factory, stat = EMA_STATS[kind]
    policy = factory(c)
    batch = make_batch(kind, raw, ids)
    trajectory = []
    for _ in range(12):
        policy.select(batch)
        trajectory.append(np.array(stat(policy), float))
    steps = np.diff(np.array(trajectory), axis=0)
    tol = 1e-12
    assert np.all((steps >= -tol).all(axis=0) | (steps <= tol).all(axis=0))
    if kind == "freematch":  # the fixed point is known: the batch's mean conf and mean p
        target = np.r_[batch.probs.max(axis=1).mean(), batch.probs.mean(axis=0)]
        dist = np.abs(np.array(trajectory) - target)
        assert np.all(np.diff(dist, axis=0) <= tol)


PER_SAMPLE = {
    "freematch": (lambda c: FreeMatchPolicy(c, momentum_per_sample=0.9), lambda p: np.r_[p.tau_g, p.p_tilde]),
    "debiaspl": (lambda c: DebiasPLPolicy(c, momentum_per_sample=0.9), lambda p: p.q_hat),
    "softmatch_mu": (
        lambda c: SoftMatchPolicy(c, momentum_per_sample=0.9, dist_align=False),
        lambda p: np.r_[p.mu],
    ),
    "multilabel": (lambda c: MultiLabelPolicy(c, momentum_per_sample=0.9), lambda p: p.tau_pos),
}


@pytest.mark.parametrize("kind", sorted(PER_SAMPLE))
@SETTINGS
@given(stream=streams(min_batches=1, max_batches=1))
def test_per_sample_momentum_ignores_batching(kind, stream):
    c, [(raw, ids)] = stream
    factory, stat = PER_SAMPLE[kind]
    batch = make_batch(kind, raw, ids)
    twice, doubled = factory(c), factory(c)
    twice.select(batch)
    twice.select(batch)
    doubled.select(make_batch(kind, np.concatenate([raw, raw], axis=1), ids + ids))
    np.testing.assert_allclose(stat(twice), stat(doubled), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("kind", sorted(FACTORIES))
def test_empty_batch(kind):
    policy = FACTORIES[kind](3)
    before = json.dumps(policy.state_dict())
    d = policy.select(make_batch(kind, np.zeros((4, 0, 3)), []))
    check_decisions(d, 0, 3)
    assert json.dumps(policy.state_dict()) == before

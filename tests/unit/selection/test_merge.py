"""Merging replicas' policy states (``ThresholdPolicy.merge``; the scheme is in ``base.py``).

- replicas that merge the same set of states hold identical states, round after round;
- additive and window statistics equal one policy's that saw every replica's samples;
- EMA statistics stay close to one policy's, warm-up included (a plain mean would lag);
- the EMA combination against a hand-computed value; the bookkeeping the caller relies on.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from pseudostream.server.errors import ConfigError, InvalidInput
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

C = 4
FACTORIES = {
    "fixed": lambda: FixedThresholdPolicy(C, tau=0.6),
    "uncertainty": lambda: UncertaintyPolicy(C),
    "flexmatch": lambda: FlexMatchPolicy(C, tau=0.6, max_memory=50),
    "freematch": lambda: FreeMatchPolicy(C, momentum=0.9, clip=0.95),
    "freematch_quantile": lambda: FreeMatchPolicy(C, momentum_per_sample=0.99, quantile=0.8),
    "softmatch": lambda: SoftMatchPolicy(C, momentum=0.9),
    "softmatch_per_class": lambda: SoftMatchPolicy(C, momentum_per_sample=0.95, per_class=True),
    "curriculum": lambda: CurriculumPolicy(C, window=40, stage_samples=30),
    "debiaspl": lambda: DebiasPLPolicy(C, momentum=0.9),
    "adsh": lambda: AdshPolicy(C, tau1=0.7, window=12),
    "confident": lambda: ConfidentLearningPolicy(C),
    "confident_capped": lambda: ConfidentLearningPolicy(C, max_count=20),
    "multilabel": lambda: MultiLabelPolicy(C, momentum_per_sample=0.95, neg_quota=0.3, window=30),
    "aligned_flexmatch": lambda: AlignedPolicy(
        FlexMatchPolicy(C, tau=0.6), DistributionAlignment(C, momentum_per_sample=0.99)
    ),
}


def softmax(z):
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def make_batch(rng, size: int, replica: int, kind: str = "", skew: float = 1.0) -> PolicyBatch:
    """A random batch; ids are unique per replica (disjoint across replicas)."""
    z = rng.normal(size=(size, C)) * 2.0
    z[:, 0] += skew
    probs = 1.0 / (1.0 + np.exp(-z)) if kind == "multilabel" else softmax(z)
    views = softmax(z[None] + 0.2 * rng.normal(size=(3, size, C)))
    ids = [f"r{replica}-{rng.integers(10**12)}" for _ in range(size)]
    return PolicyBatch(probs=probs, ids=ids, logits=z, views=views)


def published(policy) -> dict:
    """What a replica publishes: its state with "_samples", through JSON as over the wire."""
    state = policy.state_dict()
    state["_samples"] = policy.samples_since_merge
    return json.loads(json.dumps(state))


def exchange(replicas) -> None:
    """One round: every replica publishes, then merges everyone else's state."""
    states = [published(r) for r in replicas]
    for i, replica in enumerate(replicas):
        replica.merge(states[:i] + states[i + 1 :])


def canonical(policy) -> str:
    return json.dumps(policy.state_dict(), sort_keys=True)


def feed(rng, replicas, single=None, batches=3, kind=""):
    """Each replica sees its own batches (of varying size); ``single`` sees them all."""
    for _ in range(batches):
        for i, replica in enumerate(replicas):
            batch = make_batch(rng, int(rng.integers(1, 9)), i, kind)
            replica.select(batch)
            if single is not None:
                single.select(batch)


@pytest.mark.parametrize("kind", sorted(FACTORIES))
def test_replicas_hold_identical_states_after_each_round(kind):
    rng = np.random.default_rng(1)
    replicas = [FACTORIES[kind]() for _ in range(3)]
    probe = make_batch(rng, 16, 9, kind)
    for _ in range(4):
        feed(rng, replicas, kind=kind)
        exchange(replicas)
        assert len({canonical(r) for r in replicas}) == 1
        assert all(r.samples_since_merge == 0 for r in replicas)
        for r in replicas[1:]:
            np.testing.assert_array_equal(r.thresholds(), replicas[0].thresholds())
            np.testing.assert_array_equal(r.decide(probe).accept, replicas[0].decide(probe).accept)


def test_confident_learning_equals_one_policy_over_all_samples():
    rng = np.random.default_rng(2)
    replicas, single = [ConfidentLearningPolicy(C) for _ in range(3)], ConfidentLearningPolicy(C)
    for _ in range(5):  # repeated rounds: the shared base is never counted twice
        feed(rng, replicas, single)
        exchange(replicas)
        np.testing.assert_array_equal(replicas[0].n, single.n)
        np.testing.assert_allclose(replicas[0].t, single.t, rtol=1e-12)


def test_flexmatch_memory_equals_one_policy_over_disjoint_ids():
    rng = np.random.default_rng(3)
    replicas = [FlexMatchPolicy(C, tau=0.6, max_memory=10_000) for _ in range(3)]
    single = FlexMatchPolicy(C, tau=0.6, max_memory=10_000)
    for _ in range(4):
        feed(rng, replicas, single)
        exchange(replicas)
        assert dict(replicas[0]._memory) == dict(single._memory)
        np.testing.assert_array_equal(replicas[0]._sigma, single._sigma)
        np.testing.assert_array_equal(replicas[0].thresholds(), single.thresholds())


def test_flexmatch_union_is_bounded_and_newest_wins():
    a, b = FlexMatchPolicy(2, tau=0.5, max_memory=3), FlexMatchPolicy(2, tau=0.5, max_memory=3)
    a.select(PolicyBatch(probs=np.array([[0.9, 0.1], [0.8, 0.2]]), ids=["x", "y"]))
    b.select(PolicyBatch(probs=np.array([[0.9, 0.1], [0.8, 0.2]]), ids=["p", "q"]))
    exchange([a, b])
    # interleaved by relative position (ties by entry): p, x (first halves), then q, y; keep 3
    assert a.state_dict()["memory"] == [["x", 0], ["q", 0], ["y", 0]]
    # an id selected again with another label moves to the newest end with that label
    a.select(PolicyBatch(probs=np.array([[0.1, 0.9]]), ids=["p"]))
    exchange([a, b])
    assert dict(a._memory) == {"y": 0, "q": 0, "p": 1}
    assert a._sigma.tolist() == [2, 1]


def test_windows_equal_one_policy_until_they_fill():
    rng = np.random.default_rng(4)
    makers = (lambda: CurriculumPolicy(C, window=500, stage_samples=20), lambda: AdshPolicy(C, window=500))
    for make in makers:
        replicas, single = [make() for _ in range(3)], make()
        for _ in range(3):
            feed(rng, replicas, single)
            exchange(replicas)
            np.testing.assert_array_equal(replicas[0].thresholds(), single.thresholds())
        if isinstance(single, CurriculumPolicy):
            assert replicas[0].seen == single.seen and replicas[0].stage == single.stage
            assert sorted(replicas[0].state_dict()["window"]) == sorted(single.state_dict()["window"])


def test_windows_keep_the_newest_entries_of_every_replica():
    a, b = CurriculumPolicy(2, window=4), CurriculumPolicy(2, window=4)
    a.select(PolicyBatch(probs=np.array([[p, 1 - p] for p in (0.91, 0.92, 0.93)]), ids=list("abc")))
    b.select(PolicyBatch(probs=np.array([[p, 1 - p] for p in (0.81, 0.82, 0.83)]), ids=list("def")))
    exchange([a, b])
    # interleaved by relative position, ties by value: .81 .91 .82 .92 .83 .93 -> newest 4
    assert a.state_dict()["window"] == pytest.approx([0.82, 0.92, 0.83, 0.93])
    assert a.seen == b.seen == 6


EMA_STATS = {
    "freematch": (lambda: FreeMatchPolicy(C, momentum_per_sample=0.999), lambda p: np.r_[p.tau_g, p.p_tilde]),
    "freematch_per_batch": (lambda: FreeMatchPolicy(C, momentum=0.99), lambda p: np.r_[p.tau_g, p.p_tilde]),
    "softmatch": (lambda: SoftMatchPolicy(C, momentum_per_sample=0.999), lambda p: np.r_[p.mu, p.var]),
    "debiaspl": (lambda: DebiasPLPolicy(C, momentum_per_sample=0.999), lambda p: p.q_hat),
    "multilabel": (lambda: MultiLabelPolicy(C, momentum_per_sample=0.999), lambda p: p.tau_pos),
    "dist_align": (
        lambda: AlignedPolicy(FixedThresholdPolicy(C), DistributionAlignment(C, momentum_per_sample=0.999)),
        lambda p: p.align.p_model,
    ),
}


@pytest.mark.parametrize("kind", sorted(EMA_STATS))
def test_ema_merge_tracks_one_policy_over_all_samples(kind):
    """A stationary stream, from the initial values (the warm-up) to convergence.

    Distribution alignment starts from a common p_model: initialized by "the first batch", one
    policy's p_model is mostly one replica's first batch, where the merge averages every
    replica's first batch (``test_distribution_alignment_first_merge_weighs_by_samples``).
    """
    make, stat = EMA_STATS[kind]
    rng = np.random.default_rng(5)
    replicas, single = [make() for _ in range(3)], make()
    if kind == "dist_align":
        common = single.state_dict()
        common["align"] = {"p_model": [1.0 / C] * C, "p_target": [1.0 / C] * C}
        for policy in (*replicas, single):
            policy.load_state_dict(common)
    for _ in range(30):
        for _ in range(5):
            for i, replica in enumerate(replicas):
                batch = make_batch(rng, 16, i, kind)
                replica.select(batch)
                single.select(batch)
        exchange(replicas)
        np.testing.assert_allclose(stat(replicas[0]), stat(single), atol=3e-3)


def test_ema_merge_by_hand_and_why_not_a_plain_mean():
    """Two replicas, tau_g from 0.5 with momentum 0.5, one batch of confidence 1.0 each.

    One policy over both batches: 0.5 -> 0.75 -> 0.875. Each replica holds 0.75, so any mean of
    the replicas' values says 0.75. The merge: lam = ln 2 each, D = 1/4, kappa = (3/4) / (2 ln 2),
    g = ln 2 / (1/2) = 2 ln 2, drift 0.25 each: 0.5 + kappa * 2 ln 2 * 0.5 = 0.875.
    """
    replicas = [FreeMatchPolicy(2, momentum=0.5) for _ in range(2)]
    for r in replicas:
        r.load_state_dict({"tau_g": 0.5, "p_tilde": [0.5, 0.5]})
        r.select(PolicyBatch(probs=np.array([[1.0, 0.0]]), ids=["s"]))
        assert r.tau_g == pytest.approx(0.75)
    exchange(replicas)
    assert replicas[0].tau_g == pytest.approx(0.875, rel=1e-12)
    np.testing.assert_allclose(replicas[0].p_tilde, [0.875, 0.125], rtol=1e-12)


def assert_same_statistics(after, before, where: str) -> None:
    """Equal states, numbers to 1e-12, ignoring the merge bookkeeping."""
    if isinstance(before, dict):
        assert set(after) - {"merge"} == set(before) - {"merge"}, where
        for key in set(before) - {"merge"}:
            assert_same_statistics(after[key], before[key], f"{where}.{key}")
    elif isinstance(before, (int, float)) or (isinstance(before, list) and not any(
        isinstance(x, (str, list)) for x in np.ravel(np.asarray(before, dtype=object)).tolist()
    )):
        a, b = np.asarray(after, float), np.asarray(before, float)
        np.testing.assert_allclose(a, b, rtol=1e-12, err_msg=where)
    else:
        assert after == before, where


@pytest.mark.parametrize("kind", sorted(FACTORIES))
def test_merge_with_no_others_keeps_the_state(kind):
    policy = FACTORIES[kind]()
    feed(np.random.default_rng(6), [policy], kind=kind)
    before = policy.state_dict()
    policy.merge([])
    assert_same_statistics(policy.state_dict(), before, kind)


def test_distribution_alignment_first_merge_weighs_by_samples():
    a, b = (AlignedPolicy(FixedThresholdPolicy(2), DistributionAlignment(2, momentum=0.5)) for _ in range(2))
    a.select(PolicyBatch(probs=np.array([[0.9, 0.1]] * 3), ids=list("abc")))  # p_model [0.9, 0.1]
    b.select(PolicyBatch(probs=np.array([[0.5, 0.5]]), ids=["d"]))  # p_model [0.5, 0.5]
    exchange([a, b])
    np.testing.assert_allclose(a.align.p_model, [(3 * 0.9 + 0.5) / 4, (3 * 0.1 + 0.5) / 4])
    assert canonical(a) == canonical(b)


def test_samples_since_merge_counts_selected_samples():
    policy = AlignedPolicy(FreeMatchPolicy(2), DistributionAlignment(2))
    policy.select(PolicyBatch(probs=np.array([[0.7, 0.3]] * 5), ids=list("abcde")))
    policy.select(PolicyBatch(probs=np.array([[0.7, 0.3]] * 2), ids=list("fg")))
    assert policy.samples_since_merge == 7
    policy.merge([])
    assert policy.samples_since_merge == 0 and policy.inner.samples_since_merge == 0


def test_a_replica_that_missed_a_round_heals_at_the_next():
    rng = np.random.default_rng(7)
    for kind in ("freematch", "confident", "curriculum", "flexmatch"):
        replicas = [FACTORIES[kind]() for _ in range(3)]
        feed(rng, replicas)
        states = [published(r) for r in replicas]
        replicas[0].merge(states[1:])
        replicas[1].merge(states[:1] + states[2:])
        replicas[2].merge([])  # its read failed: merged only itself
        feed(rng, replicas)
        exchange(replicas)
        assert len({canonical(r) for r in replicas}) == 1, kind


def test_a_joining_replica_loads_a_peer_then_merges_the_rest():
    rng = np.random.default_rng(8)
    for kind, rounds in (("softmatch", 1), ("aligned_flexmatch", 0), ("confident", 1), ("adsh", 1)):
        replicas = [FACTORIES[kind]() for _ in range(2)]
        for _ in range(rounds):  # 0: the joiner comes before the first merge (no common base yet)
            feed(rng, replicas)
            exchange(replicas)
        feed(rng, replicas)
        states = [published(r) for r in replicas]
        exchange(replicas)
        joiner = FACTORIES[kind]()
        joiner.load_state_dict(states[0])
        joiner.samples_since_merge = states[0]["_samples"]
        joiner.merge(states[1:])
        assert canonical(joiner) == canonical(replicas[0]), kind


@pytest.mark.parametrize("kind", sorted(FACTORIES))
def test_selects_between_publishing_and_merging_are_replayed(kind):
    """With ``published``, a replica ends the round as the race-free merge plus its later batches."""
    rng = np.random.default_rng(10)
    replicas = [FACTORIES[kind]() for _ in range(3)]
    feed(rng, replicas, kind=kind)
    states = [published(r) for r in replicas]
    later = [make_batch(rng, 5, i, kind) for i in range(3)]
    for i, replica in enumerate(replicas):
        replica.select(later[i])  # selected while the states were being exchanged
        replica.merge(states[:i] + states[i + 1 :], published=states[i])
        twin = FACTORIES[kind]()
        twin.load_state_dict(states[i])
        twin.samples_since_merge = states[i]["_samples"]
        twin.merge(states[:i] + states[i + 1 :])
        twin.select(later[i])
        assert canonical(replica) == canonical(twin)
        assert replica.samples_since_merge == 5
    exchange(replicas)
    assert len({canonical(r) for r in replicas}) == 1


def test_rounds_with_selects_in_between_equal_one_policy_for_counts():
    rng = np.random.default_rng(11)
    replicas, single = [ConfidentLearningPolicy(C) for _ in range(3)], ConfidentLearningPolicy(C)
    for _ in range(4):
        feed(rng, replicas, single)
        states = [published(r) for r in replicas]
        feed(rng, replicas, single, batches=1)
        for i, replica in enumerate(replicas):
            replica.merge(states[:i] + states[i + 1 :], published=states[i])
    exchange(replicas)
    for replica in replicas:
        np.testing.assert_array_equal(replica.n, single.n)
        np.testing.assert_allclose(replica.t, single.t, rtol=1e-12)


def test_replay_beyond_its_limit_merges_the_current_state(caplog):
    policy, other = FreeMatchPolicy(C), FreeMatchPolicy(C)
    policy.replay_limit = 4
    state = published(policy)
    rng = np.random.default_rng(12)
    for _ in range(3):
        policy.select(make_batch(rng, 3, 0))
    with caplog.at_level("WARNING"):
        policy.merge([published(other)], published=state)
    assert "replay_limit" in caplog.text and policy.samples_since_merge == 0
    with pytest.raises(InvalidInput, match="not this replica"):
        policy.merge([], published={**state, "_samples": 1})


def test_merge_rejects_states_without_samples_or_from_another_config():
    policy = FreeMatchPolicy(3)
    state = policy.state_dict()
    with pytest.raises(InvalidInput, match="_samples"):
        policy.merge([state])
    other = FreeMatchPolicy(4).state_dict()
    with pytest.raises(ConfigError, match="same policy"):
        policy.merge([{**other, "_samples": 3}])

"""Weight-level test-time adaptation on a live topic: an adapted teacher is published and served,
a destructive adapter trips the guard, and the served version returns to the source."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from pseudostream.clients.client import AsyncLabelerClient
from pseudostream.server.app import LabelingServer

pytestmark = pytest.mark.integration

SEVERITY = 2  # the frozen demo teacher gets about 40% right here


@pytest.fixture(scope="module")
def shifted(digits):
    from pseudostream.models.shift import apply_shift

    return (apply_shift(digits.stream_x, seed=11, severity=SEVERITY), digits.stream_y,
            apply_shift(digits.test_x, seed=12, severity=SEVERITY), digits.test_y)


def _config(make_config, **adapt):
    return make_config(topics={"digits": {"trusted_producers": ["*"], "adapt": adapt,
                                          "policy": {"name": "fixed", "params": {"tau": 0.0}}}})


async def _served_accuracy(server, x, y):
    out = await server.core.backend("digits-cnn").infer(np.ascontiguousarray(x))
    return float((out.logits.argmax(1) == y).mean())


async def _until(predicate, timeout_s=120.0):
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.1)


async def test_online_bn_stats_publishes_a_better_teacher_under_shift(make_config, shifted):
    x, _, test_x, test_y = shifted
    config = _config(make_config, method="bn_stats", window=256, params={"bn_prior": 16})
    async with LabelingServer(config) as server:
        source_acc = await _served_accuracy(server, test_x, test_y)
        async with AsyncLabelerClient(server.address) as client:
            for k in range(0, 512, 64):
                await client.label("digits", np.ascontiguousarray(x[k:k + 64]),
                                   ids=[f"s{k + i}" for i in range(64)])
            weight = server.core.topics["digits"].weight
            await _until(lambda: weight.published >= 1)
            adapted_acc = await _served_accuracy(server, test_x, test_y)
            version = server.core.backend("digits-cnn").metadata.version
            r = await client.label("digits", np.ascontiguousarray(x[600:632]), ids=[f"after{i}" for i in range(32)])
            history = await client.teacher_history("digits-cnn")
    assert version == "2" and set(r.teacher_version) == {"2"}
    assert adapted_acc > source_acc + 0.15, (source_acc, adapted_acc)  # BN statistics fix most of it
    adapt = [rec for rec in history.records if rec.origin == "adapt"]
    assert adapt and adapt[0].version == "2" and adapt[0].proposer == "adapter:bn_stats"


async def test_destructive_adapter_trips_the_guard_and_its_window_is_low_trust(make_config, shifted):
    x = shifted[0]
    config = _config(make_config, method="tent", mode="adapt_then_label",
                     params={"optimizer": "sgd", "lr": 5000.0, "steps": 5})
    async with LabelingServer(config) as server:
        async with AsyncLabelerClient(server.address) as client:
            r = await client.label("digits", np.ascontiguousarray(x[:64]), ids=[f"d{i}" for i in range(64)])
            weight = server.core.topics["digits"].weight
            assert weight.alarms >= 1 and weight.resets >= 1, weight.last
            assert not r.accepted.any() and set(r.reason) == {"adapter_alarm"}
            assert set(r.teacher_version) == {"1+tent.0"}  # labeled by the reset (source) weights
            assert server.core.backend("digits-cnn").metadata.version == "1"
            registry = server.core.metrics.registry
            assert registry.get_sample_value("pseudostream_adapter_resets_total",
                                             {"topic": "digits", "adapter": "tent"}) >= 1
            alarms = [registry.get_sample_value("pseudostream_adapter_alarms_total",
                                                {"topic": "digits", "adapter": "tent", "signal": s})
                      for s in ("classes_ratio", "top_class_excess", "kl_to_prior")]
            assert sum(alarms) >= 1


async def test_periodic_reset_serves_the_source_version_again(make_config, shifted):
    x = shifted[0]
    config = _config(make_config, method="bn_stats", window=128, guard={"reset_every": 2})
    async with LabelingServer(config) as server:
        weight = server.core.topics["digits"].weight
        async with AsyncLabelerClient(server.address) as client:
            await client.label("digits", np.ascontiguousarray(x[:128]), ids=[f"a{i}" for i in range(128)])
            await _until(lambda: weight.published == 1)
            assert server.core.backend("digits-cnn").metadata.version == "2"
            await client.label("digits", np.ascontiguousarray(x[128:256]), ids=[f"b{i}" for i in range(128)])
            # resets counts from the moment the guard resets; the rollback to v1 is served after
            await _until(lambda: weight.resets == 1 and server.core.backend("digits-cnn").metadata.version == "1")
            assert server.core.backend("digits-cnn").metadata.version == "1"
            history = await client.teacher_history("digits-cnn")
    assert [(r.origin, r.version) for r in history.records][-2:] == [("adapt", "2"), ("rollback", "1")]


async def test_a_collapsed_published_teacher_is_replaced_by_the_source(make_config, shifted):
    """With the guard's warm-up, a destructive update (SGD lr 5000) gets published as v2; the next
    window's check sees the collapse, and the service serves v1 again."""
    x = shifted[0]
    config = _config(make_config, method="tent", window=64, guard={"warmup": 1},
                     params={"optimizer": "sgd", "lr": 5000.0, "steps": 5})
    async with LabelingServer(config) as server:
        weight = server.core.topics["digits"].weight
        async with AsyncLabelerClient(server.address) as client:
            await client.label("digits", np.ascontiguousarray(x[:64]), ids=[f"a{i}" for i in range(64)])
            await _until(lambda: weight.published == 1)
            assert server.core.backend("digits-cnn").metadata.version == "2"
            await client.label("digits", np.ascontiguousarray(x[64:128]), ids=[f"b{i}" for i in range(64)])
            # resets counts from the moment the guard resets; the rollback to v1 is served after
            await _until(lambda: weight.resets == 1 and server.core.backend("digits-cnn").metadata.version == "1")
            assert weight.alarms == 1 and set(weight.last.reasons) & {"classes_ratio", "top_class_excess"}
            assert server.core.backend("digits-cnn").metadata.version == "1"
            after = await client.label("digits", np.ascontiguousarray(x[128:160]), ids=[f"c{i}" for i in range(32)])
            history = await client.teacher_history("digits-cnn")
    assert set(after.teacher_version) == {"1"}
    assert [(r.origin, r.version, r.proposer) for r in history.records][-2:] == [
        ("adapt", "2", "adapter:tent"), ("rollback", "1", "guard:tent")]

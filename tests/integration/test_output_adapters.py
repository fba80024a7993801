"""Output-level test-time adapters on a live topic: the service's decisions are the adapter's
own outputs, labels record the adapter state, and untrusted producers do not move it."""

from __future__ import annotations

import numpy as np
import pytest

from pseudostream.clients.client import AsyncLabelerClient
from pseudostream.server.adaptation import PriorEMAdapter
from pseudostream.server.adaptation.base import AdapterInput
from pseudostream.server.app import LabelingServer
from pseudostream.server.errors import ConfigError

pytestmark = pytest.mark.integration


def _label_shifted(digits, n_batches=6, size=32):
    """Batches drawn mostly from classes 0-2 (a label shift)."""
    rng = np.random.default_rng(0)
    pool = np.flatnonzero(digits.stream_y < 3)
    rest = np.flatnonzero(digits.stream_y >= 3)
    picks = [np.concatenate([rng.choice(pool, size - 4, replace=False), rng.choice(rest, 4, replace=False)])
             for _ in range(n_batches)]
    return [np.ascontiguousarray(digits.stream_x[p]) for p in picks]


async def test_prior_em_runs_in_the_topic_as_it_does_alone(make_config, digits, teacher_dir, reference_probs):
    from pseudostream.models.card import TeacherCard

    batches = _label_shifted(digits)
    config = make_config(topics={"digits": {"adapters": [{"name": "prior_em", "params": {"window": 64}}],
                                            "trusted_producers": ["*"],
                                            "policy": {"name": "fixed", "params": {"tau": 0.0}}}})
    prior = TeacherCard.load(teacher_dir).source_prior
    alone = PriorEMAdapter(10, source_prior=prior, window=64)
    async with LabelingServer(config) as server:
        async with AsyncLabelerClient(server.address) as client:
            for k, x in enumerate(batches):
                r = await client.label("digits", x, ids=[f"b{k}-{i}" for i in range(len(x))])
                expected = alone.adapt(AdapterInput(probs=reference_probs(x)))
                assert np.allclose(r.confidence, expected.max(axis=1), atol=1e-5)
                assert np.array_equal(r.label, expected.argmax(axis=1))
                assert set(r.teacher_version) == {f"1+prior_em.{k + 1}"}
            records = []
            async for part in client.subscribe("digits", "g", "c", include_samples=False):
                records.extend(part)
                if len(records) == 32 * len(batches):
                    break
    assert {r.teacher_version for r in records} == {f"1+prior_em.{k}" for k in range(1, 7)}


async def test_untrusted_producers_do_not_move_adapter_state(make_config, digits, reference_probs):
    x = _label_shifted(digits, n_batches=3)
    config = make_config(topics={"digits": {"adapters": [{"name": "prior_em"}],
                                            "trusted_producers": ["someone-else"]}})
    async with LabelingServer(config) as server:
        async with AsyncLabelerClient(server.address) as client:
            for k, batch in enumerate(x):
                r = await client.label("digits", batch, ids=[f"u{k}-{i}" for i in range(len(batch))])
                assert set(r.teacher_version) == {"1+prior_em.0"}
            topic = server.core.topics["digits"]
            assert topic.adapters.updates == 0
            adapter = topic.adapters.adapters[0]
            assert adapter.state_dict() == adapter._initial  # as built: nothing learned


def test_adapters_need_trusted_producers_and_known_names(make_config):
    with pytest.raises(ValueError, match="trusted_producers"):
        make_config(topics={"digits": {"adapters": [{"name": "prior_em"}]}})
    config = make_config(topics={"digits": {"adapters": [{"name": "nope"}], "trusted_producers": ["*"]}})
    with pytest.raises(ConfigError, match="nope"):
        import asyncio

        async def start():
            async with LabelingServer(config):
                pass

        asyncio.run(start())

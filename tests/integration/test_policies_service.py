"""Adaptive policies inside the running service: state survives restarts, live state is exposed
(GetTopic and /metrics), views and multi-label decisions reach producers and trainers."""

from __future__ import annotations

import asyncio
import json
import shutil
import urllib.request

import numpy as np
import pytest

from pseudostream.clients.client import AsyncLabelerClient
from pseudostream.server.app import LabelingServer
from pseudostream.server.errors import ConfigError
from pseudostream.server.selection import make_policy

pytestmark = pytest.mark.integration

REQUESTS, PER_REQUEST = 8, 16

POLICIES = {
    "flexmatch": {"name": "flexmatch", "params": {"tau": 0.95}},
    "freematch": {"name": "freematch", "params": {"momentum": 0.9}},
    "softmatch": {"name": "softmatch", "params": {"momentum": 0.9, "min_weight": 0.5}},
    "curriculum": {"name": "curriculum", "params": {"window": 40, "stage_samples": 30}},
    "debiaspl": {"name": "debiaspl", "params": {"momentum": 0.9}},
    "adsh": {"name": "adsh", "params": {"window": 50}},
    "confident": {"name": "confident"},
}


async def _decide(address: str, x: np.ndarray, first: int, last: int) -> list[tuple]:
    out = []
    async with AsyncLabelerClient(address) as client:
        for r in range(first, last):  # one request at a time: one request is one teacher batch
            rows = slice(r * PER_REQUEST, (r + 1) * PER_REQUEST)
            res = await client.label("digits", x[rows], ids=[f"x{r}-{i}" for i in range(PER_REQUEST)])
            out.append((res.accepted.tolist(), res.label.tolist(), res.weight.tolist(),
                        res.threshold.tolist(), res.reason))
    return out


@pytest.mark.parametrize("policy", sorted(POLICIES))
async def test_restart_mid_stream_gives_the_same_decisions(policy, make_config, digits, tmp_path):
    from pseudostream.models.shift import apply_shift

    x = apply_shift(digits.stream_x[:REQUESTS * PER_REQUEST], seed=7)
    topic = {"digits": {"policy": POLICIES[policy]}}
    straight = make_config(topics=topic, label_log={"path": tmp_path / "a.db"})
    restarted = make_config(topics=topic, label_log={"path": tmp_path / "b.db"})
    async with LabelingServer(straight) as server:
        expected = await _decide(server.address, x, 0, REQUESTS)
        adapted = server.core.topics["digits"].policy.state_dict()
    half = REQUESTS // 2
    async with LabelingServer(restarted) as server:
        got = await _decide(server.address, x, 0, half)
    async with LabelingServer(restarted) as server:  # restores the checkpoint taken at shutdown
        got += await _decide(server.address, x, half, REQUESTS)
    assert got == expected
    fresh = make_policy(POLICIES[policy]["name"], 10, POLICIES[policy].get("params"))
    assert json.dumps(adapted, sort_keys=True) != json.dumps(fresh.state_dict(), sort_keys=True)


async def test_topic_state_and_metrics_expose_thresholds_quantity_and_quality(make_config, digits):
    config = make_config(topics={"digits": {
        "policy": {"name": "softmatch", "params": {"momentum": 0.9, "min_weight": 0.2}},
        "dist_align": {"momentum": 0.9}, "audit_label_key": "truth"}})
    n = 64
    x, y = digits.stream_x[:n], digits.stream_y[:n]
    audited = np.arange(n) % 2 == 0
    meta = [{"truth": str(int(y[i]))} if audited[i] else {} for i in range(n)]
    async with LabelingServer(config) as server:
        async with AsyncLabelerClient(server.address) as client:
            res = await client.label("digits", x, ids=[f"q{i}" for i in range(n)], metadata=meta)
            state = await client.get_topic("digits")
        url = f"http://127.0.0.1:{server.metrics_port}/metrics"
        scrape = await asyncio.get_running_loop().run_in_executor(
            None, lambda: urllib.request.urlopen(url, timeout=10).read().decode())
    w = res.weight.astype(np.float64)
    expected_quality = w[audited][res.label[audited] == y[audited]].sum() / w[audited].sum()
    assert state.policy == "softmatch+dist_align"
    assert state.audited == audited.sum()
    assert state.quality == pytest.approx(expected_quality, rel=1e-5)
    assert state.quantity == pytest.approx(w.mean(), rel=1e-5)
    assert len(state.thresholds) == 10 and sum(state.predicted_per_class) == n
    # Audited samples are never logged for trainers.
    assert (res.offset[audited] == -1).all()
    assert state.log_end_offset == int((res.accepted & ~audited).sum())
    for family in ('pseudostream_threshold{class="3",topic="digits"}',
                   'pseudostream_quality{topic="digits"}', 'pseudostream_quantity{topic="digits"}',
                   'pseudostream_acceptance_ratio{class="0",topic="digits"}',
                   'pseudostream_accepted_total{class='):
        assert family in scrape, family


async def test_bad_audit_label_is_invalid_argument(make_config, digits):
    import grpc

    config = make_config(topics={"digits": {"audit_label_key": "truth"}})
    async with LabelingServer(config) as server:
        async with AsyncLabelerClient(server.address) as client:
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await client.label("digits", digits.stream_x[:2], ids=["a", "b"],
                                   metadata=[{"truth": "cat"}, {}])
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "class index in 0..9" in info.value.details()


async def test_uncertainty_policy_runs_on_test_time_views(make_config, digits):
    with pytest.raises(ConfigError, match="needs several views"):
        async with LabelingServer(make_config(topics={"digits": {"policy": {"name": "uncertainty"}}})):
            pass
    config = make_config(topics={"digits": {"policy": {"name": "uncertainty"},
                                            "views": {"count": 4, "max_shift": 1}}})
    async with LabelingServer(config) as server:
        async with AsyncLabelerClient(server.address) as client:
            res = await client.label("digits", digits.stream_x[:32], ids=[f"u{i}" for i in range(32)])
        inferred = server.metrics.registry.get_sample_value(
            "pseudostream_batch_size_sum", {"teacher": "digits-cnn"})
    assert inferred == 32 * 4  # the batch, then 3 augmented copies in one more inference
    assert set(res.reason) <= {"", "uncertain", "below_class_threshold"}
    assert res.accepted.any()


async def test_multilabel_topic_delivers_class_lists(make_config, teacher_dir, digits, tmp_path):
    ml_dir = tmp_path / "ml-teacher"
    shutil.copytree(teacher_dir, ml_dir)
    card = json.loads((ml_dir / "teacher.json").read_text())
    card["task"] = "multilabel"  # the same logits read as independent sigmoid scores
    (ml_dir / "teacher.json").write_text(json.dumps(card))
    config = make_config(teachers={"digits-cnn": {"model_dir": ml_dir}},
                         topics={"digits": {"policy": {"name": "multilabel",
                                                       "params": {"neg_threshold": 0.05}}}})
    async with LabelingServer(config) as server:
        async with AsyncLabelerClient(server.address) as client:
            res = await client.label("digits", digits.stream_x[:16], ids=[f"m{i}" for i in range(16)])
            records = []
            async for batch in client.subscribe("digits", "g", "c"):
                records.extend(batch)
                if len(records) >= int(res.accepted.sum()):
                    break
    assert res.accepted.any() and (res.label == -1).all()
    assert all(r.label == -1 and (r.positive or r.negative) for r in records)
    assert all(set(r.positive).isdisjoint(r.negative) for r in records)

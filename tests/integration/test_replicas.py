"""Two service processes share one Redis: producers spread over both, two trainers of one group
(one on each replica) receive every accepted label, none acked is delivered again, and the union
of what they trained on is exactly the accepted set."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import uuid

import numpy as np
import pytest
import yaml

from pseudostream.clients.client import AsyncLabelerClient, make_label_request

pytestmark = pytest.mark.integration

CLI = [sys.executable, "-m", "pseudostream.clients.cli"]


def _start(tmp_path, teacher_dir, redis_url: str, prefix: str, name: str,
           port: int) -> tuple[subprocess.Popen, str]:
    config = tmp_path / f"{name}.yaml"
    config.write_text(yaml.safe_dump({
        "port": port, "metrics_port": None, "replica_id": name,
        "teachers": {"digits-cnn": {"model_dir": str(teacher_dir), "max_delay_ms": 2}},
        "topics": {"digits": {"teacher": "digits-cnn",
                              "policy": {"name": "freematch", "params": {"momentum_per_sample": 0.99}}}},
        "label_log": {"kind": "redis", "url": redis_url, "prefix": prefix, "visibility_timeout_s": 30},
    }))
    proc = subprocess.Popen(CLI + ["serve", "--config", str(config)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    assert f"serving on 127.0.0.1:{port}" in line, proc.stderr.read()[-2000:]
    return proc, f"127.0.0.1:{port}"


async def _produce(target: str, x: np.ndarray, prefix: str) -> dict[str, int]:
    requests = [make_label_request("digits", x[i:i + 16], [f"{prefix}-{i + k}" for k in range(len(x[i:i + 16]))])
                for i in range(0, len(x), 16)]
    accepted: dict[str, int] = {}
    async with AsyncLabelerClient(target) as client:
        async for r in client.label_stream(requests):
            accepted.update({r.ids[k]: int(r.offset[k]) for k in np.flatnonzero(r.accepted)})
    return accepted


async def _train(target: str, consumer: str, stop: asyncio.Event, seen: list) -> None:
    async with AsyncLabelerClient(target) as client:
        async def consume() -> None:
            async for records in client.subscribe("digits", "students", consumer, max_batch=32,
                                                  include_samples=False):
                seen.extend((r.sample_id, r.offset) for r in records)
                await client.ack("digits", "students", [r.offset for r in records], consumer)

        task = asyncio.create_task(consume())
        await stop.wait()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_two_replicas_share_one_label_log(tmp_path, teacher_dir, redis_url, digits, free_port):
    prefix = f"replicas-{uuid.uuid4().hex}"
    procs = [_start(tmp_path, teacher_dir, redis_url, prefix, f"replica-{k}", free_port())
             for k in range(2)]
    targets = [t for _, t in procs]
    try:
        stop = asyncio.Event()
        seen: list[list] = [[], []]
        trainers = [asyncio.create_task(_train(targets[k], f"trainer-{k}", stop, seen[k])) for k in range(2)]
        shards = np.array_split(np.ascontiguousarray(digits.stream_x[:480]), 4)
        results = await asyncio.gather(*[_produce(targets[k % 2], shards[k], f"p{k}") for k in range(4)])
        accepted = {sid: off for part in results for sid, off in part.items()}
        for _ in range(200):  # until the trainers hold everything
            if len(seen[0]) + len(seen[1]) >= len(accepted):
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)  # and nothing more arrives
        stop.set()
        await asyncio.gather(*trainers)
        async with AsyncLabelerClient(targets[0]) as client:
            state = await client.get_topic("digits", groups=["students"])
    finally:
        for proc, _ in procs:
            proc.send_signal(signal.SIGTERM)
        codes = [proc.wait(timeout=30) for proc, _ in procs]
    delivered = seen[0] + seen[1]
    assert accepted and codes == [0, 0]
    assert sorted(off for _, off in delivered) == sorted(accepted.values())  # each exactly once
    assert {sid for sid, _ in delivered} == set(accepted)
    assert sorted(accepted.values()) == list(range(len(accepted)))  # one offset sequence
    assert seen[0] and seen[1]  # both trainers did work
    assert state.group_lag["students"] == 0


async def test_replicas_merge_policy_statistics_into_one_policy(make_config, redis_url, digits):
    from pseudostream.models.shift import apply_shift
    from pseudostream.server.app import LabelingServer

    prefix = f"sync-{uuid.uuid4().hex}"
    topic = {"digits": {"policy": {"name": "freematch", "params": {"momentum_per_sample": 0.99}}}}

    def config(name: str):
        return make_config(replica_id=name, policy_sync_s=0.4, topics=topic,
                           label_log={"kind": "redis", "url": redis_url, "prefix": prefix})

    x = apply_shift(digits.stream_x[:64], seed=3)
    # The whole exchange takes a few seconds; a hang fails here, with the await it hung in, not
    # at pytest-timeout's 300 s with only the threads' stacks (seen once in a full run).
    async with asyncio.timeout(90):
        async with LabelingServer(config("a")) as a, LabelingServer(config("b")) as b:
            fresh = b.core.topics["digits"].policy.state_dict()
            async with AsyncLabelerClient(a.address) as client:  # only replica a sees samples
                await client.label("digits", x, ids=[f"s{i}" for i in range(64)])
            rounds = a.core.sync.rounds
            for _ in range(100):
                if a.core.sync.rounds >= rounds + 2 and b.core.sync.rounds >= rounds + 2:
                    break
                await asyncio.sleep(0.1)
            state_a = a.core.topics["digits"].policy.state_dict()
            state_b = b.core.topics["digits"].policy.state_dict()
    assert state_b["tau_g"] != fresh["tau_g"]  # b learned from a's samples
    assert state_a["tau_g"] == pytest.approx(state_b["tau_g"])
    assert state_a["p_tilde"] == pytest.approx(state_b["p_tilde"])

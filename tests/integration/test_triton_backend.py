"""The labeling service with its teacher behind a real Triton (the bundled CPU tritonserver):
parity with the embedded backend, Triton killed mid-stream, a version published mid-stream,
and Triton's own metrics."""

from __future__ import annotations

import asyncio
import urllib.request

import grpc
import numpy as np
import pytest

from pseudostream.clients.client import AsyncLabelerClient, make_label_request
from pseudostream.server.app import LabelingServer

pytestmark = pytest.mark.integration
triton_repo_mod = pytest.importorskip("pseudostream.models.triton_repo")


@pytest.fixture
def triton(tmp_path, teacher_dir, require_triton):
    from pseudostream.server.backends.triton_server import LocalTritonServer

    repo = tmp_path / "repo"
    triton_repo_mod.write_model_repository(repo, teacher_dir, name="digits-cnn", platform="python",
                                           max_queue_delay_us=2000)
    with LocalTritonServer(repo) as server:
        server.repo_dir = repo
        yield server


def _triton_config(make_config, triton, **topic):
    return make_config(
        teachers={"digits-cnn": {"backend": "triton", "model_dir": None, "max_delay_ms": 2.0,
                                 "triton": {"url": triton.grpc_url, "model": "digits-cnn",
                                            "repository": triton.repo_dir, "platform": "python",
                                            "retries": 2, "backoff_s": 0.05,
                                            "breaker_failures": 3, "breaker_reset_s": 0.5}}},
        topics={"digits": {"teacher": "digits-cnn", **topic}})


async def _health(address: str) -> str:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    async with grpc.aio.insecure_channel(address) as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""))
    return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)


def _metrics(url: str) -> dict[str, float]:
    from prometheus_client.parser import text_string_to_metric_families

    text = urllib.request.urlopen(url, timeout=10).read().decode()
    totals: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            name = s.name.removesuffix("_total")  # the parser adds _total to counters
            totals[name] = totals.get(name, 0.0) + s.value
    return totals


async def test_triton_and_embedded_give_the_same_logits_and_decisions(make_config, triton, digits, teacher_dir):
    from pseudostream.server.backends.onnxruntime import OnnxRuntimeBackend
    from pseudostream.server.backends.triton import TritonBackend
    from pseudostream.server.config import TeacherConfig

    x = np.ascontiguousarray(digits.stream_x[:64])
    tcfg = _triton_config(make_config, triton).teachers["digits-cnn"]
    async with TritonBackend(TeacherConfig.model_validate(tcfg.model_dump())) as remote, \
            OnnxRuntimeBackend(teacher_dir) as local:
        a, b = await remote.infer(x), await local.infer(x)
        assert remote.metadata.input_shape == (1, 8, 8) and remote.metadata.num_classes == 10
    np.testing.assert_allclose(a.logits, b.logits, atol=1e-4)
    np.testing.assert_allclose(a.features, b.features, atol=1e-4)
    assert a.temperature == pytest.approx(b.temperature)
    ids = [f"s{i}" for i in range(64)]
    async with LabelingServer(_triton_config(make_config, triton)) as server:
        async with AsyncLabelerClient(server.address) as client:
            via_triton = await client.label("digits", x, ids=ids)
    async with LabelingServer(make_config(label_log={"path": make_config().label_log.path.with_name("b.db")})) as server:
        async with AsyncLabelerClient(server.address) as client:
            embedded = await client.label("digits", x, ids=ids)
    assert via_triton.accepted.tolist() == embedded.accepted.tolist()
    assert via_triton.label.tolist() == embedded.label.tolist()
    np.testing.assert_allclose(via_triton.confidence, embedded.confidence, atol=1e-5)
    counts = _metrics(triton.metrics_url)
    assert counts["nv_inference_request_success"] >= 2
    assert counts["nv_inference_count"] >= 128


async def test_triton_killed_mid_stream_answers_unavailable_and_recovers(make_config, triton, digits):
    x = np.ascontiguousarray(digits.stream_x[:8])
    config = _triton_config(make_config, triton, policy={"name": "fixed", "params": {"tau": 0.0}})
    async with LabelingServer(config) as server:
        async with AsyncLabelerClient(server.address) as client:
            accepted: list[int] = []
            answered = sent = 0
            killed = False
            stream_over = asyncio.Event()

            async def requests():
                nonlocal killed, sent
                for r in range(400):
                    if answered >= 5:  # kill once answers are flowing, with none in flight
                        while answered < sent:
                            await asyncio.sleep(0.005)
                        triton.kill()
                        killed = True
                        yield make_label_request("digits", x, [f"k{r}-{i}" for i in range(8)])
                        # Nothing more is written: a write that meets the stream's end makes
                        # grpc.aio report its own INTERNAL error in place of the server's status.
                        await stream_over.wait()
                        return
                    yield make_label_request("digits", x, [f"k{r}-{i}" for i in range(8)])
                    sent += 1
                    await asyncio.sleep(0.01)

            try:
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    async for result in client.label_stream(requests(), timeout=60):
                        accepted.extend(result.offset[result.accepted].tolist())
                        answered += 1
            finally:
                stream_over.set()
            assert killed and info.value.code() == grpc.StatusCode.UNAVAILABLE
            await asyncio.sleep(1.5)  # the readiness watcher notices
            assert await _health(server.address) == "NOT_SERVING"
            assert "Triton" in info.value.details()
            metadata = dict(info.value.trailing_metadata() or ())
            assert "retry-after-ms" in metadata
            # Every label reported accepted is in the log.
            state = await client.get_topic("digits")
            assert len(accepted) >= 5 * 8 and max(accepted) < state.log_end_offset
            assert sorted(accepted) == list(range(len(accepted)))
            await asyncio.get_running_loop().run_in_executor(None, triton.restart)
            for _ in range(50):  # the service recovers by itself once Triton is back
                try:
                    again = await client.label("digits", x, ids=[f"after-{i}" for i in range(8)])
                    break
                except grpc.aio.AioRpcError as exc:
                    assert exc.code() == grpc.StatusCode.UNAVAILABLE
                    await asyncio.sleep(0.2)
            else:
                pytest.fail("the service did not recover after Triton restarted")
            await asyncio.sleep(1.5)
            assert await _health(server.address) == "SERVING"
    assert again.accepted.all() and again.offset.min() >= len(accepted)


async def test_publish_on_triton_while_streaming(make_config, triton, digits, second_teacher):
    second = second_teacher
    x = np.ascontiguousarray(digits.stream_x[:16])
    config = _triton_config(make_config, triton, policy={"name": "fixed", "params": {"tau": 0.0}})
    async with LabelingServer(config) as server:
        results: list = []
        published_evt = asyncio.Event()

        async def produce(k: int) -> None:
            async def requests():  # until 10 requests after the publish returned
                r, after = 0, 0
                while after < 10:
                    yield make_label_request("digits", x, [f"p{k}-{r}-{i}" for i in range(16)])
                    await asyncio.sleep(0.03)
                    r, after = r + 1, after + published_evt.is_set()

            async with AsyncLabelerClient(server.address) as client:
                async for result in client.label_stream(requests()):
                    results.append(result)

        producers = [asyncio.create_task(produce(k)) for k in range(4)]
        await asyncio.sleep(0.3)
        async with AsyncLabelerClient(server.address) as admin:
            published = await admin.publish_teacher("digits-cnn", str(second))
        published_evt.set()
        await asyncio.gather(*producers)  # zero failed requests
        async with AsyncLabelerClient(server.address) as client:
            records = []
            async for batch in client.subscribe("digits", "audit", "a", include_samples=False):
                records.extend(batch)
                if len(records) == 16 * len(results):
                    break
    assert published.version == "2" and all(len(r) == 16 for r in results)
    versions = [r.teacher_version for r in sorted(records, key=lambda r: r.offset)]
    switch = versions.index("2")
    assert 0 < switch and set(versions[:switch]) == {"1"} and set(versions[switch:]) == {"2"}
    counts = _metrics(triton.metrics_url)
    assert counts["nv_inference_exec_count"] < counts["nv_inference_count"]  # Triton batched too


async def test_shared_memory_path_gives_the_same_outputs(make_config, triton, digits, teacher_dir):
    from pseudostream.server.backends.onnxruntime import OnnxRuntimeBackend
    from pseudostream.server.backends.triton import TritonBackend
    from pseudostream.server.config import TeacherConfig

    cfg = _triton_config(make_config, triton).teachers["digits-cnn"].model_dump()
    cfg["triton"]["shared_memory"] = True
    x = np.ascontiguousarray(digits.stream_x[:40])
    async with TritonBackend(TeacherConfig.model_validate(cfg)) as remote, \
            OnnxRuntimeBackend(teacher_dir) as local:
        outs = await asyncio.gather(*[remote.infer(x[i:i + 10]) for i in range(0, 40, 10)])
        expected = await local.infer(x)
        status = await remote._client.get_system_shared_memory_status(as_json=True)
    np.testing.assert_allclose(np.concatenate([o.logits for o in outs]), expected.logits, atol=1e-4)
    np.testing.assert_allclose(np.concatenate([o.features for o in outs]), expected.features, atol=1e-4)
    assert len(status.get("regions", {})) == 2  # the pool's regions were registered with Triton


async def test_propose_gate_and_rollback_on_triton(make_config, triton, digits, teacher_dir, tmp_path):
    """The audit gate and rollback work the same behind Triton: a worse candidate is refused, an
    equal one is promoted into a new version folder, and rollback gives the exact first outputs."""
    import onnx
    from onnx import numpy_helper

    from pseudostream.models.shift import DEMO_SEVERITY, apply_shift

    audit = tmp_path / "audit.npz"
    np.savez(audit, x=apply_shift(digits.stream_x[-200:], severity=DEMO_SEVERITY), y=digits.stream_y[-200:])
    worse = onnx.load_model(str(teacher_dir / "model.onnx"))
    rng = np.random.default_rng(0)
    for i, t in enumerate(worse.graph.initializer):
        w = numpy_helper.to_array(t)
        if w.dtype.kind == "f" and w.size > 1:
            noisy = (w + 2.0 * w.std() * rng.standard_normal(w.shape)).astype(w.dtype)
            worse.graph.initializer[i].CopyFrom(numpy_helper.from_array(noisy, t.name))
    x = np.ascontiguousarray(digits.stream_x[:32])
    config = _triton_config(make_config, triton, audit={"path": audit})
    async with LabelingServer(config) as server:
        async with AsyncLabelerClient(server.address) as client:
            first = await client.label("digits", x, ids=[f"a{i}" for i in range(32)])
            refused = await client.propose_teacher("digits", worse.SerializeToString())
            assert not refused.promoted and refused.version == "1"
            promoted = await client.propose_teacher("digits", (teacher_dir / "model.onnx").read_bytes())
            assert promoted.promoted and promoted.version == "2", promoted.reason
            assert (triton.repo_dir / "digits-cnn" / "2" / "model.onnx").exists()
            back = await client.rollback_teacher("digits-cnn", "1")
            again = await client.label("digits", x, ids=[f"b{i}" for i in range(32)])
    assert back.version == "1" and set(again.teacher_version) == {"1"}
    assert np.array_equal(again.label, first.label) and np.array_equal(again.confidence, first.confidence)

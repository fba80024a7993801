"""The bundled tritonserver serves the demo teacher from a repository we write: metadata, parity
with ONNX Runtime, dynamic batching, version roll-forward, crash and restart.

The server tests need the [triton] extra (skipped without it, failed in CI); the repository
writer tests need only onnx.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import time
import urllib.request
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from pseudostream.models.card import TeacherCard
from pseudostream.models.triton_repo import add_version, read_teacher_parameters, write_model_repository

pytestmark = pytest.mark.integration

MODEL = "digits-cnn"


def _ort_outputs(model_path: Path, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    logits, features = session.run(["logits", "features"], {"input": x})
    return logits, features


def _infer(url: str, x: np.ndarray, timeout_s: float = 10.0):
    import tritonclient.grpc as grpcclient

    with grpcclient.InferenceServerClient(url) as client:
        tensor = grpcclient.InferInput("input", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x)
        return client.infer(MODEL, [tensor], client_timeout=timeout_s)


def _metric(metrics_url: str, name: str) -> float:
    text = urllib.request.urlopen(metrics_url, timeout=5).read().decode()
    values = re.findall(rf'^{name}{{model="{MODEL}",version="\d+"}} (\S+)$', text, flags=re.MULTILINE)
    return sum(float(v) for v in values)


@pytest.fixture
def own_server(triton_server, tmp_path, triton_repo):
    """A private server on a copy of the repository, for tests that change or crash it (it
    depends on ``triton_server`` only for its skip-or-fail check)."""
    from pseudostream.server.backends.triton_server import LocalTritonServer

    repo = tmp_path / "repo"
    shutil.copytree(triton_repo, repo)
    with LocalTritonServer(repo, models=[MODEL]) as server:
        yield server


@pytest.fixture
def digits16(digits) -> np.ndarray:
    return np.ascontiguousarray(digits.test_x[:16], dtype=np.float32)


# -- the repository writer ------------------------------------------------------------------------

def test_config_parses_as_model_config_and_carries_the_card(triton_repo, teacher_dir):
    from google.protobuf import text_format

    model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2")
    text = (triton_repo / MODEL / "config.pbtxt").read_text()
    config = text_format.Parse(text, model_config_pb2.ModelConfig())
    card = TeacherCard.load(teacher_dir)
    assert config.name == MODEL and config.backend == "python" and config.max_batch_size == 128
    assert [(i.name, list(i.dims)) for i in config.input] == [("input", [1, 8, 8])]
    assert [(o.name, list(o.dims)) for o in config.output] == [("logits", [10]), ("features", [64])]
    assert config.dynamic_batching.max_queue_delay_microseconds == 2000
    # No queue policy: any field of one turns off Triton's prefetching and stalls requests 500 ms.
    assert not config.dynamic_batching.HasField("default_queue_policy")
    assert list(config.dynamic_batching.preferred_batch_size) == []
    assert config.version_policy.latest.num_versions == 1
    assert float(config.parameters["temperature"].string_value) == card.temperature
    params = read_teacher_parameters(text)
    assert params == {"temperature": card.temperature, "classes": card.classes, "task": card.task,
                      "teacher_name": card.name, "teacher_version": card.version}
    assert sorted(p.name for p in (triton_repo / MODEL / "1").iterdir()) == [
        "model.onnx", "model.py", "teacher.json"]


def test_new_version_keeps_config_and_rejects_a_different_one(tmp_path, teacher_dir):
    model_dir = write_model_repository(tmp_path, teacher_dir)
    config = (model_dir / "config.pbtxt").read_text()
    assert write_model_repository(tmp_path, teacher_dir, version=None) == model_dir
    assert (model_dir / "2" / "model.onnx").is_file()
    assert (model_dir / "config.pbtxt").read_text() == config
    with pytest.raises(FileExistsError, match="write version 3"):
        write_model_repository(tmp_path, teacher_dir, version=2)
    with pytest.raises(ValueError, match="different settings"):
        write_model_repository(tmp_path, teacher_dir, version=3, max_batch_size=64)
    assert not (model_dir / "3").exists()


def test_a_queue_bound_is_written_only_when_asked_for_and_kept_by_new_versions(tmp_path, teacher_dir, caplog):
    from google.protobuf import text_format

    model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2")
    model_dir = write_model_repository(tmp_path, teacher_dir, max_queue_size=64)
    assert "500 ms" in caplog.text  # the warning says what the policy costs
    assert add_version(tmp_path, teacher_dir, model_dir.name) == 2
    config = text_format.Parse((model_dir / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    policy = config.dynamic_batching.default_queue_policy
    assert (policy.max_queue_size, policy.timeout_action, policy.allow_timeout_override) == (
        64, model_config_pb2.ModelQueuePolicy.REJECT, False)
    plain = write_model_repository(tmp_path / "plain", teacher_dir)
    assert add_version(tmp_path / "plain", teacher_dir, plain.name) == 2  # no policy to carry over
    assert "default_queue_policy" not in (plain / "config.pbtxt").read_text()


def test_tensorrt_and_onnxruntime_layouts(tmp_path, teacher_dir):
    engine = tmp_path / "built.plan"
    engine.write_bytes(b"not really an engine")
    trt_dir = write_model_repository(tmp_path / "trt", teacher_dir, platform="tensorrt_plan",
                                     kind="KIND_GPU", engine=engine, max_batch_size=64)
    assert (trt_dir / "1" / "model.plan").read_bytes() == engine.read_bytes()
    assert not (trt_dir / "1" / "model.onnx").exists()
    text = (trt_dir / "config.pbtxt").read_text()
    assert 'platform: "tensorrt_plan"' in text and "kind: KIND_GPU" in text
    ort_dir = write_model_repository(tmp_path / "ort", teacher_dir, platform="onnxruntime_onnx")
    assert sorted(p.name for p in (ort_dir / "1").iterdir()) == ["model.onnx", "teacher.json"]
    assert 'platform: "onnxruntime_onnx"' in (ort_dir / "config.pbtxt").read_text()


def test_writer_rejects_bad_options_with_clear_errors(tmp_path, teacher_dir):
    with pytest.raises(ValueError, match="platform 'tensorflow'"):
        write_model_repository(tmp_path, teacher_dir, platform="tensorflow")
    with pytest.raises(ValueError, match="needs engine="):
        write_model_repository(tmp_path, teacher_dir, platform="tensorrt_plan", kind="KIND_GPU")
    with pytest.raises(ValueError, match="max_batch_size must be an integer >= 1"):
        write_model_repository(tmp_path, teacher_dir, max_batch_size=0)
    with pytest.raises(ValueError, match="model name"):
        write_model_repository(tmp_path, teacher_dir, name="../escape")
    assert list(tmp_path.iterdir()) == []


# -- the server -----------------------------------------------------------------------------------

def test_server_is_ready_and_reports_the_model(triton_server, teacher_dir):
    import tritonclient.grpc as grpcclient

    with grpcclient.InferenceServerClient(triton_server.grpc_url) as client:
        assert client.is_server_ready() and client.is_model_ready(MODEL)
        meta = client.get_model_metadata(MODEL, as_json=True)
        config = client.get_model_config(MODEL, as_json=True)
        config_message = client.get_model_config(MODEL)
    assert meta["versions"] == ["1"]
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": ["-1", "1", "8", "8"]}]
    assert {o["name"]: o["shape"] for o in meta["outputs"]} == {
        "logits": ["-1", "10"], "features": ["-1", "64"]}
    served = read_teacher_parameters(config)  # the JSON form tritonclient returns
    assert served["temperature"] == TeacherCard.load(teacher_dir).temperature
    assert served == read_teacher_parameters(config_message)  # the protobuf form
    assert served == read_teacher_parameters((triton_server.repo / MODEL / "config.pbtxt").read_text())


def test_inference_matches_onnxruntime(triton_server, teacher_dir, digits16):
    result = _infer(triton_server.grpc_url, digits16)
    logits, features = _ort_outputs(teacher_dir / "model.onnx", digits16)
    assert result.get_response().model_version == "1"
    np.testing.assert_allclose(result.as_numpy("logits"), logits, atol=1e-4)
    np.testing.assert_allclose(result.as_numpy("features"), features, atol=1e-4)


async def test_concurrent_requests_are_batched(triton_server, digits):
    import tritonclient.grpc.aio as aioclient

    count0 = _metric(triton_server.metrics_url, "nv_inference_count")
    exec0 = _metric(triton_server.metrics_url, "nv_inference_exec_count")
    x = np.ascontiguousarray(digits.test_x[:64], dtype=np.float32)

    async def one(client, sample: np.ndarray):
        tensor = aioclient.InferInput("input", [1, 1, 8, 8], "FP32")
        tensor.set_data_from_numpy(sample[None])
        return (await client.infer(MODEL, [tensor])).as_numpy("logits")

    client = aioclient.InferenceServerClient(triton_server.grpc_url)
    try:
        logits = await asyncio.gather(*(one(client, sample) for sample in x))
    finally:
        await client.close()
    expected, _ = _ort_outputs(triton_server.repo / MODEL / "1" / "model.onnx", x)
    np.testing.assert_allclose(np.concatenate(logits), expected, atol=1e-4)  # each got its own row
    inferences = _metric(triton_server.metrics_url, "nv_inference_count") - count0
    executions = _metric(triton_server.metrics_url, "nv_inference_exec_count") - exec0
    assert inferences == 64
    assert executions < inferences, f"no batching: {executions} executions for 64 requests"


def test_loading_a_new_version_serves_it(own_server, teacher_dir, tmp_path, digits16):
    import tritonclient.grpc as grpcclient

    # Version 2: the head scaled by 2, so its logits are exactly twice version 1's.
    v2 = tmp_path / "teacher-v2"
    v2.mkdir()
    model = onnx.load(str(teacher_dir / "model.onnx"))
    for init in model.graph.initializer:
        if init.name in ("head.weight", "head.bias"):
            init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * 2, init.name))
    onnx.save(model, str(v2 / "model.onnx"))
    card = json.loads((teacher_dir / "teacher.json").read_text()) | {"version": "2"}
    (v2 / "teacher.json").write_text(json.dumps(card))
    write_model_repository(own_server.repo, v2, version=2)

    with grpcclient.InferenceServerClient(own_server.grpc_url) as client:
        client.load_model(MODEL)
        assert client.get_model_metadata(MODEL, as_json=True)["versions"] == ["2"]
        params = read_teacher_parameters(client.get_model_config(MODEL, as_json=True))
    assert params["teacher_version"] == "2"
    result = _infer(own_server.grpc_url, digits16)
    logits, _ = _ort_outputs(teacher_dir / "model.onnx", digits16)
    assert result.get_response().model_version == "2"
    np.testing.assert_allclose(result.as_numpy("logits"), 2 * logits, atol=1e-4)


def test_killed_server_answers_unavailable_and_restart_recovers(own_server, digits16):
    from tritonclient.utils import InferenceServerException

    url, pid = own_server.grpc_url, own_server.pid
    assert _infer(url, digits16).as_numpy("logits").shape == (16, 10)
    own_server.kill()
    assert own_server.pid is None
    started = time.monotonic()
    with pytest.raises(InferenceServerException) as failure:
        _infer(url, digits16, timeout_s=5.0)
    assert failure.value.status() == "StatusCode.UNAVAILABLE"
    assert time.monotonic() - started < 5.0
    own_server.restart()
    assert own_server.grpc_url == url and own_server.pid not in (None, pid)
    assert _infer(url, digits16).as_numpy("logits").shape == (16, 10)

"""The labeling service as a KServe custom predictor, and the deploy/kserve manifests.

A real ``kserve.ModelServer`` (``python -m pseudostream.server.kserve_model``) serves topic
``digits`` on free loopback ports; KServe's own clients talk to it over v2 gRPC and v2 REST.
Without the [kserve] extra the module skips, except under CI=true, where it must be installed.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest
import yaml

if importlib.util.find_spec("kserve") is None:
    if os.environ.get("CI") == "true":
        pytest.fail("kserve not installed (CI=true): the [dev] extra includes pseudostream[kserve]",
                    pytrace=False)
    pytest.skip("kserve not installed: pip install -e '.[kserve]'", allow_module_level=True)

import grpc  # noqa: E402
import httpx  # noqa: E402

from pseudostream.server import kserve_model  # noqa: E402  (imports kserve without its argv parsing)
from pseudostream.server.config import load_config  # noqa: E402

kserve = kserve_model.kserve
pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy" / "kserve"
MODEL = "digits"
N = 16


@dataclass
class Server:
    http_url: str
    grpc_url: str
    log: Path


def _wait_ready(proc: subprocess.Popen, url: str, log: Path, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"kserve_model exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(f"{url}/v2/models/{MODEL}/ready", timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    pytest.fail(f"kserve_model not ready after {timeout_s}s:\n{log.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, teacher_dir: Path, free_port: Any) -> Iterator[Server]:
    """``python -m pseudostream.server.kserve_model`` on free ports, stopped with SIGTERM."""
    work = tmp_path_factory.mktemp("kserve")
    config = {
        "host": "127.0.0.1", "port": 0, "metrics_port": None,
        "teachers": {"digits-cnn": {"model_dir": str(teacher_dir), "max_batch": 64,
                                    "max_delay_ms": 2.0, "intra_op_threads": 1}},
        "topics": {"digits": {"teacher": "digits-cnn"}},
        "label_log": {"path": str(work / "labels.db")},
    }
    (work / "service.yaml").write_text(yaml.safe_dump(config))
    http_port, grpc_port = free_port(), free_port()
    log = work / "server.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PSEUDOSTREAM_")}
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "pseudostream.server.kserve_model", "--config",
             str(work / "service.yaml"), "--topic", "digits", "--http-port", str(http_port),
             "--grpc-port", str(grpc_port)],
            stdout=out, stderr=subprocess.STDOUT, cwd=work, env=env)
    try:
        _wait_ready(proc, f"http://127.0.0.1:{http_port}", log)
        yield Server(f"http://127.0.0.1:{http_port}", f"127.0.0.1:{grpc_port}", log)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            rc = proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            pytest.fail(f"kserve_model ignored SIGTERM:\n{log.read_text()[-3000:]}")
        if rc != 0:
            pytest.fail(f"kserve_model exited with {rc} on SIGTERM:\n{log.read_text()[-3000:]}")


def _tensor(name: str, array: np.ndarray, datatype: str, binary: bool = True) -> Any:
    t = kserve.InferInput(name, list(array.shape), datatype)
    t.set_data_from_numpy(array, binary_data=binary)
    return t


def _request(x: np.ndarray, request_id: str, binary: bool = True, ids: bool = True) -> Any:
    inputs = [_tensor("input", x, "FP32", binary)]
    if ids:
        names = np.array([f"{request_id}-s{i}".encode() for i in range(len(x))], dtype=np.object_)
        inputs.append(_tensor("ids", names, "BYTES", binary))
    return kserve.InferRequest(model_name=MODEL, infer_inputs=inputs, request_id=request_id)


def _check_decisions(response: Any, n: int) -> dict[str, np.ndarray]:
    out = {o.name: o.as_numpy() for o in response.outputs}
    assert set(out) == {"accepted", "label", "confidence", "weight", "threshold", "offset",
                        "teacher_version"}
    assert {o.name: o.datatype for o in response.outputs} == {
        "accepted": "BOOL", "label": "INT32", "confidence": "FP32", "weight": "FP32",
        "threshold": "FP32", "offset": "INT64", "teacher_version": "BYTES"}
    assert all(v.shape == (n,) for v in out.values())
    accepted, offset = out["accepted"].astype(bool), out["offset"]
    assert accepted.any(), "the demo teacher is confident on some digits"
    assert (offset[accepted] >= 0).all() and (offset[~accepted] == -1).all()
    assert len(set(offset[accepted].tolist())) == int(accepted.sum())
    assert ((out["label"] >= 0) & (out["label"] <= 9)).all()
    assert ((out["confidence"] >= 0) & (out["confidence"] <= 1)).all()
    assert (out["weight"][~accepted] == 0).all()
    versions = {v.decode() if isinstance(v, bytes) else str(v) for v in out["teacher_version"]}
    assert len(versions) == 1 and "" not in versions
    return out


async def test_grpc_model_infer_labels_a_batch(server: Server, digits: Any) -> None:
    x = np.ascontiguousarray(digits.stream_x[:N], dtype=np.float32)
    async with kserve.InferenceGRPCClient(server.grpc_url, timeout=30) as client:
        assert await client.is_model_ready(MODEL)
        response = await client.infer(_request(x, "grpc-1"))
    assert response.id == "grpc-1"
    _check_decisions(response, N)


async def test_rest_v2_infer_labels_a_batch_json_and_binary(server: Server, digits: Any) -> None:
    x = np.ascontiguousarray(digits.stream_x[N:2 * N], dtype=np.float32)
    client = kserve.InferenceRESTClient(kserve.RESTConfig(protocol="v2", timeout=30))
    try:
        as_json = await client.infer(server.http_url, _request(x, "rest-json", binary=False),
                                     model_name=MODEL)
        binary = await client.infer(server.http_url, _request(x, "rest-bin", ids=False),
                                    model_name=MODEL)
    finally:
        await client.close()
    first, second = _check_decisions(as_json, N), _check_decisions(binary, N)
    np.testing.assert_array_equal(first["label"], second["label"])  # same samples, same teacher


BAD_REQUESTS = {
    "wrong shape": (np.zeros((N, 1, 8, 7), np.float32), "input", "FP32",
                    "shape [16, 1, 8, 7] given, expected [16, 1, 8, 8]"),
    "wrong dtype": (np.zeros((N, 1, 8, 8), np.float64), "input", "FP64",
                    "datatype FP64 given, teacher digits-cnn expects FP32"),
    "wrong name": (np.zeros((N, 1, 8, 8), np.float32), "pixels", "FP32",
                   "missing input 'input' (FP32 [N, 1, 8, 8])"),
}


@pytest.mark.parametrize("case", sorted(BAD_REQUESTS))
async def test_grpc_bad_input_is_invalid_argument(server: Server, case: str) -> None:
    array, name, datatype, message = BAD_REQUESTS[case]
    request = kserve.InferRequest(model_name=MODEL, request_id=case,
                                  infer_inputs=[_tensor(name, array, datatype)])
    async with kserve.InferenceGRPCClient(server.grpc_url, timeout=30) as client:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await client.infer(request)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in info.value.details()


async def test_rest_wrong_shape_is_400_with_the_expected_shape(server: Server) -> None:
    array, name, datatype, message = BAD_REQUESTS["wrong shape"]
    request = kserve.InferRequest(model_name=MODEL, request_id="bad",
                                  infer_inputs=[_tensor(name, array, datatype, binary=False)])
    client = kserve.InferenceRESTClient(kserve.RESTConfig(protocol="v2", timeout=30))
    try:
        with pytest.raises(httpx.HTTPStatusError) as info:
            await client.infer(server.http_url, request, model_name=MODEL)
    finally:
        await client.close()
    assert info.value.response.status_code == 400
    assert message in info.value.response.json()["error"]


# --- deploy/kserve manifests -------------------------------------------------------------------

_PRIMITIVES = {"str": str, "int": int, "bool": bool, "float": (int, float), "object": object,
               "ResourceQuantity": (str, int, float)}


def _build(data: Any, type_name: str, path: str) -> Any:
    """``data`` as the kserve / kubernetes client model ``type_name``; fails on unknown fields."""
    # kserve's models write list[X] / dict(str, X); kubernetes' List[X] / Dict[str, X]
    if type_name.lower().startswith("list["):
        assert isinstance(data, list), f"{path}: expected a list"
        return [_build(v, type_name[5:-1], f"{path}[{i}]") for i, v in enumerate(data)]
    if type_name.lower().startswith(("dict(", "dict[")):
        assert isinstance(data, dict), f"{path}: expected a mapping"
        inner = type_name[type_name.index(",") + 1:-1].strip()
        return {k: _build(v, inner, f"{path}.{k}") for k, v in data.items()}
    if type_name in _PRIMITIVES:
        expected = _PRIMITIVES[type_name]
        assert isinstance(data, expected) and not (type_name == "int" and isinstance(data, bool)), \
            f"{path}: {data!r} is not {type_name}"
        return data
    import kubernetes.client.models as k8s

    klass = getattr(kserve.models, type_name, None) or getattr(k8s, type_name)
    assert isinstance(data, dict), f"{path}: expected a {type_name} mapping"
    fields = {json_name: attr for attr, json_name in klass.attribute_map.items()}
    unknown = sorted(set(data) - set(fields))
    assert not unknown, f"{path}: {unknown} are not fields of {type_name}; known: {sorted(fields)}"
    return klass(**{fields[k]: _build(v, klass.openapi_types[fields[k]], f"{path}.{k}")
                    for k, v in data.items()})


def _manifests() -> dict[str, Any]:
    docs = {}
    for path in sorted(DEPLOY.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            docs[f"{doc['kind']}/{doc['metadata']['name'] if 'metadata' in doc else path.name}"] = doc
    return docs


MODEL_CLASSES = {("serving.kserve.io/v1beta1", "InferenceService"): "V1beta1InferenceService",
                 ("serving.kserve.io/v1alpha1", "ServingRuntime"): "V1alpha1ServingRuntime",
                 ("v1", "ConfigMap"): "V1ConfigMap"}


def test_kserve_manifests_deserialize_into_the_client_models() -> None:
    docs = _manifests()
    kinds = {(d["apiVersion"], d["kind"]) for k, d in docs.items() if not k.startswith("Kustomization")}
    assert kinds == set(MODEL_CLASSES)
    built = {key: _build(doc, MODEL_CLASSES[(doc["apiVersion"], doc["kind"])], key)
             for key, doc in docs.items() if not key.startswith("Kustomization")}
    resources = yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())["resources"]
    assert sorted(resources) == sorted(p.name for p in DEPLOY.glob("*.yaml") if p.name != "kustomization.yaml")

    runtime = built["ServingRuntime/pseudostream-tritonserver"]
    image = runtime.spec.containers[0].image
    assert image.startswith("nvcr.io/nvidia/tritonserver:") and "v2" in runtime.spec.protocol_versions
    teacher = built["InferenceService/pseudostream-teacher"].spec.predictor.model
    assert teacher.runtime == "pseudostream-tritonserver" and teacher.protocol_version == "v2"
    assert teacher.runtime_version == image.rsplit(":", 1)[1], "runtimeVersion pins the image tag"
    assert teacher.storage_uri and teacher.ports[0].name == "h2c"
    assert any(f"--grpc-port={teacher.ports[0].container_port}" == a for a in runtime.spec.containers[0].args)

    adapter = built["InferenceService/pseudostream-labeler"].spec.predictor.containers[0]
    assert adapter.command == ["python", "-m", "pseudostream.server.kserve_model"]
    assert "--topic=digits" in adapter.args


def test_adapter_config_is_a_valid_service_config(tmp_path: Path) -> None:
    config_map = _manifests()["ConfigMap/pseudostream-kserve-config"]
    (tmp_path / "service.yaml").write_text(config_map["data"]["service.yaml"])
    config = load_config(tmp_path / "service.yaml")
    teacher = config.teachers[config.topics["digits"].teacher]
    assert teacher.backend == "triton" and teacher.triton.url == "pseudostream-teacher-predictor:80"
    assert config.label_log.kind == "redis"


@pytest.mark.parametrize("first", ["kserve", "tritonclient"])
def test_kserve_and_tritonclient_import_into_one_process(first: str) -> None:
    """The adapter with a Triton teacher needs both; their protos clash in protobuf's default
    pool (kserve/kserve#3099) unless kserve_model imports kserve into a private one."""
    if importlib.util.find_spec("tritonclient") is None:
        pytest.skip("tritonclient not installed (the [triton] extra)")
    imports = ["import pseudostream.server.kserve_model", "import tritonclient.grpc.aio"]
    code = "; ".join(imports if first == "kserve" else imports[::-1])
    done = subprocess.run([sys.executable, "-W", "error", "-c", code], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]


def test_the_adapter_process_sets_the_allocator_from_its_config(tmp_path: Path, teacher_dir: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """``main`` makes the process-wide allocator setting as ``pseudostream serve`` does, before
    the ModelServer starts. The real ModelServer runs in the module's ``server`` fixture; here a
    stand-in records the start, and a spy stands in for mallopt so this process keeps its own."""
    config = {"teachers": {"digits-cnn": {"model_dir": str(teacher_dir)}},
              "topics": {"digits": {"teacher": "digits-cnn"}},
              "label_log": {"path": str(tmp_path / "labels.db")}, "keep_freed_memory_mib": 40}
    (tmp_path / "service.yaml").write_text(yaml.safe_dump(config))
    events: list[Any] = []
    monkeypatch.setattr(kserve_model, "keep_freed_memory", lambda keep: events.append(("allocator", keep)) or "spied")

    class Started:
        def __init__(self, **ports: int) -> None:
            events.append(("server", ports))

        def start(self, models: list[Any]) -> None:
            events.append(("start", [m.name for m in models]))

    monkeypatch.setattr(kserve_model.kserve, "ModelServer", Started)
    kserve_model.main(["--config", str(tmp_path / "service.yaml"), "--topic", "digits"])
    assert events == [("allocator", 40 << 20), ("server", {"http_port": 8080, "grpc_port": 8081}),
                      ("start", ["digits"])]

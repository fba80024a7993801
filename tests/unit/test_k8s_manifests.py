"""The Kubernetes manifests in deploy/k8s build, validate offline and hang together.

Each kustomization (base, overlays/cpu, overlays/gpu) is built with ``kubectl kustomize`` and every
resulting object is validated with kubernetes-validate against the Kubernetes version below.
ServiceMonitor and PodMonitor are CRDs (Prometheus Operator) outside the core schemas: they get a
structural check here instead. Without kubectl the build tests skip and only the raw resource
files of base and components are validated.
"""

from __future__ import annotations

import functools
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from pseudostream.server.config import load_config

kubernetes_validate = pytest.importorskip(
    "kubernetes_validate", reason="kubernetes-validate is a dev dependency (pip install -e .[dev])")

KUBERNETES_VERSION = "1.30.0"
ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
BUILDS = ("base", "overlays/cpu", "overlays/gpu")
CRD_KINDS = {"ServiceMonitor", "PodMonitor"}
CONFIG_PATH = "/etc/pseudostream/service.yaml"  # the image's ENTRYPOINT reads this file
KUBECTL = shutil.which("kubectl")
needs_kubectl = pytest.mark.skipif(
    KUBECTL is None, reason="kubectl not on PATH: cannot build kustomizations "
    "(test_raw_resources_validate still checks the files)")


@functools.lru_cache(maxsize=None)
def build(name: str) -> tuple[dict[str, Any], ...]:
    """The objects ``kubectl kustomize deploy/k8s/NAME`` renders."""
    out = subprocess.run([KUBECTL, "kustomize", str(K8S / name)], check=True,
                         capture_output=True, text=True, timeout=120).stdout
    return tuple(doc for doc in yaml.safe_load_all(out) if doc)


def of_kind(docs, kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def names(docs, kind: str) -> set[str]:
    return {d["metadata"]["name"] for d in of_kind(docs, kind)}


def one(docs, kind: str, name: str) -> dict[str, Any]:
    (found,) = [d for d in of_kind(docs, kind) if d["metadata"]["name"] == name]
    return found


def containers(deployment) -> list[dict[str, Any]]:
    spec = deployment["spec"]["template"]["spec"]
    return spec["containers"] + spec.get("initContainers", [])


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def check_crd(doc: dict[str, Any]) -> None:
    """Structural check of a ServiceMonitor / PodMonitor (no schema for CRDs offline)."""
    assert doc["apiVersion"] == "monitoring.coreos.com/v1"
    assert set(doc) == {"apiVersion", "kind", "metadata", "spec"}
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", doc["metadata"]["name"])
    spec = doc["spec"]
    assert spec["selector"]["matchLabels"], "an empty selector would scrape everything"
    endpoints = spec["endpoints" if doc["kind"] == "ServiceMonitor" else "podMetricsEndpoints"]
    assert endpoints and all(isinstance(e["port"], str) and e.get("path") == "/metrics"
                             for e in endpoints)


def validate(doc: dict[str, Any]) -> None:
    if doc["kind"] in CRD_KINDS:
        check_crd(doc)
        return
    try:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        where = "/".join(map(str, getattr(exc, "path", [])))
        pytest.fail(f"{doc['kind']}/{doc['metadata']['name']} at {where}: "
                    f"{str(exc).splitlines()[0]}")


def service_config(docs, tmp_path: Path, monkeypatch):
    """The ConfigMap's service.yaml, loaded with the Deployment's PSEUDOSTREAM_* environment."""
    deployment = one(docs, "Deployment", "pseudostream")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = [c for c in pod["containers"] if c["name"] == "pseudostream"]
    (mount,) = [m for m in container["volumeMounts"]
                if CONFIG_PATH.startswith(m["mountPath"] + "/")]
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    configmap = one(docs, "ConfigMap", volume["configMap"]["name"])
    key = CONFIG_PATH.removeprefix(mount["mountPath"] + "/")
    path = tmp_path / "service.yaml"
    path.write_text(configmap["data"][key])
    for var in [v for v in __import__("os").environ if v.startswith("PSEUDOSTREAM_")]:
        monkeypatch.delenv(var)
    for env in container.get("env", []):
        monkeypatch.setenv(env["name"], env.get("value", "pod-from-field-ref"))
    return load_config(path), container, pod


# --- schemas -------------------------------------------------------------------------------------

@needs_kubectl
@pytest.mark.parametrize("name", BUILDS)
def test_build_validates_against_kubernetes_schemas(name):
    docs = build(name)
    assert docs
    for doc in docs:
        validate(doc)


def test_raw_resources_validate():
    """Without kubectl too: every plain resource file of base and the components validates."""
    for folder in [K8S / "base", *sorted((K8S / "components").iterdir())]:
        kustomization = yaml.safe_load((folder / "kustomization.yaml").read_text())
        for resource in kustomization["resources"]:
            for doc in yaml.safe_load_all((folder / resource).read_text()):
                validate(doc)


# --- cross-references ----------------------------------------------------------------------------

@needs_kubectl
@pytest.mark.parametrize("name", BUILDS)
def test_references_resolve(name):
    docs = build(name)
    for deployment in of_kind(docs, "Deployment"):
        pod = deployment["spec"]["template"]["spec"]
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert selects(deployment["spec"]["selector"]["matchLabels"], labels)
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        for volume in volumes.values():
            if "configMap" in volume:
                assert volume["configMap"]["name"] in names(docs, "ConfigMap"), volume
            if "persistentVolumeClaim" in volume:
                assert volume["persistentVolumeClaim"]["claimName"] in names(
                    docs, "PersistentVolumeClaim"), volume
        mounted = {m["name"] for c in containers(deployment) for m in c.get("volumeMounts", [])}
        assert mounted == set(volumes), f"{deployment['metadata']['name']}: mounts {mounted}"
    for service in of_kind(docs, "Service"):
        backing = [d for d in of_kind(docs, "Deployment")
                   if selects(service["spec"]["selector"], d["spec"]["template"]["metadata"]["labels"])]
        assert backing, f"Service {service['metadata']['name']} selects no Deployment"
        ports = {p.get("name") for d in backing for c in containers(d) for p in c.get("ports", [])}
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in ports, port
    for monitor in of_kind(docs, "ServiceMonitor"):
        services = [s for s in of_kind(docs, "Service")
                    if selects(monitor["spec"]["selector"]["matchLabels"], s["metadata"]["labels"])]
        assert services, f"ServiceMonitor {monitor['metadata']['name']} selects no Service"
        for endpoint in monitor["spec"]["endpoints"]:
            assert all(endpoint["port"] in {p["name"] for p in s["spec"]["ports"]} for s in services)
    for monitor in of_kind(docs, "PodMonitor"):
        pods = [d for d in of_kind(docs, "Deployment") if selects(
            monitor["spec"]["selector"]["matchLabels"], d["spec"]["template"]["metadata"]["labels"])]
        assert pods, f"PodMonitor {monitor['metadata']['name']} selects no pods"
        ports = {p.get("name") for d in pods for c in containers(d) for p in c.get("ports", [])}
        assert all(e["port"] in ports for e in monitor["spec"]["podMetricsEndpoints"])
    for pdb in of_kind(docs, "PodDisruptionBudget"):
        assert any(selects(pdb["spec"]["selector"]["matchLabels"],
                           d["spec"]["template"]["metadata"]["labels"])
                   for d in of_kind(docs, "Deployment"))
    for hpa in of_kind(docs, "HorizontalPodAutoscaler"):
        target = hpa["spec"]["scaleTargetRef"]
        assert target["kind"] == "Deployment" and target["name"] in names(docs, "Deployment")


@needs_kubectl
@pytest.mark.parametrize("name", BUILDS)
def test_probes_target_declared_ports(name):
    for deployment in of_kind(build(name), "Deployment"):
        for container in containers(deployment):
            ports = container.get("ports", [])
            declared = {p["containerPort"] for p in ports} | {p["name"] for p in ports}
            for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
                probe = container.get(kind)
                if probe is None:
                    assert kind == "startupProbe", f"{container['name']} lacks a {kind}"
                    continue
                for handler in ("grpc", "httpGet", "tcpSocket"):
                    if handler in probe:
                        assert probe[handler]["port"] in declared, (container["name"], kind)
            if container["name"] == "pseudostream":
                assert container["readinessProbe"]["grpc"] == {"port": 50051, "service": ""}
                assert {p["name"]: p["containerPort"] for p in ports} == {
                    "grpc": 50051, "metrics": 9464}


# --- hygiene -------------------------------------------------------------------------------------

@needs_kubectl
@pytest.mark.parametrize("name", BUILDS)
def test_images_pinned_non_root_and_bounded(name):
    for deployment in of_kind(build(name), "Deployment"):
        pod = deployment["spec"]["template"]["spec"]
        for container in containers(deployment):
            image = container["image"]
            tag = image.rsplit("/", 1)[-1].partition(":")[2]
            assert "@sha256:" in image or (tag and tag != "latest"), f"unpinned image {image}"
            security = {**pod.get("securityContext", {}), **container.get("securityContext", {})}
            assert security.get("runAsNonRoot") is True and security.get("runAsUser", 1) != 0
            assert security.get("allowPrivilegeEscalation") is False
            assert security.get("capabilities", {}).get("drop") == ["ALL"]
            resources = container.get("resources", {})
            for bound in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(resources.get(bound, {})), (container["name"], bound)


# --- what each overlay means ---------------------------------------------------------------------

@needs_kubectl
def test_cpu_overlay_is_one_embedded_process_on_a_pvc(tmp_path, monkeypatch):
    docs = build("overlays/cpu")
    assert names(docs, "Deployment") == {"pseudostream"}
    assert not names(docs, "HorizontalPodAutoscaler")
    images = [c["image"] for d in of_kind(docs, "Deployment") for c in containers(d)]
    assert not [i for i in images if "tritonserver" in i or "redis" in i]
    deployment = one(docs, "Deployment", "pseudostream")
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}

    cfg, container, pod = service_config(docs, tmp_path, monkeypatch)
    assert cfg.label_log.kind == "sqlite"
    assert {t.backend for t in cfg.teachers.values()} == {"onnxruntime"}
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert "persistentVolumeClaim" in volumes[mounts[str(cfg.label_log.path.parent)]]
    for teacher in cfg.teachers.values():
        mount = next(p for p in mounts if str(teacher.model_dir).startswith(p + "/"))
        assert "persistentVolumeClaim" in volumes[mounts[mount]]


@needs_kubectl
def test_gpu_overlay_runs_triton_on_a_gpu_and_replicas_on_redis(tmp_path, monkeypatch):
    docs = build("overlays/gpu")
    service = one(docs, "Deployment", "pseudostream")
    assert service["spec"]["replicas"] >= 2
    assert one(docs, "HorizontalPodAutoscaler", "pseudostream")["spec"]["minReplicas"] >= 2
    triton = one(docs, "Deployment", "pseudostream-triton")
    pod = triton["spec"]["template"]["spec"]
    (server,) = pod["containers"]
    assert server["image"].startswith("nvcr.io/nvidia/tritonserver:")
    assert str(server["resources"]["limits"]["nvidia.com/gpu"]) == "1"
    assert pod["nodeSelector"] and any(t["key"] == "nvidia.com/gpu" for t in pod["tolerations"])
    assert {"--model-repository=/models", "--model-control-mode=explicit"} <= set(server["args"])
    assert "pseudostream-teachers" not in names(docs, "PersistentVolumeClaim")

    cfg, _, _ = service_config(docs, tmp_path, monkeypatch)
    assert cfg.label_log.kind == "redis"
    redis_host, redis_port = re.fullmatch(r"redis://([^:/]+):(\d+)/\d+", cfg.label_log.url).groups()
    redis = one(docs, "Service", redis_host)
    assert int(redis_port) in {p["port"] for p in redis["spec"]["ports"]}
    for teacher in cfg.teachers.values():
        assert teacher.backend == "triton"
        host, port = teacher.triton.url.rsplit(":", 1)
        grpc_port = {p["name"]: p["port"] for p in one(docs, "Service", host)["spec"]["ports"]}["grpc"]
        assert int(port) == grpc_port
        assert f"--load-model={teacher.triton.model}" in server["args"]


@needs_kubectl
@pytest.mark.parametrize("name", BUILDS)
def test_config_map_loads_with_the_deployment_environment(name, tmp_path, monkeypatch):
    cfg, container, _ = service_config(build(name), tmp_path, monkeypatch)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert (cfg.host, cfg.port) == ("0.0.0.0", ports["grpc"])
    assert (cfg.metrics_host, cfg.metrics_port) == ("0.0.0.0", ports["metrics"])
    assert cfg.replica_id == "pod-from-field-ref" and cfg.topics


# --- image ---------------------------------------------------------------------------------------

def test_dockerfile_is_pinned_slim_non_root_and_torch_free():
    text = (ROOT / "deploy" / "docker" / "Dockerfile").read_text()
    base = re.search(r"^ARG PYTHON_IMAGE=(\S+)$", text, re.M).group(1)
    assert re.fullmatch(r"python:3\.11\.\d+-slim(-\w+)?", base)
    assert text.count("FROM ${PYTHON_IMAGE}") == 2  # multi-stage, both stages on the pinned base
    assert re.search(r"^USER 10001", text, re.M) and "EXPOSE 50051 9464" in text
    assert f'ENTRYPOINT ["pseudostream", "serve", "--config", "{CONFIG_PATH}"]' in text
    assert "torch" not in re.sub(r"#.*", "", text) and "[train]" not in re.sub(r"#.*", "", text)

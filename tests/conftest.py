"""Shared fixtures: the demo teacher (built once, cached), digits data, service configs."""

from __future__ import annotations

import importlib.util
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
TEACHER_CACHE = REPO / ".cache" / "teachers" / "digits-cnn"


def build_teacher_in_child(out: Path, seed: int = 0) -> Path:
    """Build (or reuse the cached) demo teacher at ``out`` in a child process.

    The ONNX exporter parses source with ``ast``; on CPython 3.11.7 that races with any other
    thread formatting a traceback (gh-106905, "AST constructor recursion depth mismatch"). A test
    process has such threads (servers, clients), so teachers are built where none run.
    """
    import sys

    subprocess.run([sys.executable, "-m", "pseudostream.clients.cli", "teacher", "build-demo",
                    "--out", str(out), "--seed", str(seed)], check=True, capture_output=True, timeout=600)
    return out


@pytest.fixture(scope="session")
def teacher_dir() -> Path:
    """The demo teacher (model.onnx + teacher.json), built on first use and cached like make demo."""
    return build_teacher_in_child(TEACHER_CACHE)


@pytest.fixture(scope="session")
def second_teacher() -> Path:
    """The demo recipe with another seed: same signature, other weights (cached like the first)."""
    return build_teacher_in_child(TEACHER_CACHE.with_name("digits-cnn-seed1"), seed=1)


@pytest.fixture(scope="session")
def free_port() -> Callable[[], int]:
    """``free_port()``: a loopback TCP port nobody listens on right now."""
    import socket

    def pick() -> int:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]

    return pick


@pytest.fixture(scope="session")
def digits() -> Any:
    """The demo's data splits."""
    from pseudostream.models.digits import load_digits_splits

    return load_digits_splits(seed=0)


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


@pytest.fixture
def make_config(tmp_path: Path, teacher_dir: Path) -> Callable[..., Any]:
    """``make_config(**overrides)``: a ServiceConfig on free loopback ports with one topic
    ``digits`` on teacher ``digits-cnn``, its label log in tmp_path; overrides merge deeply."""
    from pseudostream.server.config import ServiceConfig

    def make(**overrides: Any) -> ServiceConfig:
        base = {
            "host": "127.0.0.1", "port": 0, "metrics_port": 0,
            "teachers": {"digits-cnn": {"model_dir": teacher_dir, "max_batch": 64,
                                        "max_delay_ms": 2.0, "intra_op_threads": 1}},
            "topics": {"digits": {"teacher": "digits-cnn"}},
            "label_log": {"path": tmp_path / "labels.db", "visibility_timeout_s": 5.0},
            "work_dir": tmp_path / "work",
        }
        return ServiceConfig(**_merge(base, overrides))

    return make


def ort_probabilities(teacher_dir: Path, x: np.ndarray) -> np.ndarray:
    """Reference: the teacher's temperature-scaled probabilities, computed directly with ORT."""
    import onnxruntime as ort

    from pseudostream.models.card import TeacherCard

    card = TeacherCard.load(teacher_dir)
    session = ort.InferenceSession(str(teacher_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    z = session.run(["logits"], {"input": x})[0] / card.temperature
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _sqlite_page_size(path: Path) -> int:
    import sqlite3

    conn = sqlite3.connect(path)
    try:
        return conn.execute("PRAGMA page_size").fetchone()[0]
    finally:
        conn.close()


@pytest.fixture(scope="session")
def sqlite_page_size() -> Callable[[Path], int]:
    """``sqlite_page_size(path)``: the page size of the SQLite file at ``path``."""
    return _sqlite_page_size


@pytest.fixture(scope="session")
def reference_probs(teacher_dir: Path) -> Callable[[np.ndarray], np.ndarray]:
    """Direct ONNX Runtime reference for the teacher's calibrated probabilities."""
    return lambda x: ort_probabilities(teacher_dir, x)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _answers_ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A throwaway ``redis-server`` on a free loopback port, no persistence, for the session.
    Tests share it: each keeps to its own key prefix. Without redis-server (or the redis
    package) tests skip, except in CI (CI=true), where .ci/run must install them."""
    binary = shutil.which("redis-server")
    needs = (("redis-server", binary), ("the redis package", importlib.util.find_spec("redis")))
    missing = [what for what, found in needs if not found]
    if missing:
        what = " and ".join(missing)
        if os.environ.get("CI") == "true":
            pytest.fail(f"{what} not installed (CI=true): .ci/run must install redis-server "
                        "(apt-get install -y redis-server) and the [dev] extra (redis>=5)")
        pytest.skip(f"{what} not installed: apt-get install redis-server; pip install -e '.[dev]'")
    workdir = tmp_path_factory.mktemp("redis")
    for _attempt in range(3):  # another process may take the free port before redis binds it
        port = _free_port()
        with open(workdir / "redis.log", "wb") as out:
            proc = subprocess.Popen(
                [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                 "--appendonly", "no", "--dir", str(workdir)],
                stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while proc.poll() is None and time.monotonic() < deadline and not _answers_ping(port):
            time.sleep(0.05)
        if proc.poll() is None and _answers_ping(port):
            break
        proc.kill()
        proc.wait()
    else:
        pytest.fail(f"redis-server did not start: {(workdir / 'redis.log').read_text()[-2000:]}")
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="session")
def triton_repo(tmp_path_factory: pytest.TempPathFactory, teacher_dir: Path) -> Path:
    """A Triton model repository holding the demo teacher as python-backend model ``digits-cnn``
    (version 1). Shared by the session: tests that add versions should write their own."""
    from pseudostream.models.triton_repo import write_model_repository

    repo = tmp_path_factory.mktemp("triton-repo")
    write_model_repository(repo, teacher_dir, name="digits-cnn", platform="python")
    return repo


@pytest.fixture(scope="module")
def triton_server(triton_repo: Path, require_triton: None) -> Iterator[Any]:
    """The ``tritonserver`` bundled with nvidia-pytriton serving ``triton_repo`` on free loopback
    ports, for one test module (``LocalTritonServer``: ``.grpc_url``, ``.http_url``, ...)."""
    from pseudostream.server.backends.triton_server import LocalTritonServer

    with LocalTritonServer(triton_repo, models=["digits-cnn"]) as server:
        yield server


@pytest.fixture(scope="session")
def require_triton() -> None:
    """Skip without the [triton] extra (tritonclient, nvidia-pytriton), except under CI=true,
    where .ci/run installs it and a missing extra is a failure."""
    missing = [name for name in ("pytriton", "tritonclient") if importlib.util.find_spec(name) is None]
    if missing:
        what = " and ".join(missing)
        if os.environ.get("CI") == "true":
            pytest.fail(f"{what} not installed (CI=true): .ci/run must install the [triton] extra")
        pytest.skip(f"{what} not installed: pip install -e '.[triton]' (bundles a CPU tritonserver)")


@pytest.fixture
def steady_producer() -> Callable[..., Any]:
    """``await steady_producer(address, x, rounds, prefix="good")``: one stream sending ``rounds``
    requests of ``x`` 10 ms apart; returns how many decisions came back (to show a client
    streaming beside a misbehaving one loses nothing)."""
    import asyncio

    from pseudostream.clients.client import AsyncLabelerClient, make_label_request

    async def run(address: str, x: np.ndarray, rounds: int, prefix: str = "good") -> int:
        async def requests():
            for r in range(rounds):
                yield make_label_request("digits", x, [f"{prefix}-{r}-{i}" for i in range(len(x))])
                await asyncio.sleep(0.01)

        decided = 0
        async with AsyncLabelerClient(address) as client:
            async for result in client.label_stream(requests()):
                decided += len(result)
        return decided

    return run

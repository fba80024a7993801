"""Run the Triton Inference Server bundled with ``nvidia-pytriton`` as a local subprocess.

The ``[triton]`` extra installs ``nvidia-pytriton``, whose wheel ships a CPU ``tritonserver`` with
only the python backend. It needs three things pytriton's own launcher also arranges:

* the python backend's ``triton_python_backend_stub`` built for *this* interpreter's version, in
  the backend directory: the backends are copied into a private temp dir with the stub from
  ``python_backend_stubs/<major.minor>/`` (site-packages is never modified);
* ``LD_LIBRARY_PATH`` starting with this interpreter's ``LIBDIR``, so the stub links the same
  libpython (else the system's one is picked up and models fail with ``RLock ... _recursion_count``),
  then the wheel's bundled libraries (``nvidia_pytriton.libs``, found through RPATH only in place);
* ``PATH`` starting with this environment's ``bin``: the stub ignores ``PYTHONPATH`` and derives
  ``sys.prefix`` from the ``python3`` it finds on ``PATH``, so that is how ``model.py`` sees this
  venv's numpy and onnxruntime.

Each start gets its own python-backend shared-memory prefix, removed from ``/dev/shm`` after the
process ends (a killed server cannot remove it itself). The server log goes to ``log_path``.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
import weakref
from pathlib import Path
from typing import NamedTuple

__all__ = ["LocalTritonServer", "TritonServerError"]

log = logging.getLogger(__name__)

_SHM_DIR = Path("/dev/shm")
_RUN_MARKER = "\n===== "
_ERROR_LINE = re.compile(r"^(E\d{4} |error: )")
_PORT_IN_USE = re.compile(r"Socket '[^']*:(\d+)' already in use")
_HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: never via a proxy


class TritonServerError(RuntimeError):
    """The local Triton server could not start, or died; the message ends with its log's tail."""


class _Bundle(NamedTuple):
    server: Path  # bin/tritonserver
    backends: Path  # backends/ (the python backend, without a stub)
    stub: Path  # the python backend stub for this interpreter
    libs: Path  # the wheel's bundled shared libraries


def _find_bundle() -> _Bundle:
    """The tritonserver of the installed ``nvidia-pytriton``, with the stub for this Python."""
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("the local Triton server comes with nvidia-pytriton, which is not installed: "
                          "pip install 'pseudostream[triton]'")
    root = Path(next(iter(spec.submodule_search_locations)))
    dist = root / "tritonserver"
    server = dist / "bin" / "tritonserver"
    if not server.is_file():
        raise ImportError(f"{dist} has no bin/tritonserver: reinstall the [triton] extra "
                          "(pip install --force-reinstall nvidia-pytriton)")
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = dist / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.is_file():
        have = sorted(p.name for p in (dist / "python_backend_stubs").glob("*"))
        raise ImportError(f"nvidia-pytriton has no python backend stub for Python {version} "
                          f"(it has {', '.join(have) or 'none'}): use one of those Python versions")
    libs = root.parent / "nvidia_pytriton.libs"  # wheel install; editable installs keep them here:
    libs = libs if libs.is_dir() else dist / "external_libs"
    return _Bundle(server=server, backends=dist / "backends", stub=stub, libs=libs)


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _log_summary(path: Path) -> str:
    """The last run's error lines, then its last lines: enough to see why Triton failed."""
    try:
        run = path.read_text(errors="replace").rsplit(_RUN_MARKER, 1)[-1]
    except OSError:
        return f"(no log at {path})"
    lines = [line for line in run.splitlines() if not line.startswith(("+--", "| "))]
    errors = [line for line in lines if _ERROR_LINE.match(line) and "CudaDriverHelper" not in line]
    return (f"errors in {path}:\n" + "\n".join(errors[-10:]) + "\nlast lines:\n" + "\n".join(lines[-12:]))


class LocalTritonServer:
    """A ``tritonserver`` subprocess in explicit model-control mode, serving ``repo``.

    Ports given as 0 are picked free on the first start and kept across restarts, so clients can
    reconnect to the same addresses. ``models`` are loaded at startup (default: every model in the
    repository); ``start`` returns once Triton reports ready with all of them loaded. ``grpc_url``
    and ``http_url`` are ``host:port`` as tritonclient wants them; ``metrics_url`` is a full URL.
    Usable as a context manager (start, then stop).
    """

    def __init__(
        self,
        repo: str | Path,
        *,
        host: str = "127.0.0.1",
        http_port: int = 0,
        grpc_port: int = 0,
        metrics_port: int = 0,
        models: list[str] | None = None,
        log_verbose: int = 0,
        startup_timeout_s: float = 60.0,
    ) -> None:
        self.repo = Path(repo).resolve()
        if not self.repo.is_dir():
            raise FileNotFoundError(f"Triton model repository {self.repo} is not a directory")
        for name, port in (("http_port", http_port), ("grpc_port", grpc_port), ("metrics_port", metrics_port)):
            if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port < 65536:
                raise ValueError(f"{name} must be 0 (pick a free port) or a TCP port, got {port!r}")
        if not startup_timeout_s > 0:
            raise ValueError(f"startup_timeout_s must be positive, got {startup_timeout_s!r}")
        self._bundle = _find_bundle()
        self.host = host
        self._ports = {"http": http_port, "grpc": grpc_port, "metrics": metrics_port}
        self._auto_ports = {k for k, v in self._ports.items() if v == 0}
        self.models = None if models is None else list(models)
        self.log_verbose = int(log_verbose)
        self.startup_timeout_s = float(startup_timeout_s)
        self._workdir = tempfile.TemporaryDirectory(prefix="pseudostream-triton-")
        self.log_path = Path(self._workdir.name) / "tritonserver.log"
        self._backends: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._shm_prefix = self._server_id = ""
        self._finalizer: weakref.finalize | None = None

    @property
    def _client_host(self) -> str:
        return "127.0.0.1" if self.host in ("0.0.0.0", "", "::") else self.host

    @property
    def grpc_url(self) -> str:
        """``host:port`` of the gRPC endpoint (``tritonclient.grpc.InferenceServerClient(url)``)."""
        return f"{self._client_host}:{self._ports['grpc']}"

    @property
    def http_url(self) -> str:
        """``host:port`` of the HTTP endpoint (``tritonclient.http.InferenceServerClient(url)``)."""
        return f"{self._client_host}:{self._ports['http']}"

    @property
    def metrics_url(self) -> str:
        """The Prometheus endpoint, ``http://host:port/metrics``."""
        return f"http://{self._client_host}:{self._ports['metrics']}/metrics"

    @property
    def pid(self) -> int | None:
        """The server's process id while it runs, else None."""
        return self._proc.pid if self.is_running() else None

    def is_running(self) -> bool:
        """Whether the server process is alive (not necessarily ready)."""
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> LocalTritonServer:
        """Start the server and wait until it is ready; raise TritonServerError if it is not."""
        if self.is_running():
            raise TritonServerError(f"tritonserver already runs (pid {self._proc.pid}); stop it first")
        for attempt in range(3 if self._auto_ports else 1):
            if attempt or any(self._ports[name] == 0 for name in self._auto_ports):
                for name in self._auto_ports:  # picked once, then kept across restarts
                    self._ports[name] = _free_port(self._client_host)
            started = time.monotonic()
            self._spawn()
            try:
                self._wait_ready()
            except TritonServerError:
                if attempt == 2 or not self._lost_port_race():
                    raise
                log.warning("another process took a port picked for tritonserver; picking new ones")
            log.info("tritonserver pid %d ready in %.1fs (grpc %s, http %s, metrics %s)", self._proc.pid,
                     time.monotonic() - started, self.grpc_url, self.http_url, self.metrics_url)
            return self
        raise AssertionError("unreachable")

    def stop(self, grace_s: float = 30.0) -> None:
        """SIGTERM (Triton finishes in-flight requests), then SIGKILL after ``grace_s`` seconds."""
        if self.is_running():
            self._proc.send_signal(signal.SIGTERM)
            try:
                self._proc.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                log.warning("tritonserver pid %d ignored SIGTERM for %.0fs; killing it", self._proc.pid, grace_s)
                self._proc.kill()
                self._proc.wait()
        self._reap()

    def kill(self) -> None:
        """SIGKILL the server at once, as a crash would (for tests of failure handling)."""
        if self.is_running():
            self._proc.kill()
            self._proc.wait()
        self._reap()

    def restart(self, grace_s: float = 30.0) -> LocalTritonServer:
        """Stop (if running) and start again on the same ports."""
        self.stop(grace_s)
        return self.start()

    def __enter__(self) -> LocalTritonServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _lost_port_race(self) -> bool:
        run = self.log_path.read_text(errors="replace").rsplit(_RUN_MARKER, 1)[-1]
        taken = {int(port) for port in _PORT_IN_USE.findall(run)}
        return bool(taken & {self._ports[name] for name in self._auto_ports})

    def _prepare_backends(self) -> Path:
        """A private copy of the backends with this interpreter's stub (done once)."""
        if self._backends is None:
            backends = Path(self._workdir.name) / "backends"
            shutil.copytree(self._bundle.backends, backends, ignore=shutil.ignore_patterns("__pycache__"))
            shutil.copy2(self._bundle.stub, backends / "python" / "triton_python_backend_stub")
            self._backends = backends
        return self._backends

    def _environment(self) -> dict[str, str]:
        env = os.environ.copy()
        libdir = sysconfig.get_config_var("LIBDIR") or ""
        libpython = f"libpython{sys.version_info.major}.{sys.version_info.minor}.so.1.0"
        if not (Path(libdir) / libpython).exists():
            log.warning("%s/%s is missing: the python backend stub may link another libpython and fail "
                        "to load models; use a Python built with --enable-shared", libdir, libpython)
        parts = [libdir, str(self._bundle.libs), env.get("LD_LIBRARY_PATH", "")]
        env["LD_LIBRARY_PATH"] = ":".join(p for p in parts if p)
        env["PATH"] = os.pathsep.join([str(Path(sys.exec_prefix) / "bin"), env.get("PATH", "")])
        return env

    def _command(self) -> list[str]:
        loads = ["--load-model=*"] if self.models is None else [f"--load-model={m}" for m in self.models]
        return [
            str(self._bundle.server),
            f"--id={self._server_id}",
            f"--model-repository={self.repo}",
            "--model-control-mode=explicit",
            *loads,
            f"--http-address={self.host}", f"--http-port={self._ports['http']}",
            f"--grpc-address={self.host}", f"--grpc-port={self._ports['grpc']}",
            f"--metrics-address={self.host}", f"--metrics-port={self._ports['metrics']}",
            "--allow-metrics=true",
            "--exit-on-error=true",
            "--strict-readiness=true",
            f"--backend-directory={self._prepare_backends()}",
            f"--backend-config=python,shm-region-prefix-name={self._shm_prefix}",
            f"--log-verbose={self.log_verbose}",
        ]

    def _spawn(self) -> None:
        self._server_id = f"pseudostream{os.getpid()}-{secrets.token_hex(4)}"
        self._shm_prefix = f"{self._server_id}-"
        command = self._command()
        with open(self.log_path, "ab") as out:
            out.write(f"{_RUN_MARKER}{time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(command)}\n".encode())
            out.flush()
            self._proc = subprocess.Popen(command, env=self._environment(), stdin=subprocess.DEVNULL,
                                          stdout=out, stderr=subprocess.STDOUT)
        # A server left running by a crashed test run would hold its ports: kill it at exit.
        self._finalizer = weakref.finalize(self, _kill_quietly, self._proc, self._shm_prefix)

    def _wait_ready(self) -> None:
        base = f"http://{self.http_url}/v2"
        deadline = time.monotonic() + self.startup_timeout_s
        while True:
            code = self._proc.poll()
            if code is not None:
                self._reap()
                raise TritonServerError(f"tritonserver exited with code {code} before it was ready; "
                                        f"{_log_summary(self.log_path)}")
            try:  # ready, and really this process (--id) rather than whatever holds the port
                with _HTTP.open(f"{base}/health/ready", timeout=1.0) as response:
                    ready = response.status == 200
                with _HTTP.open(base, timeout=1.0) as response:
                    if ready and json.load(response).get("name") == self._server_id:
                        return
            except (urllib.error.URLError, OSError, ValueError):
                pass  # not listening yet, or not ready (HTTP 400)
            if time.monotonic() > deadline:
                self.kill()
                raise TritonServerError(f"tritonserver was not ready within {self.startup_timeout_s:.0f}s; "
                                        f"{_log_summary(self.log_path)}")
            time.sleep(0.05)

    def _reap(self) -> None:
        if self._finalizer is not None:
            self._finalizer.detach()
            self._finalizer = None
        if self._shm_prefix:
            _remove_shm(self._shm_prefix)


def _remove_shm(prefix: str) -> None:
    for region in _SHM_DIR.glob(f"{prefix}*"):
        region.unlink(missing_ok=True)


def _kill_quietly(proc: subprocess.Popen[bytes], shm_prefix: str) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait()
    _remove_shm(shm_prefix)

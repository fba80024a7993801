"""The labeling service as a child process of the benchmark (``pseudostream serve``)."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

__all__ = ["ServiceProcess", "free_port"]

TOPIC = "bench"


def free_port() -> int:
    """A loopback TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServiceProcess:
    """``with ServiceProcess(work, name, teacher) as s: s.target, s.pid, s.metrics_url``.

    One teacher ``name`` (a TeacherConfig mapping: backend, model_dir or triton, batching) and
    one topic ``bench`` on it with ``topic`` settings; SQLite label log in ``work``; gRPC and
    /metrics on free loopback ports. SIGTERM (graceful) on exit. ``settings`` are top-level
    config entries that replace these (another ``label_log``, ``keep_freed_memory_mib``, ...).
    """

    def __init__(self, work: Path, name: str, teacher: dict[str, Any], topic: dict[str, Any],
                 settings: dict[str, Any] | None = None) -> None:
        self.port, self.metrics_port = free_port(), free_port()
        self.config = work / f"{name}-{self.port}.yaml"
        self.config.write_text(yaml.safe_dump({
            "port": self.port, "metrics_port": self.metrics_port,
            "teachers": {name: teacher},
            "topics": {TOPIC: {"teacher": name, **topic}},
            "label_log": {"path": str(work / f"{name}-{self.port}.db")}, **(settings or {})}))
        self.log_path = work / f"{name}-{self.port}.log"
        self._proc: subprocess.Popen[str] | None = None

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    @property
    def pid(self) -> int:
        assert self._proc is not None
        return self._proc.pid

    def __enter__(self) -> "ServiceProcess":
        with open(self.log_path, "w") as log:  # the child keeps its own descriptor
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "pseudostream.clients.cli", "serve", "-c", str(self.config)],
                stdout=subprocess.PIPE, stderr=log, text=True)
        line = self._proc.stdout.readline() if self._proc.stdout else ""
        if "serving on" not in line:
            self._proc.kill()
            self._proc.communicate(timeout=30)
            raise RuntimeError(f"the service did not start: {self.log_path.read_text()[-2000:]}")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._proc is None:
            return
        self._proc.send_signal(signal.SIGTERM)
        try:
            self._proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.communicate()
        self._proc = None

"""A real Prometheus scrapes a real service: every dashboard query and alert expression runs,
the dashboard's queries return data after a labeled stream, and the alert rules load healthy."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, AsyncIterator

import numpy as np
import pytest
import yaml

from pseudostream.clients.client import AsyncLabelerClient
from pseudostream.server.app import LabelingServer

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
DASHBOARD = REPO / "deploy" / "grafana" / "pseudostream.json"
RULES = REPO / "deploy" / "prometheus" / "rules.yaml"
# Families a healthy, unaudited stream leaves empty: no backend failed, no sample carried an
# audit label, and a stream may reject nothing.
MAY_BE_EMPTY = ("pseudostream_backend_errors_total", "pseudostream_quality", "pseudostream_rejected_total")


def _binary() -> str:
    binary = shutil.which("prometheus")
    if binary is None:
        if os.environ.get("CI") == "true":
            pytest.fail("prometheus not installed (CI=true): .ci/run must `apt-get install -y prometheus`")
        pytest.skip("prometheus not installed: apt-get install prometheus")
    return binary


def _get(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


class Prometheus:
    """A throwaway Prometheus scraping one target every second, with the repo's alert rules."""

    def __init__(self, workdir: Path, target: str, port: int) -> None:
        config = {"global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                  "rule_files": [str(RULES)],
                  "scrape_configs": [{"job_name": "pseudostream",
                                      "static_configs": [{"targets": [target]}]}]}
        (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.url = f"http://127.0.0.1:{port}"
        self._log = open(workdir / "prometheus.log", "wb")
        self.proc = subprocess.Popen(
            [_binary(), f"--config.file={workdir / 'prometheus.yml'}",
             f"--storage.tsdb.path={workdir / 'data'}", f"--web.listen-address=127.0.0.1:{port}"],
            stdout=self._log, stderr=subprocess.STDOUT)

    async def api(self, path: str, **params: str) -> dict[str, Any]:
        url = f"{self.url}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        return await asyncio.to_thread(_get, url)

    async def query(self, expr: str) -> list[dict[str, Any]]:
        body = await self.api("query", query=expr)
        assert body["status"] == "success", f"{expr}: {body}"
        return body["data"]["result"]

    async def wait_for(self, expr: str, timeout: float = 20.0) -> list[dict[str, Any]]:
        """Poll until ``expr`` returns a non-empty result."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, "prometheus exited; see prometheus.log"
            try:
                result = await self.query(expr)
            except OSError:  # not listening yet
                result = []
            if result:
                return result
            await asyncio.sleep(0.2)
        raise AssertionError(f"no data for {expr} within {timeout}s")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._log.close()


@pytest.fixture
async def prometheus_and_server(make_config, tmp_path, free_port) -> AsyncIterator[tuple[Prometheus, LabelingServer]]:
    _binary()
    async with LabelingServer(make_config()) as server:
        prom = Prometheus(tmp_path, f"127.0.0.1:{server.metrics_port}", free_port())
        try:
            await prom.wait_for('up{job="pseudostream"} == 1')
            yield prom, server
        finally:
            prom.stop()


def _dashboard_exprs() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    panels = [p for top in dashboard["panels"] for p in (top, *top.get("panels", []))]
    return [t["expr"].replace("$topic", "digits").replace("$__rate_interval", "1m")
            for p in panels for t in p.get("targets", [])]


def _alert_exprs() -> dict[str, str]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return {r["alert"]: r["expr"] for g in groups for r in g["rules"]}


async def _drive_stream(server: LabelingServer, x: np.ndarray) -> None:
    """Label three requests, then subscribe as group `trainers`, take some records and ack them."""
    async with AsyncLabelerClient(server.address) as client:
        for k in range(3):
            part = x[k * 32:(k + 1) * 32]
            await client.label("digits", part, ids=[f"p{k}-{i}" for i in range(len(part))])
            await asyncio.sleep(0.3)
        got: list = []

        async def read() -> None:
            async for records in client.subscribe("digits", "trainers", "c1", max_batch=8):
                got.extend(records)

        task = asyncio.create_task(read())
        for _ in range(100):
            if got:
                break
            await asyncio.sleep(0.05)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        assert got, "the stream accepted nothing to deliver"
        await client.ack("digits", "trainers", [r.offset for r in got[:4]])


async def test_dashboard_and_alert_queries_run_against_real_prometheus(prometheus_and_server, digits):
    prom, server = prometheus_and_server
    assert await prom.query('pseudostream_adapter_alarms_total{topic="digits"}'), \
        "per-topic families must exist before traffic"
    await _drive_stream(server, np.ascontiguousarray(digits.stream_x[:96]))
    await prom.wait_for('pseudostream_consumer_lag{topic="digits", group="trainers"}')
    await prom.wait_for('increase(pseudostream_samples_total{topic="digits"}[1m]) > 0')
    await asyncio.sleep(1.5)  # one more scrape, so every rate() window holds the traffic

    empty = []
    for expr in _dashboard_exprs():
        result = await prom.query(expr)
        if not result and not any(name in expr for name in MAY_BE_EMPTY):
            empty.append(expr)
    assert not empty, "dashboard queries without data after a labeled stream:\n" + "\n".join(empty)

    for alert, expr in _alert_exprs().items():
        await prom.query(expr)  # parses and evaluates; a healthy stream fires nothing
        for selector in sorted(set(_selectors(expr))):
            if selector not in MAY_BE_EMPTY:
                assert await prom.query(selector), f"{alert}: no series for {selector}"

    rules = (await prom.api("rules", type="alert"))["data"]["groups"]
    loaded = {r["name"]: r for g in rules for r in g["rules"]}
    assert set(loaded) == set(_alert_exprs())
    assert all(r["health"] != "err" for r in loaded.values()), loaded
    firing = [r["name"] for r in loaded.values() if r["state"] == "firing"]
    assert not firing, f"alerts firing on a healthy service: {firing}"


def _selectors(expr: str) -> list[str]:
    """Metric names an alert expression reads (`up` and pseudostream_* series)."""
    return re.findall(r"\b(?:pseudostream_[a-z_]+|up)\b(?=\s*[{\[)\s])", expr)

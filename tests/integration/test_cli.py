"""The command line against a real server process: serve, label a .npy file, subscribe."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
import yaml

pytestmark = pytest.mark.integration

CLI = [sys.executable, "-m", "pseudostream.clients.cli"]


def test_serve_label_subscribe_round_trip(tmp_path, teacher_dir, digits, free_port):
    port = free_port()
    config = tmp_path / "service.yaml"
    config.write_text(yaml.safe_dump({
        "port": port, "metrics_port": None,
        "teachers": {"digits-cnn": {"model_dir": str(teacher_dir)}},
        "topics": {"digits": {"teacher": "digits-cnn"}},
        "label_log": {"path": str(tmp_path / "labels.db")},
    }))
    np.save(tmp_path / "batch.npy", digits.stream_x[:20])
    server = subprocess.Popen(CLI + ["serve", "--config", str(config)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=dict(os.environ))
    try:
        assert f"serving on 127.0.0.1:{port}" in server.stdout.readline()
        target = f"127.0.0.1:{port}"
        labeled = subprocess.run(CLI + ["label", str(tmp_path / "batch.npy"), "--topic", "digits",
                                        "--target", target, "--batch", "8"],
                                 capture_output=True, text=True, timeout=60, check=True)
        decisions = [json.loads(line) for line in labeled.stdout.splitlines()]
        assert [d["id"] for d in decisions] == [f"batch-{i}" for i in range(20)]
        accepted = [d for d in decisions if d["accepted"]]
        assert accepted and all(d["offset"] >= 0 for d in accepted)
        subscribed = subprocess.run(CLI + ["subscribe", "--topic", "digits", "--group", "g",
                                           "--target", target, "--ack", "--limit", str(len(accepted))],
                                    capture_output=True, text=True, timeout=60, check=True)
        records = [json.loads(line) for line in subscribed.stdout.splitlines()]
        assert sorted(r["id"] for r in records) == sorted(d["id"] for d in accepted)
        bad = subprocess.run(CLI + ["label", str(tmp_path / "batch.npy"), "--topic", "nope",
                                    "--target", target], capture_output=True, text=True, timeout=60)
        assert bad.returncode == 1
        assert bad.stderr.strip() == "error: NOT_FOUND: unknown topic 'nope'; configured topics: digits"
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            assert server.wait(timeout=30) == 0  # graceful shutdown on SIGTERM
        finally:
            server.kill()

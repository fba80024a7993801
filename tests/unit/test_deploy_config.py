"""The example config that ships in deploy/ is valid and builds its topic's policy."""

from __future__ import annotations

from pathlib import Path

from pseudostream.server.config import load_config
from pseudostream.server.topic import build_policy

CONFIG = Path(__file__).resolve().parents[2] / "deploy" / "config" / "service.yaml"


def test_shipped_config_loads_and_its_policies_build():
    cfg = load_config(CONFIG)
    assert cfg.port == 50051 and cfg.label_log.kind == "sqlite"
    for topic in cfg.topics.values():
        assert topic.teacher in cfg.teachers
        assert build_policy(topic, num_classes=10).name == "freematch+dist_align"

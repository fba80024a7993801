"""deploy/prometheus: the alert rules are valid and their promtool unit tests pass."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

PROMETHEUS_DIR = Path(__file__).resolve().parents[2] / "deploy" / "prometheus"
ALERTS = {"PseudostreamDown", "PseudostreamTeacherDown", "PseudostreamAcceptanceCollapsed",
          "PseudostreamThresholdStuck", "PseudostreamAdapterAlarmStorm",
          "PseudostreamConsumerLagGrowing", "PseudostreamQueueSaturated"}


@pytest.fixture(scope="module")
def promtool() -> str:
    """The promtool binary; skipped without it, except in CI (CI=true), where it is a failure."""
    binary = shutil.which("promtool")
    if binary is None:
        if os.environ.get("CI") == "true":
            pytest.fail("promtool not installed (CI=true): .ci/run must `apt-get install -y prometheus`")
        pytest.skip("promtool not installed: apt-get install prometheus (it ships promtool)")
    return binary


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=PROMETHEUS_DIR, capture_output=True, text=True, timeout=60)


def _rules() -> list[dict]:
    groups = yaml.safe_load((PROMETHEUS_DIR / "rules.yaml").read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def test_rules_pass_promtool_check(promtool: str) -> None:
    done = _run(promtool, "check", "rules", "rules.yaml")
    assert done.returncode == 0, done.stdout + done.stderr


def test_rule_unit_tests_pass(promtool: str) -> None:
    done = _run(promtool, "test", "rules", "rules_test.yaml")
    assert done.returncode == 0, done.stdout + done.stderr


def test_scrape_config_is_valid(promtool: str) -> None:
    done = _run(promtool, "check", "config", "prometheus.yml")
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_alert_is_documented_and_unit_tested() -> None:
    rules = _rules()
    assert {r["alert"] for r in rules} == ALERTS
    for rule in rules:
        assert rule["labels"]["severity"] in {"warning", "critical"}, rule["alert"]
        assert {"summary", "description"} <= set(rule["annotations"]), rule["alert"]
    tests = yaml.safe_load((PROMETHEUS_DIR / "rules_test.yaml").read_text())["tests"]
    cases = [case for t in tests for case in t["alert_rule_test"]]
    fired = {c["alertname"] for c in cases if c.get("exp_alerts")}
    assert fired == ALERTS, f"alerts no test sees firing: {sorted(ALERTS - fired)}"
    assert any(not c.get("exp_alerts") for c in cases), "no case checks an alert stays silent"

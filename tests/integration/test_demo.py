"""The demo end to end, as `make demo` runs it: the report has every field and the figures meet
the spine's bar (selection adds precision; the student nearly matches the teacher)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.integration

FIELDS = {"samples_sent", "samples_per_s", "accepted", "acceptance_rate", "pseudo_label_precision",
          "teacher_accuracy_shifted", "student_accuracy_shifted", "teacher_version", "policy"}


def test_demo_cli_writes_a_report_that_meets_the_bar(tmp_path, teacher_dir):
    report = tmp_path / "report.json"
    done = subprocess.run(
        [sys.executable, "-m", "pseudostream.clients.cli", "demo", "--report", str(report),
         "--teacher-dir", str(teacher_dir)],
        capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "pseudo-label precision" in done.stdout and "labeling" in done.stderr  # progress bar
    r = json.loads(report.read_text())
    assert FIELDS <= set(r)
    assert r["samples_sent"] == 1077 and r["producers"] == 4
    assert 0 < r["accepted"] <= r["samples_sent"] and r["labels_trained_on"] == r["accepted"]
    assert r["trainer_lag_after_ack"] == 0  # the student acked everything it trained on
    assert r["pseudo_label_precision"] > r["teacher_accuracy_shifted"]
    assert r["student_accuracy_shifted"] >= r["teacher_accuracy_shifted"] - 0.03
    assert r["shift"]["severity"] == 1 and r["teacher_version"] == "1" and r["policy"] == "fixed"


def test_demo_on_a_local_triton_reports_its_inference_count(tmp_path, teacher_dir, require_triton):
    report = tmp_path / "report.json"
    done = subprocess.run(
        [sys.executable, "-m", "pseudostream.clients.cli", "demo", "--backend", "triton",
         "--report", str(report), "--teacher-dir", str(teacher_dir)],
        capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    r = json.loads(report.read_text())
    assert r["backend"] == "triton" and FIELDS <= set(r)
    assert r["triton_inference_count"] == r["samples_sent"]  # every sample went through Triton
    assert r["pseudo_label_precision"] > r["teacher_accuracy_shifted"]


def test_demo_rounds_promote_only_through_the_gate(tmp_path, teacher_dir):
    report = tmp_path / "report.json"
    done = subprocess.run(
        [sys.executable, "-m", "pseudostream.clients.cli", "demo", "--rounds", "2", "--report",
         str(report), "--teacher-dir", str(teacher_dir)],
        capture_output=True, text=True, timeout=600, cwd=tmp_path, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    r = json.loads(report.read_text())
    assert FIELDS <= set(r) and [e["round"] for e in r["rounds"]] == [1, 2]
    assert r["samples_sent"] == 1077 - 240  # the audit slice is never streamed
    version = 1
    for e in r["rounds"]:
        assert e["teacher_version"] == str(version) and 0 < e["pseudo_label_precision"] <= 1
        p = e["proposal"]
        assert p["current"]["accuracy"] > 0 and p["candidate"]["accuracy"] > 0
        if p["promoted"]:  # the gate demands one more audit sample right
            version += 1
            assert p["candidate"]["accuracy"] > p["current"]["accuracy"]
            assert p["version"] == e["teacher_version_after"] == str(version)
        else:
            assert p["candidate"]["accuracy"] <= p["current"]["accuracy"]
            assert e["teacher_accuracy_after"] == e["teacher_accuracy_shifted"]  # served unchanged
    assert "round 2: teacher v" in done.stdout

"""Smoke test of benchmarks/adaptation.py --quick: it runs (in a child process: the ONNX exporter
may run there, see conftest.build_teacher_in_child) and writes the report's keys."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
STREAMS = {"covariate", "class_ordered", "label_shift", "long"}
ADAPTERS = ["prior_em", "t3a", "lame", "feature_shift", "bn_stats", "tent", "eata", "sar"]
METHODS = {"source", *ADAPTERS, *(f"{name}+guard" for name in ADAPTERS)}


@pytest.mark.timeout(180)
def test_quick_run_writes_every_stream_and_method(tmp_path: Path, teacher_dir: Path) -> None:
    out = tmp_path / "adaptation-report.json"
    done = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "adaptation.py"), "--quick", "--out", str(out),
         "--teacher-dir", str(teacher_dir)],
        check=False, cwd=tmp_path, capture_output=True, text=True, timeout=170)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())
    assert set(report["streams"]) == STREAMS
    for stream, errors in report["streams"].items():
        assert set(errors) == METHODS, stream
        assert all(0.0 <= e <= 1.0 for e in errors.values()), stream
        assert set(report["precision_at_tau"][stream]) == METHODS
        assert set(report["guard_alarms"][stream]) == {f"{name}+guard" for name in ADAPTERS}
    assert set(report["adapt_then_label"]["streams"]) == STREAMS
    assert report["protocol"]["mode"] == "predict-then-adapt" and report["protocol"]["quick"]
    assert report["protocol"]["samples"]["long"] >= 20 * 64

"""Smoke run of the benchmark harness (``bench.py --quick``): every part runs, the report has its keys.

It starts the service as a child process on loopback, hence the integration marker.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


def test_quick_bench_writes_a_report_with_every_key(tmp_path, teacher_dir):
    pytest.importorskip("psutil")
    out = tmp_path / "bench-report.json"
    done = subprocess.run([sys.executable, "-m", "pseudostream.benchmarks.bench", "--quick",
                           "--out", str(out), "--plot", str(tmp_path / "plot.png")],
                          cwd=REPO, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())
    light, heavy, q = report["light"], report["heavy"], report["quantized"]
    for key in ("service_vs_ort", "service_vs_triton", "p99_ms_half_load"):
        assert key in light and key in heavy
    assert light["service_vs_ort"] > 0 and light["p99_ms_half_load"] > 0
    assert light["service_vs_triton"] is None and light["service_vs_triton_reason"] == "skipped (--no-triton)"
    assert heavy["service_vs_ort"] is None and "--teachers light" in heavy["service_vs_ort_reason"]
    assert {"speedup_vs_fp32", "decision_agreement"} <= set(q)
    assert q["speedup_vs_fp32"] is None and q["speedup_vs_fp32_reason"]
    section = light
    assert set(section["service"]) == {"1", "2"} and section["service"]["2"]["effective_batch"] > 0
    # --quick runs each window twice; the headline window is one of the repeats, whole
    repeats = section["service_repeats"]["2"]
    assert len(repeats) == 2 and section["service"]["2"] in [r["window"] for r in repeats]
    assert len(section["service_vs_ort_repeats"]["2"]) == 2
    assert len(section["half_load"]["p99_ms_repeats"]) == 2
    assert section["half_load"]["p99_ms"] in section["half_load"]["p99_ms_repeats"]
    assert section["quantized"]["int8"]["agreement"]["joint"] >= 0.99
    assert section["quantized"]["runtime"]["int8"]["vs_first"] > 0
    profile = section["profile"]  # stages timed with no profiler on, then a cProfile pass of its own
    assert profile["stages_ms"]["inference"] > 0 and profile["cprofile_top_own_ms_per_batch"]
    assert profile["stages_ms"]["other (calibration, per-request split, bookkeeping)"] >= 0
    piped = section["service_pipelined"]  # the largest N of --quick's 1,2, two requests in flight each
    assert (piped["producers"], piped["in_flight"]) == (2, 2) and piped["samples_per_s"] > 0
    assert section["service_vs_ort_pipelined"] > 0
    assert "| light (digits-cnn) | 2 |" in done.stdout


def test_service_load_window_reports_cpu_per_thread(teacher_dir, capsys):
    pytest.importorskip("psutil")
    from pseudostream.benchmarks.service_load import main

    result = main(["--model-dir", str(teacher_dir), "--producers", "2", "--in-flight", "2", "--seconds", "1",
                   "--request", "16", "--topic", '{"idempotency_window_s": 0}'])
    assert result["samples_per_s"] > 0 and result["effective_batch"] >= 16
    assert result["thread_cpu_ms_per_1k"]["event loop"] > 0
    assert 0 < result["teacher_busy"] <= 1.0 and result["inference_ms_per_sample"] > 0
    assert json.loads(capsys.readouterr().out)["requests"] == result["requests"]


def test_service_load_sends_digits_to_the_digits_teacher_and_noise_of_the_shape_otherwise(teacher_dir, tmp_path):
    from pseudostream.benchmarks.service_load import producer_samples
    from pseudostream.models.card import TeacherCard
    from pseudostream.models.digits import load_digits_splits

    np.testing.assert_array_equal(producer_samples(teacher_dir), load_digits_splits(0).stream_x)
    card = TeacherCard.load(teacher_dir)
    card.input_shape = [3, 4, 4]
    card.save(tmp_path)
    noise = producer_samples(tmp_path)
    assert noise.shape == (256, 3, 4, 4) and noise.dtype == np.float32 and 0 <= noise.min() < noise.max() < 1

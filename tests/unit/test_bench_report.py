"""The benchmark's report writer (benchmarks/bench_report.py) on hand-made measurements."""

from __future__ import annotations

import json

import pytest

from pseudostream.benchmarks.bench_report import (TeacherRun, build_report, median_by, median_repeat, plot, ratio, table,
                                                  write_report)


def w(sps: float, p99: float = 10.0) -> dict:
    return {"samples_per_s": sps, "p50_ms": p99 / 2, "p99_ms": p99, "effective_batch": 32.0}


def heavy_run() -> TeacherRun:
    run = TeacherRun("resnet18", request_samples=16, max_batch=128, max_delay_ms=5.0)
    run.ort_sweep = {"best_batch": 64, "best": w(200.0), "by_batch": {64: w(200.0), 128: w(190.0, 700.0)}}
    run.ort_after = {1: w(200.0), 4: w(200.0), 16: w(190.0)}
    run.service = {1: w(150.0), 4: w(196.0), 16: w(180.5)}
    run.pipelined = {"producers": 4, "in_flight": 2, **w(199.0), "ort_samples_per_s": 200.0}
    run.half_load = {"p99_ms": 300.0, "bound_ms": 1410.0, "samples_per_s": 98.0}
    run.raw_triton = {1: w(100.0), 4: w(160.0), 16: w(150.0)}
    run.service_triton = {1: w(90.0), 4: w(152.0), 16: w(120.0)}
    run.profile = {"selection_adaptation_append_share": 0.012}
    run.quantized = {"int8": {"agreement": {"joint": 1.0}, "speedup_vs_fp32": 3.2},
                     "bf16": {"agreement": {"joint": 0.999}, "speedup_vs_fp32": 1.6}}
    return run


def light_run_without_triton() -> TeacherRun:
    run = TeacherRun("digits-cnn", request_samples=64, max_batch=128, max_delay_ms=5.0)
    run.ort_sweep = {"best_batch": 128, "best": w(60000.0), "by_batch": {128: w(60000.0, 3.0)}}
    run.ort_after = {1: w(50000.0), 4: w(60000.0)}
    run.service = {1: w(5000.0), 4: w(12000.0)}
    run.reasons["triton"] = "the [triton] extra is not installed (tritonclient missing)"
    return run


def test_ratio_rounds_and_refuses_missing_parts():
    assert ratio(1.0, 3.0) == 0.333
    assert ratio(None, 3.0) is None and ratio(1.0, None) is None and ratio(1.0, 0) is None


def test_median_by_takes_the_middle_item_whole_and_the_lower_middle_of_an_even_count():
    items = [{"p99_ms": 30.0, "p50_ms": 9.0}, {"p99_ms": 12.0, "p50_ms": 5.0}, {"p99_ms": 80.0, "p50_ms": 7.0}]
    assert median_by(items, "p99_ms") == {"p99_ms": 30.0, "p50_ms": 9.0}  # its own p50, not the median p50
    assert median_by(items[:2], "p99_ms")["p99_ms"] == 12.0
    with pytest.raises(ValueError):
        median_by([], "p99_ms")


def test_median_repeat_picks_by_ratio_not_by_rate():
    """By rate the median window is the 190/s one; by ratio (0.75, 0.7, 0.95) it is the 150/s
    one, which ran beside raw 200/s, and its limit comes with it."""
    repeats = [{"window": w(150.0), "limit": w(200.0)}, {"window": w(210.0), "limit": w(300.0)},
               {"window": w(190.0), "limit": w(200.0)}]
    chosen = median_repeat(repeats)
    assert chosen["window"]["samples_per_s"] == 150.0 and chosen["limit"]["samples_per_s"] == 200.0


def test_every_repeat_is_reported_beside_the_median_one():
    run = heavy_run()
    run.service_repeats = {4: [{"window": w(170.0), "limit": w(200.0)}, {"window": w(196.0), "limit": w(200.0)},
                               {"window": w(199.0), "limit": w(190.0)}]}
    report = build_report({"heavy": run}, {"cpus": 2}, {})
    section = report["heavy"]
    assert section["service_vs_ort_repeats"] == {4: [0.85, 0.98, 1.047]}
    assert section["service_repeats"][4][0]["window"]["samples_per_s"] == 170.0
    assert "| 0.98 (repeats 0.85, 0.98, 1.047) |" in table(report)
    assert "| 0.75 |" in table(report)  # N = 1 ran once: no list


def test_headline_ratios_are_computed_from_the_measurements():
    report = build_report({"heavy": heavy_run(), "light": light_run_without_triton()}, {"cpus": 2}, {})
    heavy, light = report["heavy"], report["light"]
    assert heavy["service_vs_ort_by_producers"] == {1: 0.75, 4: 0.98, 16: 0.95}
    assert heavy["service_vs_ort"] == 0.98  # at the service's peak (N=4)
    assert heavy["service_vs_ort_min_n_ge_4"] == 0.95
    assert heavy["service_vs_ort_pipelined"] == 0.995  # a window beside the targets, not one of them
    assert light["service_vs_ort_pipelined"] is None and light["service_pipelined"] is None
    assert heavy["service_vs_triton"] == 0.95  # 152 / 160: both peaks
    assert heavy["service_vs_triton_by_producers"] == {1: 0.9, 4: 0.95, 16: 0.8}
    assert (heavy["p99_ms_half_load"], heavy["p99_bound_ms"]) == (300.0, 1410.0)
    assert light["service_vs_ort"] == 0.2  # 12000 / 60000
    assert report["quantized"]["speedup_vs_fp32"] == 3.2 and report["quantized"]["decision_agreement"] == 1.0
    assert report["quantized"]["bf16_speedup_vs_fp32"] == 1.6


def test_missing_parts_are_null_with_their_reason():
    report = build_report({"light": light_run_without_triton()}, {}, {"heavy": "not run (--teachers light)"})
    light, heavy = report["light"], report["heavy"]
    assert light["service_vs_triton"] is None
    assert "tritonclient missing" in light["service_vs_triton_reason"]
    assert light["p99_ms_half_load"] is None and light["p99_ms_half_load_reason"]
    for key in ("service_vs_ort", "service_vs_triton", "p99_ms_half_load"):
        assert heavy[key] is None and heavy[f"{key}_reason"] == "not run (--teachers light)"
    q = report["quantized"]
    assert q["speedup_vs_fp32"] is None and q["decision_agreement"] is None
    assert q["speedup_vs_fp32_reason"] == "the heavy teacher was not run"


def test_targets_say_met_missed_or_unknown():
    report = build_report({"heavy": heavy_run(), "light": light_run_without_triton()}, {}, {})
    met = {t["target"]: t["met"] for t in report["targets"]}
    assert met["heavy service/ORT at N>=4 (worst N)"] is True
    assert met["light service/ORT (best N)"] is False
    assert met["light service/Triton (best N)"] is None
    assert met["heavy int8 speedup over fp32"] is True
    assert met["heavy p99 at half load (ms, bound 2x(delay+batch))"] is True


def test_report_round_trips_as_json_and_renders(tmp_path):
    report = build_report({"heavy": heavy_run(), "light": light_run_without_triton()}, {"cpus": 2}, {})
    path = write_report(report, tmp_path / "bench-report.json")
    loaded = json.loads(path.read_text())
    assert loaded["heavy"]["service_vs_ort_by_producers"] == {"1": 0.75, "4": 0.98, "16": 0.95}
    assert {"heavy", "light", "quantized", "targets", "setup"} <= set(loaded)
    text = table(report)
    assert "| heavy (resnet18) | 4 |" in text and "196/s" in text
    assert "| heavy (resnet18) | 4, 2 requests in flight each | 200/s | 199/s" in text and "| 0.995 |" in text
    pytest.importorskip("matplotlib")
    png = plot(report, tmp_path / "plot.png")
    assert png is not None and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

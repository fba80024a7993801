"""``bench-report.json`` from the measurements of ``bench.py``: ratios, targets, table, plot.

Each teacher's raw measurements (``TeacherRun``) become a section with the headline figures next
to the details. A part that could not run is ``null`` with ``<key>_reason`` beside it. Ratios:

* ``service_vs_ort``: the service at its best producer count over raw ONNX Runtime at its best
  batch size, the mean of runs right before and right after that service window
  (``service_vs_ort_by_producers`` for each count; ``service_vs_ort_min_n_ge_4``: the worst
  count of 4 or more). Each count's window runs several times (``--repeats``, in rounds over
  the counts, each bracketed by raw runs of its own): its figure is the median repeat's
  (``median_repeat``), whose window gives every figure of that count (rate, latency, batch,
  CPU), and ``service_vs_ort_repeats`` keeps each repeat's ratio in the order run;
  ``service_vs_ort_pipelined``: 4 producers keeping several requests in flight each, against
  raw ONNX Runtime around that window (run once; not a target figure);
* ``service_vs_triton``: the service over Triton at its best producer count over raw
  ``tritonclient`` at its best (``service_vs_triton_by_producers``: at equal counts);
* ``p99_ms_half_load``: p99 latency at half the service's peak throughput, offered open loop;
  the median of ``--repeats`` windows (``half_load.p99_ms_repeats`` has each);
  ``p99_bound_ms`` = 2 x (max batch delay + raw inference time of one full batch);
* ``quantized``: the heavy teacher's int8 speedup over fp32 (raw ONNX Runtime, interleaved
  rounds) and its decision agreement with fp32 (the quantize gate's figure).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

__all__ = ["TeacherRun", "ratio", "median_by", "repeat_ratio", "median_repeat", "teacher_section", "build_report",
           "write_report", "targets", "table", "plot"]


@dataclass
class TeacherRun:
    """What ``bench.py`` measured for one teacher (``None`` where a part did not run, with
    ``reasons[part]`` saying why)."""

    teacher: str
    request_samples: int
    max_batch: int
    max_delay_ms: float
    ort_sweep: dict[str, Any] | None = None
    ort_after: dict[int, dict[str, Any]] = field(default_factory=dict)  # producers -> raw ORT run
    service: dict[int, dict[str, Any]] = field(default_factory=dict)  # producers -> window
    # producers -> every repeat of that window, in the order run: {"window": ..., "limit": ...}
    # (the limit is the raw ORT run beside it); ``service``/``ort_after`` hold the median one.
    service_repeats: dict[int, list[dict[str, Any]]] = field(default_factory=dict)
    pipelined: dict[str, Any] | None = None  # a window of producers with several requests in flight
    half_load: dict[str, Any] | None = None
    raw_triton: dict[int, dict[str, Any]] = field(default_factory=dict)
    service_triton: dict[int, dict[str, Any]] = field(default_factory=dict)
    profile: dict[str, Any] | None = None
    quantized: dict[str, Any] | None = None
    reasons: dict[str, str] = field(default_factory=dict)


def ratio(a: float | None, b: float | None) -> float | None:
    """a / b rounded to 3 places, or None if either is missing or b is 0."""
    if a is None or b is None or b == 0:
        return None
    return round(a / b, 3)


def median_by(items: list[dict[str, Any]], key: str) -> dict[str, Any]:
    """The item whose ``key`` is the median (the lower of the middle two for an even count), so
    every figure reported beside it comes from the same measurement."""
    if not items:
        raise ValueError("no measurements to take a median of")
    return sorted(items, key=lambda item: item[key])[(len(items) - 1) // 2]


def repeat_ratio(repeat: Mapping[str, Any]) -> float | None:
    """One repeat's service/raw ratio: its window over the raw ONNX Runtime run beside it."""
    return ratio(repeat["window"]["samples_per_s"], repeat["limit"]["samples_per_s"])


def median_repeat(repeats: list[dict[str, Any]]) -> dict[str, Any]:
    """Of a window's repeats ({"window", "limit"}), the one with the median service/raw ratio."""
    return median_by([{**r, "ratio": repeat_ratio(r)} for r in repeats], "ratio")


def _set(section: dict[str, Any], key: str, value: Any, reason: str | None) -> None:
    section[key] = value
    if value is None:
        section[f"{key}_reason"] = reason or "not measured"


def _peak(windows: Mapping[int, Mapping[str, Any]]) -> int | None:
    return max(windows, key=lambda n: windows[n]["samples_per_s"]) if windows else None


def teacher_section(run: TeacherRun) -> dict[str, Any]:
    """One teacher's part of the report: headline figures, then every measurement."""
    s: dict[str, Any] = {"teacher": run.teacher, "request_samples": run.request_samples,
                         "max_batch": run.max_batch, "max_delay_ms": run.max_delay_ms}
    by_n = {n: ratio(w["samples_per_s"], run.ort_after[n]["samples_per_s"])
            for n, w in run.service.items() if n in run.ort_after}
    peak = _peak(run.service)
    _set(s, "service_vs_ort", by_n.get(peak) if peak is not None else None,
         run.reasons.get("service") or run.reasons.get("ort"))
    s["service_vs_ort_by_producers"] = by_n
    s["service_vs_ort_repeats"] = {n: [repeat_ratio(r) for r in repeats]
                                   for n, repeats in run.service_repeats.items()}
    high = [r for n, r in by_n.items() if n >= 4 and r is not None]
    s["service_vs_ort_min_n_ge_4"] = min(high) if high else None
    piped = run.pipelined
    s["service_vs_ort_pipelined"] = ratio(piped["samples_per_s"], piped["ort_samples_per_s"]) if piped else None
    raw_peak, svc_peak = _peak(run.raw_triton), _peak(run.service_triton)
    _set(s, "service_vs_triton",
         ratio(run.service_triton[svc_peak]["samples_per_s"], run.raw_triton[raw_peak]["samples_per_s"])
         if raw_peak is not None and svc_peak is not None else None, run.reasons.get("triton"))
    s["service_vs_triton_by_producers"] = {
        n: ratio(w["samples_per_s"], run.raw_triton[n]["samples_per_s"])
        for n, w in run.service_triton.items() if n in run.raw_triton}
    half = run.half_load
    _set(s, "p99_ms_half_load", half["p99_ms"] if half else None, run.reasons.get("half_load"))
    s["p99_bound_ms"] = half["bound_ms"] if half else None
    if run.profile is not None:
        s["selection_adaptation_append_share"] = run.profile["selection_adaptation_append_share"]
    s.update({"ort": run.ort_sweep, "ort_after_service": run.ort_after, "service": run.service,
              "service_repeats": run.service_repeats,
              "service_pipelined": piped,
              "half_load": half, "raw_triton": run.raw_triton, "service_triton": run.service_triton,
              "profile": run.profile, "quantized": run.quantized})
    for part, why in run.reasons.items():
        s.setdefault(f"{part}_reason", why)
    return s


def _quantized_headline(heavy: TeacherRun | None) -> dict[str, Any]:
    q = heavy.quantized if heavy is not None else None
    int8 = (q or {}).get("int8")
    why = ((heavy.reasons.get("quantized") if heavy else None)
           or (q or {}).get("int8_reason") or "the heavy teacher was not run")
    out: dict[str, Any] = {"teacher": heavy.teacher if heavy else None, "precision": "int8"}
    _set(out, "speedup_vs_fp32", int8.get("speedup_vs_fp32") if int8 else None, why)
    _set(out, "decision_agreement", int8["agreement"]["joint"] if int8 else None, why)
    if q and q.get("bf16"):
        out["bf16_speedup_vs_fp32"] = q["bf16"].get("speedup_vs_fp32")
        out["bf16_decision_agreement"] = q["bf16"]["agreement"]["joint"]
    return out


def build_report(runs: Mapping[str, TeacherRun | None], setup: dict[str, Any],
                 skipped: Mapping[str, str]) -> dict[str, Any]:
    """The whole report: setup, one section per teacher kind ("heavy", "light"), quantized."""
    report: dict[str, Any] = {"setup": setup}
    for kind in ("heavy", "light"):
        run = runs.get(kind)
        if run is None:
            why = skipped.get(kind, "not run")
            report[kind] = {"service_vs_ort": None, "service_vs_ort_reason": why,
                            "service_vs_triton": None, "service_vs_triton_reason": why,
                            "p99_ms_half_load": None, "p99_ms_half_load_reason": why}
        else:
            report[kind] = teacher_section(run)
    report["quantized"] = _quantized_headline(runs.get("heavy"))
    report["targets"] = targets(report)
    return report


def _target(name: str, value: float | None, goal: float, higher_is_better: bool = True) -> dict[str, Any]:
    met = None if value is None else (value >= goal if higher_is_better else value <= goal)
    return {"target": name, "measured": value, "goal": goal, "met": met}


def targets(report: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Each target of the performance issue with the measured figure and whether it was met."""
    heavy, light, q = report["heavy"], report["light"], report["quantized"]
    out = [_target("heavy service/ORT at N>=4 (worst N)", heavy.get("service_vs_ort_min_n_ge_4"), 0.95),
           _target("light service/ORT (best N)", light.get("service_vs_ort"), 0.6),
           _target("heavy service/Triton (best N)", heavy.get("service_vs_triton"), 0.9),
           _target("light service/Triton (best N)", light.get("service_vs_triton"), 0.9)]
    for kind, section in (("heavy", heavy), ("light", light)):
        out.append(_target(f"{kind} selection+adaptation+append share of a batch of 128",
                           section.get("selection_adaptation_append_share"), 0.03, higher_is_better=False))
        bound = section.get("p99_bound_ms")
        if bound is not None:
            out.append(_target(f"{kind} p99 at half load (ms, bound 2x(delay+batch))",
                               section.get("p99_ms_half_load"), bound, higher_is_better=False))
    out.append(_target("heavy int8 speedup over fp32", q.get("speedup_vs_fp32"), 1.8))
    out.append(_target("heavy int8 decision agreement", q.get("decision_agreement"), 0.99))
    return out


def write_report(report: Mapping[str, Any], path: Path) -> Path:
    """Write ``report`` as indented JSON (integer keys become strings, as JSON requires)."""
    path.write_text(json.dumps(report, indent=2, default=str) + "\n")
    return path


def table(report: Mapping[str, Any]) -> str:
    """A Markdown table of throughput and latency per teacher and producer count."""
    lines = ["| teacher | producers | raw ORT (best batch) | service | service / ORT | raw Triton | "
             "service over Triton | over Triton / raw |", "|---|---|---|---|---|---|---|---|"]

    def cell(w: Mapping[str, Any] | None) -> str:
        if not w:
            return "-"
        batch = f", batch {w['effective_batch']}" if w.get("effective_batch") else ""
        return f"{w['samples_per_s']:.0f}/s, p50 {w['p50_ms']:.1f} ms, p99 {w['p99_ms']:.1f} ms{batch}"

    def ratios(s: Mapping[str, Any], n: Any) -> str:
        """The median repeat's ratio, and every repeat's in the order run where there were several."""
        repeats = (s.get("service_vs_ort_repeats") or {}).get(n) or []
        head = str(s["service_vs_ort_by_producers"].get(n))
        return head + (f" (repeats {', '.join(map(str, repeats))})" if len(repeats) > 1 else "")

    for kind in ("light", "heavy"):
        s = report[kind]
        for n in sorted(s.get("service") or {}, key=int):
            lines.append(f"| {kind} ({s['teacher']}) | {n} | {cell(s['ort_after_service'].get(n))} | "
                         f"{cell(s['service'][n])} | {ratios(s, n)} | "
                         f"{cell((s.get('raw_triton') or {}).get(n))} | {cell((s.get('service_triton') or {}).get(n))} | "
                         f"{(s.get('service_vs_triton_by_producers') or {}).get(n, '-')} |")
        piped = s.get("service_pipelined")
        if piped:
            lines.append(f"| {kind} ({s['teacher']}) | {piped['producers']}, {piped['in_flight']} requests in "
                         f"flight each | {piped['ort_samples_per_s']:.0f}/s | {cell(piped)} | "
                         f"{s['service_vs_ort_pipelined']} | - | - | - |")
    return "\n".join(lines)


def plot(report: Mapping[str, Any], path: Path) -> Path | None:
    """Throughput and p99 latency against producers, per teacher; None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import matplotlib.ticker
    except ImportError:
        return None
    kinds = [k for k in ("light", "heavy") if report[k].get("service")]
    if not kinds:
        return None
    fig, axes = plt.subplots(2, len(kinds), figsize=(5.5 * len(kinds), 7), squeeze=False)
    series = (("service", "service (embedded ORT)", "o-"), ("service_triton", "service over Triton", "s-"),
              ("raw_triton", "raw tritonclient", "^--"))
    for col, kind in enumerate(kinds):
        s = report[kind]
        for key, label, style in series:
            windows = s.get(key) or {}
            ns = sorted(windows, key=int)
            if not ns:
                continue
            axes[0][col].plot([int(n) for n in ns], [windows[n]["samples_per_s"] for n in ns], style, label=label)
            axes[1][col].plot([int(n) for n in ns], [windows[n]["p99_ms"] for n in ns], style, label=label)
        beside = s.get("ort_after_service") or {}
        if beside:
            ns = sorted(beside, key=int)
            axes[0][col].plot([int(n) for n in ns], [beside[n]["samples_per_s"] for n in ns], "x:", color="gray",
                              label=f"raw ORT in-process, {s['ort'].get('layout', '')} at batch "
                                    f"{s['ort']['best_batch']}")
        piped = s.get("service_pipelined")
        if piped:
            axes[0][col].plot([piped["producers"]], [piped["samples_per_s"]], "*", markersize=10,
                              label=f"service, {piped['in_flight']} requests in flight per producer")
            axes[1][col].plot([piped["producers"]], [piped["p99_ms"]], "*", markersize=10)
        axes[0][col].set_title(f"{kind}: {s['teacher']}, {s['request_samples']} samples/request")
        axes[0][col].set_ylabel("samples/s")
        axes[1][col].set_ylabel("p99 latency (ms)")
        for row in (0, 1):
            axes[row][col].set_xscale("log", base=2)
            axes[row][col].set_xticks(report["setup"].get("producers") or [1, 4, 16])
            axes[row][col].xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
            axes[row][col].set_xlabel("producers")
            axes[row][col].set_ylim(bottom=0)
            axes[row][col].grid(alpha=0.3)
        axes[0][col].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path

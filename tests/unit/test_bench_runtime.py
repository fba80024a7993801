"""The raw-runtime harness (``benchmarks/bench_runtime.py``): a layout of several workers runs
them free, each on its own batches, as the service's ``inference_workers`` do; a slow worker
does not hold a fast one back (a lockstep harness understated raw ONNX Runtime's limit)."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

pytest.importorskip("psutil")  # the harness needs it (the [bench] extra); skip before importing it

from pseudostream.benchmarks.bench_runtime import _Workers, ort_runner, run_for  # noqa: E402


def test_workers_run_free_and_every_call_is_counted():
    calls: dict[str, int] = {}
    lock = threading.Lock()

    def run(x: np.ndarray) -> None:
        name = threading.current_thread().name
        with lock:
            calls[name] = calls.get(name, 0) + 1
        time.sleep(0.03 if name == "raw-ort_0" else 0.003)  # the first worker is ten times slower

    x = np.zeros((8, 1), np.float32)
    result = run_for(_Workers(run, 2), x, seconds=0.6)
    workers = {name: n for name, n in calls.items() if name.startswith("raw-ort")}
    assert result["workers"] == 2 and result["batch"] == 8 and sorted(workers) == ["raw-ort_0", "raw-ort_1"]
    # Free: the fast worker makes several times the slow one's calls; in lockstep they would match.
    assert workers["raw-ort_1"] >= 4 * workers["raw-ort_0"]
    # Every worker call counts (the warm-up calls, on this thread, do not).
    assert result["samples_per_s"] * 0.6 == pytest.approx(sum(workers.values()) * 8, rel=0.1)


def test_ort_runner_with_workers_infers_each_batch_whole(teacher_dir):
    import onnxruntime as ort

    path = str(teacher_dir / "model.onnx")
    x = np.random.default_rng(0).random((5, 1, 8, 8), dtype=np.float32)
    want = ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(None, {"input": x})
    got = ort_runner(path, threads=1, workers=2)(x)
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    result = run_for(ort_runner(path, threads=1, workers=2), x, seconds=0.2)
    assert result["workers"] == 2 and result["samples_per_s"] > 0

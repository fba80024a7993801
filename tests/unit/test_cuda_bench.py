"""The CUDA bench: without CUDA it says why and runs nothing; its windows and table run end to
end (here on the CPU provider standing in for CUDA, the one thing a machine without a GPU lacks)."""

from __future__ import annotations

import json

import onnxruntime as ort
import pytest

from pseudostream.benchmarks import cuda_bench

pytestmark = pytest.mark.integration


@pytest.mark.skipif("CUDAExecutionProvider" in ort.get_available_providers(), reason="CUDA is here")
def test_without_cuda_it_says_what_to_install(capsys, tmp_path):
    out = tmp_path / "cuda-report.json"
    assert cuda_bench.main(["--out", str(out)]) == {"skipped": cuda_bench.cuda_unavailable()}
    assert "make gpu" in capsys.readouterr().out and not out.exists()


def test_windows_and_table_on_a_stand_in_provider(monkeypatch, tmp_path, teacher_dir, capsys):
    monkeypatch.setattr(cuda_bench, "CUDA", "CPUExecutionProvider")
    monkeypatch.setattr(cuda_bench, "cuda_unavailable", lambda: None)
    monkeypatch.setattr(cuda_bench, "build_teachers", lambda: None)
    monkeypatch.setattr(cuda_bench, "TEACHERS", {"light": teacher_dir})
    monkeypatch.setattr(cuda_bench, "VARIANTS", {"no buckets": {"batch_buckets": "off"},
                                                 "buckets": {"batch_buckets": "powers_of_two"}})
    out = tmp_path / "cuda-report.json"
    report = cuda_bench.main(["--seconds", "1", "--producers", "2", "--teachers", "light", "--out", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(report))
    light = report["light"]
    assert light["raw_before"]["best"]["batch"] in (256, 1024) and light["raw_reference"] > 0
    for name in ("no buckets", "buckets"):
        window = light["service"][name]
        assert window["samples_per_s"] > 0 and window["requests"] > 0
        assert window["vs_raw"] == round(window["samples_per_s"] / light["raw_reference"], 4)
        alone = light["backend"][name]
        assert alone["samples_per_s"] > 0 and alone["calls"] >= 1
        assert alone["vs_raw"] == round(alone["samples_per_s"] / light["raw_reference"], 4)
    assert light["backend"]["no buckets"]["buckets"] == []
    assert light["backend"]["buckets"]["buckets"] == [8, 16, 32, 64, 128, 256, 512, 1024]
    printed = capsys.readouterr().out
    assert "| light | service, buckets |" in printed and "| light | raw ORT CUDA (before)" in printed
    assert "| light | backend alone, buckets |" in printed

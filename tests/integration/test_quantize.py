"""Reduced-precision teachers (models/quantize.py, ``pseudostream teacher quantize``).

The int8 teacher must be a valid teacher folder the embedded backend serves; its agreement
figure must be the one recomputed here from both models; the gate must refuse a candidate below
the bar (an impossible bar, and a deliberately broken calibration) with a clear error and write
nothing. The int8 command runs in this process (no torch export involved); the bf16 path
(torch.export) runs the CLI in a child process, like every torch export in the tests
(tests/conftest.py: build_teacher_in_child).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from typer.testing import CliRunner

from pseudostream.clients.cli_admin import teacher_app
from pseudostream.clients.client import AsyncLabelerClient
from pseudostream.models.card import TeacherCard
from pseudostream.models.quantize import (AgreementTooLow, Bf16Teacher, agreement, default_splits,
                                          quantize_int8)
from pseudostream.server.app import LabelingServer

pytestmark = pytest.mark.integration


def quantize_here(*args: str):
    return CliRunner().invoke(teacher_app, ["quantize", *args])


def quantize_in_child(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pseudostream.clients.cli", "teacher", "quantize", *args],
                          capture_output=True, text=True, timeout=300)


def logits(model: Path, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    return session.run(["logits"], {"input": x})[0]


@pytest.fixture(scope="module")
def int8_dir(teacher_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("quantized") / "digits-int8"
    done = quantize_here(str(teacher_dir), "--out", str(out))
    assert done.exit_code == 0, done.output
    return out, json.loads(done.stdout)


def test_int8_teacher_is_a_valid_teacher_folder_with_its_agreement(int8_dir, teacher_dir):
    out, summary = int8_dir
    card, fp32 = TeacherCard.load(out), TeacherCard.load(teacher_dir)
    assert (out / "model.onnx").is_file() and summary["precision"] == "int8"
    assert (card.input_shape, card.classes, card.temperature) == (fp32.input_shape, fp32.classes, fp32.temperature)
    assert card.version == "1-int8"
    # QDQ: the graph carries QuantizeLinear/DequantizeLinear pairs, not fp32 weights only.
    import onnx

    ops = {node.op_type for node in onnx.load(str(out / "model.onnx")).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    # The figure is the agreement of both models' FixMatch decisions on the held-out split.
    _, heldout = default_splits(fp32)
    again = agreement(logits(teacher_dir / "model.onnx", heldout), logits(out / "model.onnx", heldout),
                      fp32.temperature, tau=0.95)
    assert summary["agreement"]["joint"] == pytest.approx(again.joint)
    assert summary["agreement"]["samples"] == len(heldout) == 1437  # test + stream splits
    assert again.joint >= 0.99 and card.metrics["int8_agreement"] == pytest.approx(again.joint)
    assert again.reference_classes == 10 and 0.5 < again.reference_accepted < 1.0  # a real test


async def test_the_embedded_backend_serves_the_int8_teacher(int8_dir, make_config, digits, reference_probs):
    out, _ = int8_dir
    config = make_config(teachers={"digits-cnn": {"model_dir": out}})
    x = np.ascontiguousarray(digits.test_x[:64])
    async with LabelingServer(config) as server:
        async with AsyncLabelerClient(server.address) as client:
            result = await client.label("digits", x, ids=[f"q{i}" for i in range(len(x))])
    assert len(result) == 64 and set(result.teacher_version) == {"1-int8"}
    agree = (result.label == reference_probs(x).argmax(axis=1)).mean()
    assert agree >= 0.95, agree


def test_gate_refuses_below_the_bar_and_writes_nothing(teacher_dir, tmp_path):
    done = quantize_here(str(teacher_dir), "--out", str(tmp_path / "never"), "--min-agreement", "1.01")
    assert done.exit_code == 1
    assert "int8 candidate refused" in done.stderr and "101.00% required" in done.stderr
    assert not (tmp_path / "never").exists()


def test_gate_refuses_a_broken_calibration(teacher_dir, tmp_path):
    # Calibrated on all-zero inputs, every activation range collapses: the teacher it makes is wrong.
    with pytest.raises(AgreementTooLow, match="refused") as info:
        quantize_int8(teacher_dir, tmp_path / "broken", calibration=np.zeros((64, 1, 8, 8), np.float32))
    assert info.value.agreement.joint < 0.9
    assert not (tmp_path / "broken").exists() and list(tmp_path.iterdir()) == []  # no staging left


def test_bf16_teacher_through_the_cli(teacher_dir, tmp_path, digits):
    out = tmp_path / "digits-bf16"
    done = quantize_in_child(str(teacher_dir), "--out", str(out), "--precision", "bf16")
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["files"] == ["model.pt2"] and summary["agreement"]["joint"] >= 0.99
    x = np.ascontiguousarray(digits.test_x[:32])
    z = Bf16Teacher(out)(x)
    assert z.shape == (32, 10) and z.dtype == np.float32
    assert (z.argmax(1) == logits(teacher_dir / "model.onnx", x).argmax(1)).mean() >= 0.95

"""The demo teacher end to end: train, calibrate, export, cache (models/demo_teacher.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from pseudostream.models import TeacherCard, build_demo_teacher, load_demo_torch_model
from pseudostream.models.digits import load_digits_splits
from pseudostream.models.export import ExportError, export_onnx
from pseudostream.models.training import predict_outputs


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, TeacherCard]:
    out = tmp_path_factory.mktemp("teacher")
    return out, build_demo_teacher(out, seed=0)


@pytest.fixture(scope="module")
def session(built: tuple[Path, TeacherCard]) -> ort.InferenceSession:
    return ort.InferenceSession(str(built[0] / "model.onnx"), providers=["CPUExecutionProvider"])


def test_files_and_single_file_onnx(built: tuple[Path, TeacherCard]) -> None:
    out, _ = built
    names = sorted(p.name for p in out.iterdir())
    assert names == ["head.npz", "model.onnx", "model.pt", "teacher.json"]
    onnx.checker.check_model(str(out / "model.onnx"), full_check=True)
    model = onnx.load(str(out / "model.onnx"), load_external_data=False)
    assert not any(onnx.external_data_helper.uses_external_data(t) for t in model.graph.initializer)


def test_io_names_and_dynamic_batch(session: ort.InferenceSession) -> None:
    assert [i.name for i in session.get_inputs()] == ["input"]
    assert [o.name for o in session.get_outputs()] == ["logits", "features"]
    assert session.get_inputs()[0].shape[1:] == [1, 8, 8]
    for batch in (1, 64):
        logits, features = session.run(None, {"input": np.zeros((batch, 1, 8, 8), np.float32)})
        assert logits.shape == (batch, 10) and features.shape == (batch, 64)


def test_onnx_matches_torch(built: tuple[Path, TeacherCard], session: ort.InferenceSession) -> None:
    model = load_demo_torch_model(built[0])
    x = load_digits_splits(0).test_x[:37]
    want_logits, want_features = predict_outputs(model, x)
    logits, features = session.run(None, {"input": x})
    np.testing.assert_allclose(logits, want_logits, atol=1e-4)
    np.testing.assert_allclose(features, want_features, atol=1e-4)


def test_card(built: tuple[Path, TeacherCard]) -> None:
    out, card = built
    assert TeacherCard.load(out) == card
    assert TeacherCard.load(out / "teacher.json") == card
    assert card.name == "digits-cnn" and card.version == "1"
    assert card.classes == [str(c) for c in range(10)]
    assert (card.input_name, card.input_shape, card.input_dtype) == ("input", [1, 8, 8], "float32")
    assert (card.logits_name, card.features_name) == ("logits", "features")
    assert 0.05 <= card.temperature <= 20.0
    assert sum(card.source_prior) == pytest.approx(1.0) and len(card.source_prior) == 10
    assert card.fingerprint.startswith("sha256:")


def test_figures(built: tuple[Path, TeacherCard]) -> None:
    m = built[1].metrics
    assert m["accuracy_clean"] > 0.85
    # The shift is a real corruption: the teacher loses accuracy on it.
    assert 0.0 <= m["accuracy_shifted"] < m["accuracy_clean"]
    for key in ("ece_before", "ece_after", "nll_before", "nll_after"):
        assert 0.0 <= m[key] < 1.0, key
    # The temperature minimises the calibration NLL, so it cannot be worse than T = 1.
    assert m["nll_after"] <= m["nll_before"] + 1e-9


def test_head_npz_reproduces_logits(
    built: tuple[Path, TeacherCard], session: ort.InferenceSession
) -> None:
    out, _ = built
    head = np.load(out / "head.npz")
    assert head["weight"].shape == (10, 64) and head["bias"].shape == (10,)
    x = load_digits_splits(0).stream_x[:50]
    logits, features = session.run(None, {"input": x})
    np.testing.assert_allclose(features @ head["weight"].T + head["bias"], logits, atol=1e-4)
    train_features = session.run(["features"], {"input": load_digits_splits(0).train_x})[0]
    np.testing.assert_allclose(head["feature_mean"], train_features.mean(axis=0), atol=1e-4)


def test_cached_call_does_not_rebuild(built: tuple[Path, TeacherCard]) -> None:
    out, card = built
    stamps = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    assert build_demo_teacher(out, seed=0) == card
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == stamps


def test_same_seed_same_figures(built: tuple[Path, TeacherCard], tmp_path: Path) -> None:
    again = build_demo_teacher(tmp_path, seed=0, force=True)
    assert again.fingerprint == built[1].fingerprint
    assert again.metrics == pytest.approx(built[1].metrics, abs=1e-6)
    assert again.temperature == pytest.approx(built[1].temperature, abs=1e-6)


def test_card_missing_field_names_file_and_field(tmp_path: Path) -> None:
    (tmp_path / "teacher.json").write_text(json.dumps({"name": "x", "version": "1"}))
    with pytest.raises(ValueError, match=r"teacher\.json.*classes"):
        TeacherCard.load(tmp_path)


def test_card_wrong_type_names_field(built: tuple[Path, TeacherCard], tmp_path: Path) -> None:
    raw = built[1].to_dict() | {"classes": "0123456789"}
    (tmp_path / "teacher.json").write_text(json.dumps(raw))
    with pytest.raises(ValueError, match=r"teacher\.json.*field classes must be a JSON array"):
        TeacherCard.load(tmp_path / "teacher.json")


def test_public_names_resolve() -> None:
    import pseudostream.models as models

    for name in models.__all__:
        assert getattr(models, name) is not None, name
    assert set(models.__all__) <= set(dir(models))


def test_importing_models_does_not_import_torch() -> None:
    code = "import sys, pseudostream.models; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


class _NotExportable(torch.nn.Module):
    """Random outputs: the exported graph cannot reproduce torch's values."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = x.flatten(1)
        return features + torch.rand_like(features), features


def test_export_parity_failure_raises_and_removes_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.onnx"
    with pytest.raises(ExportError, match="differs from torch"):
        export_onnx(_NotExportable(), torch.zeros(2, 1, 8, 8), path)
    assert not path.exists()

"""Shared fixtures: the demo teacher (built once, cached), digits data, service configs."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
TEACHER_CACHE = REPO / ".cache" / "teachers" / "digits-cnn"


@pytest.fixture(scope="session")
def teacher_dir() -> Path:
    """The demo teacher (model.onnx + teacher.json), built on first use and cached like make demo."""
    from pseudostream.models.demo_teacher import build_demo_teacher

    build_demo_teacher(TEACHER_CACHE)
    return TEACHER_CACHE


@pytest.fixture(scope="session")
def digits() -> Any:
    """The demo's data splits."""
    from pseudostream.models.digits import load_digits_splits

    return load_digits_splits(seed=0)


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


@pytest.fixture
def make_config(tmp_path: Path, teacher_dir: Path) -> Callable[..., Any]:
    """``make_config(**overrides)``: a ServiceConfig on free loopback ports with one topic
    ``digits`` on teacher ``digits-cnn``, its label log in tmp_path; overrides merge deeply."""
    from pseudostream.server.config import ServiceConfig

    def make(**overrides: Any) -> ServiceConfig:
        base = {
            "host": "127.0.0.1", "port": 0, "metrics_port": 0,
            "teachers": {"digits-cnn": {"model_dir": teacher_dir, "max_batch": 64,
                                        "max_delay_ms": 2.0, "intra_op_threads": 1}},
            "topics": {"digits": {"teacher": "digits-cnn"}},
            "label_log": {"path": tmp_path / "labels.db", "visibility_timeout_s": 5.0},
        }
        return ServiceConfig(**_merge(base, overrides))

    return make


def ort_probabilities(teacher_dir: Path, x: np.ndarray) -> np.ndarray:
    """Reference: the teacher's temperature-scaled probabilities, computed directly with ORT."""
    import onnxruntime as ort

    from pseudostream.models.card import TeacherCard

    card = TeacherCard.load(teacher_dir)
    session = ort.InferenceSession(str(teacher_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    z = session.run(["logits"], {"input": x})[0] / card.temperature
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


@pytest.fixture(scope="session")
def reference_probs(teacher_dir: Path) -> Callable[[np.ndarray], np.ndarray]:
    """Direct ONNX Runtime reference for the teacher's calibrated probabilities."""
    return lambda x: ort_probabilities(teacher_dir, x)

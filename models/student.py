"""A trained student checkpoint as a candidate teacher: torch state_dict -> ONNX bytes.

A checkpoint is either a plain ``state_dict`` or a dict ``{"state_dict": ..., "architecture":
"module:Class", "kwargs": {...}}``; the architecture must return ``(logits, features)`` like the
teacher (``models/cnn.py``). The export is the teacher's own (``models/export.py``: dynamic batch,
checker, ORT parity), so a proposed student has the served signature by construction.
"""

from __future__ import annotations

import importlib
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pseudostream.models.export import export_onnx

__all__ = ["DEFAULT_ARCHITECTURE", "save_student", "load_student", "student_to_onnx"]

DEFAULT_ARCHITECTURE = "pseudostream.models.cnn:DigitsCNN"


def save_student(model: nn.Module, path: str | Path, architecture: str = DEFAULT_ARCHITECTURE,
                 **kwargs: Any) -> Path:
    """Write ``model``'s weights with the architecture that rebuilds it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": model.state_dict(), "architecture": architecture, "kwargs": kwargs}, path)
    return path


def load_student(path: str | Path, architecture: str | None = None) -> nn.Module:
    """Rebuild the module a checkpoint holds (``architecture`` overrides the checkpoint's)."""
    blob = torch.load(Path(path), map_location="cpu", weights_only=True)
    if not isinstance(blob, dict):
        raise ValueError(f"{path}: expected a state_dict or a dict with 'state_dict', got {type(blob).__name__}")
    state = blob.get("state_dict", blob)
    spec = architecture or blob.get("architecture") or DEFAULT_ARCHITECTURE
    module_name, _, cls_name = spec.partition(":")
    try:
        cls = getattr(importlib.import_module(module_name), cls_name)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"architecture {spec!r} cannot be imported (want 'module:Class'): {exc}") from None
    model = cls(**blob.get("kwargs", {}))
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise ValueError(f"{path} does not fit architecture {spec}: {str(exc)[:300]}") from None
    return model.eval()


def student_to_onnx(path: str | Path, input_shape: list[int], architecture: str | None = None,
                    input_name: str = "input") -> bytes:
    """The ONNX bytes of the student in ``path`` (a .pt checkpoint), for ``input_shape`` samples."""
    model = load_student(path, architecture)
    with tempfile.TemporaryDirectory() as tmp:
        out = export_onnx(model, torch.zeros(2, *input_shape), Path(tmp) / "model.onnx",
                          input_name=input_name)
        return out.read_bytes()

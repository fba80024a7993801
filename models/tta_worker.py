"""The weight-level adaptation worker: a long-lived child process that owns the shadow torch copy.

The service stays torch-free and its event loop never runs a gradient step or an ONNX export: it
starts ``python -m pseudostream.models.tta_worker`` per adapting topic and speaks one JSON object
per line over stdin/stdout; arrays travel as ``.npy``/``.npz`` files in a folder both can read.
The worker is single-threaded, which also keeps the ONNX exporter away from CPython 3.11.7's
ast race with other threads (gh-106905).

Requests (each answered by ``{"ok": true, ...}`` or ``{"ok": false, "error": "..."}``):

* ``init``: ``teacher_dir``, ``method``, ``params`` -> builds the adapter on the teacher's weights.
* ``adapt``: ``window`` (.npy), ``out`` (.npz) -> one adaptation update on the window; writes the
  frozen source's and the adapted model's probabilities on it (``source``, ``adapted``) for the
  collapse guard. The state before the update is kept for ``undo``.
* ``predict``: ``x``, ``out`` -> the adapted model's probabilities (``probs``).
* ``undo``: back to the state before the last ``adapt``. ``reset``: back to the source weights.
* ``export``: ``out`` (folder) -> the adapted model as a teacher folder (BN folded for serving).
"""

from __future__ import annotations

import copy
import json
import sys
import traceback
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pseudostream.models.card import TeacherCard

__all__ = ["Worker", "main"]


def load_teacher_module(teacher_dir: Path) -> torch.nn.Module:
    """The torch module of a teacher folder's ``model.pt`` (a student checkpoint or the demo's)."""
    blob = torch.load(teacher_dir / "model.pt", map_location="cpu", weights_only=True)
    if isinstance(blob, dict) and "architecture" in blob:
        from pseudostream.models.student import load_student

        return load_student(teacher_dir / "model.pt")
    from pseudostream.models.demo_teacher import load_demo_torch_model

    return load_demo_torch_model(teacher_dir)


class Worker:
    """The state behind the protocol (usable in-process by tests)."""

    def __init__(self) -> None:
        self.adapter: Any = None
        self.source: torch.nn.Module | None = None
        self.card: TeacherCard | None = None
        self._before: dict[str, Any] | None = None

    def init(self, teacher_dir: str, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        from pseudostream.models.tta import build_weight_adapter

        self.card = TeacherCard.load(teacher_dir)
        model = load_teacher_module(Path(teacher_dir)).eval()
        self.source = copy.deepcopy(model).eval().requires_grad_(False)
        self.adapter = build_weight_adapter(method, model, self.card, **(params or {}))
        return {"method": method, "fingerprint": self.adapter.fingerprint()}

    def _source_probs(self, x: np.ndarray) -> np.ndarray:
        assert self.source is not None and self.card is not None
        with torch.no_grad():
            logits = self.source(torch.as_tensor(x, dtype=torch.float32))[0]
        return torch.softmax(logits / self.card.temperature, dim=1).numpy()

    def adapt(self, window: str, out: str) -> dict[str, Any]:
        x = np.load(window)
        self._before = copy.deepcopy(self.adapter.state_dict())
        self.adapter.adapt(x)
        np.savez(out, source=self._source_probs(x), adapted=self.adapter.predict(x))
        return {"windows": int(self.adapter.windows), "fingerprint": self.adapter.fingerprint()}

    def predict(self, x: str, out: str) -> dict[str, Any]:
        np.savez(out, probs=self.adapter.predict(np.load(x)))
        return {"windows": int(self.adapter.windows)}

    def undo(self) -> dict[str, Any]:
        if self._before is not None:
            self.adapter.load_state_dict(self._before)
            self._before = None
        return {"windows": int(self.adapter.windows)}

    def reset(self) -> dict[str, Any]:
        self.adapter.reset()
        self._before = None
        return {"windows": int(self.adapter.windows)}

    def export(self, out: str) -> dict[str, Any]:
        from pseudostream.models.tta import export_adapted

        assert self.card is not None
        card = export_adapted(self.adapter, out, self.card)
        return {"dir": out, "version": card.version, "fingerprint": card.fingerprint}

    def handle(self, request: dict[str, Any]) -> dict[str, Any]:
        op = request.pop("op", None)
        if op not in ("init", "adapt", "predict", "undo", "reset", "export"):
            return {"ok": False, "error": f"unknown op {op!r}"}
        if op != "init" and self.adapter is None:
            return {"ok": False, "error": "send init first"}
        try:
            return {"ok": True, **getattr(self, op)(**request)}
        except Exception as exc:  # reported to the service, which keeps serving the source
            return {"ok": False, "error": f"{type(exc).__name__}: {exc}",
                    "trace": traceback.format_exc(limit=5)}


def main() -> None:
    """Serve requests from stdin until it closes."""
    torch.set_num_threads(1)  # the service's ONNX Runtime threads share these cores
    worker = Worker()
    for line in sys.stdin:
        if line.strip():
            reply = worker.handle(json.loads(line))
            sys.stdout.write(json.dumps(reply) + "\n")
            sys.stdout.flush()


if __name__ == "__main__":
    main()

"""Candidate teachers: signature checks, scoring on an audit slice, and their folders on disk.

A candidate arrives as ONNX bytes. Before anything else it must fit the served teacher: one
input of the served per-sample shape and dtype with a batch dimension, a ``logits`` output with
one column per class and a ``features`` output (the adapters read it). A candidate that passes
the gate is written as a teacher folder (``model.onnx`` + ``teacher.json``) that both backends
publish like any other version.
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from pseudostream.models.card import TeacherCard
from pseudostream.server.backends.base import TeacherMetadata
from pseudostream.server.errors import InvalidInput

__all__ = ["Candidate", "load_candidate", "write_teacher_dir", "base_card"]

_ORT_TYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(double)": "float64",
              "tensor(uint8)": "uint8", "tensor(int8)": "int8", "tensor(int32)": "int32"}
CHECK_BATCH = 3


@dataclasses.dataclass
class Candidate:
    """A parsed candidate: its model, an ONNX Runtime session on it, and its digest."""

    model: onnx.ModelProto
    session: ort.InferenceSession
    digest: str  # sha256 of the bytes, the candidate's id

    def logits(self, x: np.ndarray, batch: int = 256) -> np.ndarray:
        """Raw logits for ``x`` [N, ...], in chunks of ``batch``."""
        name = self.session.get_inputs()[0].name
        parts = [self.session.run(["logits"], {name: x[i:i + batch]})[0] for i in range(0, len(x), batch)]
        return np.concatenate(parts).astype(np.float64)


def load_candidate(data: bytes, teacher: TeacherMetadata) -> Candidate:
    """Parse ``data`` and check it has ``teacher``'s signature; InvalidInput says what differs."""
    if not data:
        raise InvalidInput("propose: model_onnx is empty; send the bytes of the student's model.onnx")
    try:
        model = onnx.load_model_from_string(data)
        onnx.checker.check_model(model)
        if len(model.graph.input) == 1 and model.graph.input[0].name != teacher.input_name:
            _rename_input(model, teacher.input_name)  # Triton's config names the served input
            data = model.SerializeToString()
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnx and ORT raise their own types for a broken model
        raise InvalidInput(f"propose: not a loadable ONNX model: {_tail(exc)}") from None
    want = f"[batch, {', '.join(map(str, teacher.input_shape))}] {teacher.input_dtype.name}"
    inputs = session.get_inputs()
    if len(inputs) != 1:
        raise InvalidInput(f"propose: the candidate has {len(inputs)} inputs; the teacher takes one, {want}")
    shape, dtype = inputs[0].shape, _ORT_TYPES.get(inputs[0].type, inputs[0].type)
    if list(shape[1:]) != list(teacher.input_shape) or dtype != teacher.input_dtype.name:
        raise InvalidInput(f"propose: the candidate's input is {shape} {dtype}; teacher "
                           f"{teacher.name!r} takes {want}")
    outputs = {o.name for o in session.get_outputs()}
    if not {"logits", "features"} <= outputs:
        raise InvalidInput(f"propose: the candidate's outputs are {sorted(outputs)}; it must output "
                           "'logits' [batch, classes] and 'features' [batch, F]")
    probe = np.zeros((CHECK_BATCH, *teacher.input_shape), dtype=teacher.input_dtype)
    try:
        logits, features = session.run(["logits", "features"], {inputs[0].name: probe})
    except Exception as exc:
        raise InvalidInput(f"propose: the candidate fails on a batch of {CHECK_BATCH}: {_tail(exc)}") from None
    if logits.shape != (CHECK_BATCH, teacher.num_classes) or features.ndim != 2 or len(features) != CHECK_BATCH:
        raise InvalidInput(f"propose: for a batch of {CHECK_BATCH} the candidate gives logits "
                           f"{list(logits.shape)} and features {list(features.shape)}; teacher "
                           f"{teacher.name!r} has {teacher.num_classes} classes, so logits must be "
                           f"[{CHECK_BATCH}, {teacher.num_classes}] and features [{CHECK_BATCH}, F]")
    return Candidate(model, session, "sha256:" + hashlib.sha256(data).hexdigest())


def _tail(exc: Exception, limit: int = 300) -> str:
    """The end of an error message (ONNX Runtime puts the useful part after a C++ signature)."""
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else "..." + text[-limit:]


def _rename_input(model: onnx.ModelProto, new: str) -> None:
    old = model.graph.input[0].name
    model.graph.input[0].name = new
    for node in model.graph.node:
        node.input[:] = [new if name == old else name for name in node.input]


def base_card(teacher: TeacherMetadata, model_dir: Path | None) -> TeacherCard:
    """The served version's card (from its folder when known, else rebuilt from its metadata)."""
    if model_dir is not None and (Path(model_dir) / "teacher.json").exists():
        return TeacherCard.load(model_dir)
    prior = [1.0 / teacher.num_classes] * teacher.num_classes
    return TeacherCard(name=teacher.name, version=teacher.version, classes=list(teacher.classes),
                       input_name=teacher.input_name, input_shape=list(teacher.input_shape),
                       source_prior=prior, fingerprint="", task=teacher.task,
                       input_dtype=teacher.input_dtype.name, temperature=teacher.temperature)


def write_teacher_dir(out: Path, model: onnx.ModelProto, card: TeacherCard, temperature: float,
                      metrics: dict[str, float], fingerprint: str) -> Path:
    """Write ``model`` and a card like ``card`` (new temperature, metrics, fingerprint) to ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    onnx.save_model(model, str(out / "model.onnx"))
    new = dataclasses.replace(card, temperature=float(temperature), fingerprint=fingerprint,
                              metrics=dict(metrics))
    new.save(out)
    return out

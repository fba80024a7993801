"""The teacher card: everything the server needs to know about an exported teacher.

A card is a small JSON file (``teacher.json``) written beside the teacher's ``model.onnx``. It names
the ONNX input and outputs, the classes, the fitted temperature, the class prior of the labelled
training split, evaluation figures and a fingerprint of the build recipe (so caches can be checked).

This module must stay free of torch: the server imports it.
"""

from __future__ import annotations

import json
import logging
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

__all__ = ["TeacherCard", "CARD_FILENAME", "MODEL_FILENAME"]

logger = logging.getLogger(__name__)

CARD_FILENAME = "teacher.json"
MODEL_FILENAME = "model.onnx"


_CONTAINER_FIELDS = {"classes": list, "input_shape": list, "source_prior": list, "metrics": dict}


@dataclass
class TeacherCard:
    """Metadata of one exported teacher version (see the module docstring).

    ``input_shape`` is per sample, without the batch dimension. ``temperature`` divides the logits
    before the softmax. ``source_prior`` is the class marginal of the labelled training split, in
    the order of ``classes``.
    """

    name: str
    version: str
    classes: list[str]
    input_name: str
    input_shape: list[int]
    source_prior: list[float]
    fingerprint: str
    task: str = "multiclass"
    input_dtype: str = "float32"
    logits_name: str = "logits"
    features_name: str = "features"
    temperature: float = 1.0
    metrics: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # Normalise JSON values (ints for floats, tuples for lists): equal after a round trip.
        self.classes = [str(c) for c in self.classes]
        self.input_shape = [int(d) for d in self.input_shape]
        self.source_prior = [float(p) for p in self.source_prior]
        self.temperature = float(self.temperature)
        self.metrics = {str(k): float(v) for k, v in self.metrics.items()}
        if not self.temperature > 0:
            raise ValueError(f"TeacherCard.temperature must be positive, got {self.temperature!r}")
        if len(self.source_prior) != len(self.classes):
            raise ValueError(
                f"TeacherCard.source_prior has {len(self.source_prior)} entries "
                f"but there are {len(self.classes)} classes"
            )

    @property
    def num_classes(self) -> int:
        """Number of classes the teacher predicts."""
        return len(self.classes)

    def to_dict(self) -> dict[str, Any]:
        """The card as plain JSON-serialisable values."""
        return asdict(self)

    def save(self, directory: str | Path) -> Path:
        """Write ``teacher.json`` into ``directory`` (beside ``model.onnx``); return its path."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / CARD_FILENAME
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")
        tmp.replace(path)  # atomic: a reader never sees half a card
        logger.debug("wrote teacher card %s", path)
        return path

    @classmethod
    def load(cls, directory_or_json_path: str | Path) -> TeacherCard:
        """Read a card from a directory holding ``teacher.json`` or from the JSON file itself.

        Raises FileNotFoundError if there is no card, and ValueError naming the file and the
        field when a required field is missing, unknown or invalid.
        """
        path = Path(directory_or_json_path)
        if path.is_dir():
            path = path / CARD_FILENAME
        try:
            raw = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: not valid JSON ({exc})") from exc
        if not isinstance(raw, dict):
            raise ValueError(f"{path}: expected a JSON object, got {type(raw).__name__}")
        known = {f.name for f in fields(cls)}
        required = [f.name for f in fields(cls) if f.default is f.default_factory is MISSING]
        missing = [name for name in required if name not in raw]
        if missing:
            raise ValueError(f"{path}: teacher card is missing field(s) {', '.join(missing)}")
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ValueError(f"{path}: teacher card has unknown field(s) {', '.join(unknown)}")
        for name, kind in _CONTAINER_FIELDS.items():
            if name in raw and not isinstance(raw[name], kind):
                raise ValueError(
                    f"{path}: teacher card field {name} must be a JSON "
                    f"{'array' if kind is list else 'object'}, got {raw[name]!r}"
                )
        try:
            return cls(**raw)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{path}: invalid teacher card: {exc}") from exc

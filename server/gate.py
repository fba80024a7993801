"""The audit gate: a candidate teacher is promoted only if it is not worse on the audit slice.

A topic's audit slice holds labelled samples from the stream's own distribution. They stay in
the service: they never enter the label log, so trainers never see them and a student cannot
overfit the gate. A candidate and the served teacher are both scored on the whole slice:

* accuracy of the argmax (temperature-free);
* expected calibration error (15 bins) after refitting each one's temperature on the slice, so
  both are compared at the temperature they would be served with. The promoted version is served
  at its refit temperature (Guo et al. 2017's temperature scaling, ``models/calibration.py``).

The candidate passes if ``accuracy >= current - max_accuracy_drop`` and
``ece <= current + max_ece_increase``; the reason string carries both figures either way. A
negative ``max_accuracy_drop`` demands a gain: a tie then keeps the served teacher, which avoids
churning versions on audit-slice noise.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pseudostream.models.calibration import expected_calibration_error, fit_temperature, scaled_softmax
from pseudostream.server.backends.base import TeacherMetadata
from pseudostream.server.config import AuditConfig
from pseudostream.server.errors import ConfigError

__all__ = ["AuditSlice", "AuditFigures", "score", "passes"]


@dataclass(frozen=True)
class AuditSlice:
    """Inputs [N, *input_shape] in the teacher's dtype, and class indices [N]."""

    x: np.ndarray
    y: np.ndarray

    @classmethod
    def load(cls, config: AuditConfig, teacher: TeacherMetadata, topic: str) -> AuditSlice:
        """Read ``config.path`` and check it fits ``teacher``; ConfigError says what is wrong."""
        where = f"topic {topic!r} audit slice {config.path}"
        try:
            with np.load(Path(config.path)) as data:
                x, y = np.asarray(data["x"]), np.asarray(data["y"])
        except (OSError, KeyError, ValueError) as exc:
            raise ConfigError(f"{where}: cannot read arrays 'x' and 'y' from an .npz: {exc}") from None
        if x.shape[1:] != tuple(teacher.input_shape) or len(x) == 0:
            raise ConfigError(f"{where}: x must be [N>0, {', '.join(map(str, teacher.input_shape))}]"
                              f" for teacher {teacher.name!r}, got {list(x.shape)}")
        if y.shape != (len(x),) or not np.issubdtype(y.dtype, np.integer):
            raise ConfigError(f"{where}: y must be [{len(x)}] integer class indices, got "
                              f"{list(y.shape)} {y.dtype}")
        if y.min() < 0 or y.max() >= teacher.num_classes:
            raise ConfigError(f"{where}: labels must lie in 0..{teacher.num_classes - 1}")
        return cls(np.ascontiguousarray(x, dtype=teacher.input_dtype), y.astype(np.int64))


@dataclass(frozen=True)
class AuditFigures:
    """One teacher's figures on an audit slice."""

    accuracy: float
    ece: float
    temperature: float
    samples: int

    def __str__(self) -> str:
        return f"accuracy {self.accuracy:.4f}, ECE {self.ece:.4f} at T={self.temperature:.3f}"


def score(logits: np.ndarray, labels: np.ndarray) -> AuditFigures:
    """Accuracy, refit temperature and the ECE at that temperature, for raw ``logits``."""
    logits = np.asarray(logits, dtype=np.float64)
    temperature = fit_temperature(logits, labels)
    probs = scaled_softmax(logits, temperature)
    return AuditFigures(accuracy=float((probs.argmax(axis=1) == labels).mean()),
                        ece=expected_calibration_error(probs, labels),
                        temperature=float(temperature), samples=len(labels))


def passes(candidate: AuditFigures, current: AuditFigures, config: AuditConfig) -> tuple[bool, str]:
    """(promote?, the reason with both teachers' figures)."""
    problems = []
    if candidate.accuracy < current.accuracy - config.max_accuracy_drop - 1e-12:
        problems.append(f"accuracy {candidate.accuracy:.4f} < served {current.accuracy:.4f} - "
                        f"{config.max_accuracy_drop}")
    if candidate.ece > current.ece + config.max_ece_increase + 1e-12:
        problems.append(f"ECE {candidate.ece:.4f} > served {current.ece:.4f} + {config.max_ece_increase}")
    figures = f"candidate: {candidate}; served: {current} (on {candidate.samples} audit samples)"
    if problems:
        return False, "rejected: " + "; ".join(problems) + f". {figures}"
    return True, f"promoted: {figures}"

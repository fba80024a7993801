"""The adaptation interface: an adapter turns a batch of teacher outputs into adapted probabilities.

Adapters correct the teacher's output on a shifted stream without touching its weights (label
shift by EM, T3A prototypes, LAME, feature shift). Each owns its state, runs on batched numpy,
checkpoints through ``state_dict``/``load_state_dict`` (JSON-safe values) and returns to its
construction-time snapshot with ``reset()`` (as ``classification/methods/base.py`` in
mariodoebler/test-time-adaptation does for model parameters).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from pseudostream.server.errors import ConfigError, InvalidInput
from pseudostream.server.registry import Registry

__all__ = ["AdapterInput", "OutputAdapter", "ADAPTERS"]


@dataclass(frozen=True)
class AdapterInput:
    """What an adapter sees for one batch.

    probs:    [B, C] float, calibrated (temperature-scaled) softmax probabilities.
    logits:   [B, C] float, the matching logits, or None.
    features: [B, F] float, the penultimate features the teacher's linear head reads, or None.
    """

    probs: np.ndarray
    logits: np.ndarray | None = None
    features: np.ndarray | None = None


class OutputAdapter(ABC):
    """A test-time output adapter: ``adapt`` returns [B, C] probabilities whose rows sum to 1.

    Subclasses set ``name`` (the config name), implement ``adapt``, ``state_dict`` and
    ``load_state_dict``, and call ``_snapshot()`` at the end of ``__init__`` so that ``reset``
    restores the initial state.
    """

    name: ClassVar[str]
    needs_features: ClassVar[bool] = False

    def __init__(self, num_classes: int) -> None:
        if num_classes < 2:
            raise ConfigError(f"{self.name} adapter: num_classes must be >= 2, got {num_classes}")
        self.num_classes = int(num_classes)
        self._initial: dict[str, Any] = {}

    def _snapshot(self) -> None:
        self._initial = self.state_dict()

    @abstractmethod
    def adapt(self, batch: AdapterInput) -> np.ndarray:
        """Adapted probabilities for ``batch`` [B, C] float64, advancing the adapter's state."""

    def reset(self) -> None:
        """Forget everything adapted since construction (e.g. on a domain change or collapse)."""
        self.load_state_dict(self._initial)

    @abstractmethod
    def state_dict(self) -> dict[str, Any]:
        """The adapter's state as JSON-safe lists and floats."""

    @abstractmethod
    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what ``state_dict`` returned."""

    def _probs(self, batch: AdapterInput) -> np.ndarray:
        """The batch's probabilities as [B, C] float64; InvalidInput if the shape is wrong."""
        p = np.asarray(batch.probs, dtype=np.float64)
        if p.ndim != 2 or p.shape[1] != self.num_classes:
            raise InvalidInput(f"{self.name} adapter: probs must be [B, {self.num_classes}], "
                               f"got shape {p.shape}")
        return p

    def _features(self, batch: AdapterInput, dim: int) -> np.ndarray:
        """The batch's features as [B, dim] float64; InvalidInput if missing or misshapen."""
        if batch.features is None:
            raise InvalidInput(f"{self.name} adapter needs features: send the teacher's "
                               "penultimate features with the batch")
        z = np.asarray(batch.features, dtype=np.float64)
        if z.ndim != 2 or z.shape[1] != dim or z.shape[0] != np.shape(batch.probs)[0]:
            raise InvalidInput(f"{self.name} adapter: features must be [B, {dim}] with B as in "
                               f"probs, got shape {z.shape}")
        return z


def softmax(x: np.ndarray) -> np.ndarray:
    """Row-wise softmax, stable."""
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def entropy(p: np.ndarray) -> np.ndarray:
    """Row-wise Shannon entropy (nats)."""
    return -(p * np.log(np.clip(p, 1e-30, None))).sum(axis=1)


def l2_normalize(x: np.ndarray, axis: int = 1) -> np.ndarray:
    """Unit L2 norm along ``axis`` (as torch.nn.functional.normalize, eps 1e-12)."""
    return x / np.maximum(np.linalg.norm(x, axis=axis, keepdims=True), 1e-12)


def linear_head(head_weight: Any, head_bias: Any, owner: str) -> tuple[np.ndarray, np.ndarray]:
    """A validated linear head: weight [C, F] and bias [C] (zeros if None), float64."""
    w = np.asarray(head_weight, dtype=np.float64)
    if w.ndim != 2:
        raise ConfigError(f"{owner} adapter: head_weight must be [C, F], got shape {w.shape}")
    b = np.zeros(w.shape[0]) if head_bias is None else np.asarray(head_bias, dtype=np.float64)
    if b.shape != (w.shape[0],):
        raise ConfigError(f"{owner} adapter: head_bias must be [{w.shape[0]}], got {b.shape}")
    return w, b


ADAPTERS: Registry[OutputAdapter] = Registry("adapter")

"""A topic's output adapters, run in order on each batch before selection.

Only samples from producers the topic trusts move an adapter's state (test-time poisoning is a
known attack): untrusted rows are adapted with the state frozen (saved and restored around the
call). Each label records the adapter state it came from, as a build suffix on the teacher
version: ``2+prior_em.17`` is version 2 with prior_em after 17 state updates.

Adapters that need the teacher's head (t3a, feature_shift) read ``head.npz`` (weight, bias,
feature_mean) beside the model; prior_em's source prior comes from the teacher card.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from pseudostream.server.adaptation import ADAPTERS, AdapterInput, OutputAdapter
from pseudostream.server.errors import ConfigError

__all__ = ["AdapterChain"]


class AdapterChain:
    """Build with ``(name, params)`` pairs; ``apply`` returns (probabilities, state tag)."""

    def __init__(self, specs: Sequence[tuple[str, dict[str, Any]]], num_classes: int,
                 model_dir: Path | None = None, source_prior: Sequence[float] | None = None) -> None:
        self.adapters: list[OutputAdapter] = []
        self.updates = 0
        for name, params in specs:
            cls = ADAPTERS.get(name)
            kwargs = dict(params)
            if name in ("t3a", "feature_shift"):
                head = _head(model_dir, name)
                kwargs.setdefault("head_weight", head["weight"])
                kwargs.setdefault("head_bias", head["bias"])
                if name == "feature_shift":
                    kwargs.setdefault("source_mean", head["feature_mean"])
            if name == "prior_em" and source_prior is not None:
                kwargs.setdefault("source_prior", list(source_prior))
            try:
                self.adapters.append(cls(num_classes, **kwargs))
            except TypeError as exc:
                raise ConfigError(f"adapter {name!r}: bad params {sorted(params)}: {exc}") from None

    def tag(self) -> str:
        return "+".join(f"{a.name}.{self.updates}" for a in self.adapters)

    def apply(self, probs: np.ndarray, logits: np.ndarray | None, features: np.ndarray | None,
              trusted: np.ndarray) -> tuple[np.ndarray, str]:
        """Adapted probabilities for the batch, and the tag of the state that produced them."""
        out = np.asarray(probs, dtype=np.float64).copy()
        trusted = np.asarray(trusted, bool)
        tag = self.tag()
        if trusted.any():  # these move the state; the tag names the state they were labeled with
            out[trusted] = self._run(out[trusted], logits, features, trusted)
            self.updates += 1
            tag = self.tag()
        if (~trusted).any():
            saved = [a.state_dict() for a in self.adapters]
            try:
                out[~trusted] = self._run(out[~trusted], logits, features, ~trusted)
            finally:
                for adapter, state in zip(self.adapters, saved):
                    adapter.load_state_dict(state)
        return out, tag

    def _run(self, probs: np.ndarray, logits: np.ndarray | None, features: np.ndarray | None,
             rows: np.ndarray) -> np.ndarray:
        for adapter in self.adapters:
            probs = adapter.adapt(AdapterInput(
                probs=probs, logits=None if logits is None else logits[rows],
                features=None if features is None else features[rows]))
        return probs

    def state_dict(self) -> dict[str, Any]:
        return {"updates": self.updates, "adapters": [a.state_dict() for a in self.adapters]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.updates = int(state.get("updates", 0))
        for adapter, s in zip(self.adapters, state.get("adapters", [])):
            adapter.load_state_dict(s)


def _head(model_dir: Path | None, name: str) -> dict[str, np.ndarray]:
    path = None if model_dir is None else Path(model_dir) / "head.npz"
    if path is None or not path.exists():
        raise ConfigError(f"adapter {name!r} needs the teacher's head weights: head.npz (weight, "
                          f"bias, feature_mean) beside model.onnx, not found in {model_dir}")
    with np.load(path) as data:
        return {k: np.asarray(data[k]) for k in data.files}

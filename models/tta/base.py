"""The weight-adapter interface: test-time adaptation of a shadow torch copy of the teacher.

A ``WeightAdapter`` owns a deep copy of the teacher (``model``; the caller's module is never
touched). ``adapt(window)`` runs the method's optimisation steps on one window of inputs, then
sets every BatchNorm layer's running statistics to the adapted statistics of that window
(``set_bn_stats``: Schneider et al.'s mix of source and window statistics with prior strength
``bn_prior``), so the module in eval mode is batch-independent and is what ``predict`` and
``export_adapted`` serve. ``reset()`` restores the construction-time snapshot (weights, running
statistics, optimiser and method state), as ``classification/methods/base.py`` of
mariodoebler/test-time-adaptation does (``configure_model``, ``collect_params``, ``reset``).

Why the running statistics are recomputed after the steps: TENT, EATA and SAR train the BN affine
parameters in train mode, normalising with the batch's own statistics (as in their papers). A
served model must not depend on which samples share a batch, so the exported module normalises
with fixed statistics: those of the last adaptation window under the adapted weights, mixed with
the source statistics (``bn_prior`` = 0 gives exactly the window's statistics the steps used).

Adapters are not thread-safe: drive one from one thread (or one asyncio task via an executor).
"""

from __future__ import annotations

import copy
import hashlib
import math
from abc import ABC, abstractmethod
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from pseudostream.server.errors import ConfigError, InvalidInput
from pseudostream.server.registry import Registry

__all__ = ["WeightAdapter", "WEIGHT_ADAPTERS", "bn_layers", "bn_source_stats", "set_bn_stats",
           "softmax_entropy", "make_optimizer", "entropy_margin"]

_BN = nn.modules.batchnorm._BatchNorm


def bn_layers(model: nn.Module) -> list[tuple[str, _BN]]:
    """The model's BatchNorm layers (with running statistics), in registration order."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, _BN) and m.running_mean is not None]


def bn_source_stats(model: nn.Module) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """A copy of every BN layer's (running_mean, running_var)."""
    return {n: (m.running_mean.detach().clone(), m.running_var.detach().clone())
            for n, m in bn_layers(model)}


@torch.no_grad()
def set_bn_stats(model: nn.Module, x: torch.Tensor,
                 source: dict[str, tuple[torch.Tensor, torch.Tensor]], prior: float) -> float:
    """Set each BN layer's running statistics to lam * source + (1 - lam) * window statistics,
    lam = prior / (prior + n), n = len(x) (Schneider et al. 2020, eq. 3; ``bn.py`` of
    bethgelab/robustness mixes the mean and the unbiased variance the same way). One eval-mode
    forward: each layer's window statistics are taken on its input as produced by the layers
    before it, already normalised with their mixed statistics. Returns lam."""
    n = int(x.shape[0])
    lam = float(prior) / (float(prior) + n)
    hooks = []

    def mix(name: str):
        def pre_hook(module: _BN, args: tuple[torch.Tensor, ...]) -> None:
            inp = args[0]
            dims = [0, *range(2, inp.dim())]
            mean, var = inp.mean(dims), inp.var(dims, unbiased=inp.numel() > inp.shape[1])
            mu_s, var_s = source[name]
            module.running_mean.copy_(lam * mu_s + (1 - lam) * mean)
            module.running_var.copy_(lam * var_s + (1 - lam) * var)
        return pre_hook

    for name, module in bn_layers(model):
        hooks.append(module.register_forward_pre_hook(mix(name)))
    was_training = model.training
    model.eval()
    try:
        model(x)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return lam


def softmax_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Per-sample entropy (nats) of softmax(logits) [B]."""
    return -(logits.softmax(1) * logits.log_softmax(1)).sum(1)


def entropy_margin(num_classes: int, factor: float = 0.4) -> float:
    """EATA's and SAR's entropy threshold E0 = factor * ln C."""
    return factor * math.log(num_classes)


def make_optimizer(params: list[nn.Parameter], optimizer: str, lr: float,
                   momentum: float = 0.9) -> torch.optim.Optimizer:
    """Adam(lr) or SGD(lr, momentum), the two TENT uses (CIFAR: Adam 1e-3; ImageNet: SGD)."""
    if optimizer == "adam":
        return torch.optim.Adam(params, lr=lr, betas=(0.9, 0.999))
    if optimizer == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum)
    raise ConfigError(f"optimizer must be 'adam' or 'sgd', got {optimizer!r}")


class WeightAdapter(ABC):
    """Adapts a copy of a classifier returning ``(logits, ...)`` or logits on windows of inputs.

    ``temperature``: the teacher card's, used by ``predict``. ``bn_prior``: N in the statistics
    mix (``set_bn_stats``); 0 serves the last window's own statistics. ``steps``: optimisation
    steps per window. Subclasses set ``name``, implement ``_step`` (one step on a window; train
    mode, batch statistics) and ``_method_state``/``_load_method_state`` for their own state.
    """

    name: ClassVar[str]

    def __init__(self, model: nn.Module, *, temperature: float = 1.0, bn_prior: float = 16.0,
                 steps: int = 1) -> None:
        if temperature <= 0 or bn_prior < 0 or steps < 0:
            raise ConfigError(f"{self.name} adapter: temperature > 0, bn_prior >= 0, steps >= 0")
        self.model = copy.deepcopy(model).eval()
        if not bn_layers(self.model):
            raise ConfigError(f"{self.name} adapter needs a model with BatchNorm layers")
        self.temperature, self.bn_prior, self.steps = float(temperature), float(bn_prior), int(steps)
        self.source_stats = bn_source_stats(self.model)
        self.updates = 0  # optimisation steps since the last reset
        self.windows = 0  # windows adapted since the last reset
        self.optimizer: torch.optim.Optimizer | None = None

    def _snapshot(self) -> None:
        """Call at the end of a subclass's ``__init__``: what ``reset`` restores."""
        self._initial = (copy.deepcopy(self.model.state_dict()),
                         None if self.optimizer is None else copy.deepcopy(self.optimizer.state_dict()),
                         copy.deepcopy(self._method_state()))

    def configure_model(self) -> list[nn.Parameter]:
        """Freeze everything but the BN affine parameters (TENT's ``configure_model`` and
        ``collect_params``); return those parameters."""
        self.model.requires_grad_(False)
        params = []
        for _, bn in bn_layers(self.model):
            bn.momentum = 0.0  # train-mode forwards must not move the served running statistics
            for p in (bn.weight, bn.bias):
                if p is not None:
                    p.requires_grad_(True)
                    params.append(p)
        return params

    def adapt(self, window: np.ndarray) -> None:
        """Run ``steps`` steps on ``window`` [B, ...], then set the served BN statistics."""
        x = self._tensor(window)
        if self.steps:
            self.model.train()
            with torch.enable_grad():
                for _ in range(self.steps):
                    self._step(x)
            self.model.eval()
        set_bn_stats(self.model, x, self.source_stats, self.bn_prior)
        self.windows += 1

    @abstractmethod
    def _step(self, x: torch.Tensor) -> None:
        """One optimisation step on ``x`` (the model is in train mode); count it in ``updates``."""

    @torch.no_grad()
    def logits(self, x: np.ndarray) -> np.ndarray:
        """The served (eval-mode) model's logits [B, C] float32 on ``x``."""
        self.model.eval()
        out = self.model(self._tensor(x))
        return (out[0] if isinstance(out, (tuple, list)) else out).numpy()

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Temperature-scaled probabilities [B, C] float64 of the served model on ``x``."""
        z = self.logits(x).astype(np.float64) / self.temperature
        e = np.exp(z - z.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    def reset(self) -> None:
        """Restore the construction-time weights, statistics, optimiser and method state."""
        weights, opt, method = self._initial
        self.model.load_state_dict(weights)
        if self.optimizer is not None and opt is not None:
            self.optimizer.load_state_dict(copy.deepcopy(opt))
        self._load_method_state(copy.deepcopy(method))
        self.updates = self.windows = 0

    def state_dict(self) -> dict[str, Any]:
        """Everything ``load_state_dict`` needs to resume: model, optimiser, method state."""
        return {"model": copy.deepcopy(self.model.state_dict()),
                "optimizer": None if self.optimizer is None else copy.deepcopy(self.optimizer.state_dict()),
                "method": copy.deepcopy(self._method_state()),
                "updates": self.updates, "windows": self.windows}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what ``state_dict`` returned (e.g. the last version the guard passed)."""
        self.model.load_state_dict(state["model"])
        if self.optimizer is not None and state["optimizer"] is not None:
            self.optimizer.load_state_dict(copy.deepcopy(state["optimizer"]))
        self._load_method_state(copy.deepcopy(state["method"]))
        self.updates, self.windows = int(state["updates"]), int(state["windows"])

    def fingerprint(self) -> str:
        """``sha256:`` of the served weights and statistics: equal fingerprints serve alike."""
        digest = hashlib.sha256()
        for key, value in sorted(self.model.state_dict().items()):
            digest.update(key.encode())
            digest.update(value.detach().cpu().contiguous().numpy().tobytes())
        return "sha256:" + digest.hexdigest()

    def _method_state(self) -> dict[str, Any]:
        return {}

    def _load_method_state(self, state: dict[str, Any]) -> None:
        pass

    def _tensor(self, x: np.ndarray) -> torch.Tensor:
        arr = np.asarray(x, dtype=np.float32)
        if arr.ndim < 2 or arr.shape[0] == 0:
            raise InvalidInput(f"{self.name} adapter: expected a non-empty batch [B, ...], "
                               f"got shape {arr.shape}")
        return torch.from_numpy(np.ascontiguousarray(arr))

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(x)
        return out[0] if isinstance(out, (tuple, list)) else out


WEIGHT_ADAPTERS: Registry[WeightAdapter] = Registry("weight adapter")

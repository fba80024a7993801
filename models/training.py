"""Generic, deterministic training and inference helpers for small image classifiers.

Used to train the demo teacher and, in the demos, the students that learn from pseudo-labels. A
model may return logits or a tuple whose first element is the logits (``DigitsCNN`` returns
``(logits, features)``). Nothing here leaves torch's global state changed (global RNG, thread
count: ``num_threads`` applies only while training and is restored afterwards).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "train_classifier",
    "evaluate",
    "predict_logits",
    "predict_outputs",
    "random_shift",
    "torch_threads",
]

logger = logging.getLogger(__name__)

_INFERENCE_BATCH = 1024


def _logits_of(output: torch.Tensor | tuple[torch.Tensor, ...]) -> torch.Tensor:
    return output[0] if isinstance(output, (tuple, list)) else output


@contextlib.contextmanager
def torch_threads(num_threads: int | None) -> Iterator[None]:
    """Run the block with ``num_threads`` intra-op threads (None: leave as is), then restore.

    Tiny batches train faster on one thread, and far faster when other processes share the
    cores (spinning worker threads then stall each other); one thread also makes results
    independent of the machine's core count. The setting is process-wide while the block runs.
    """
    if num_threads is None:
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(num_threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def random_shift(x: torch.Tensor, generator: torch.Generator, max_shift: int = 1) -> torch.Tensor:
    """Translate each image [B, C, H, W] by its own random (dy, dx) in [-max_shift, max_shift],
    filling with zeros (the digits background)."""
    b, _, h, w = x.shape
    p = max_shift
    padded = F.pad(x, (p, p, p, p))
    dy = torch.randint(0, 2 * p + 1, (b,), generator=generator)
    dx = torch.randint(0, 2 * p + 1, (b,), generator=generator)
    rows = (dy[:, None] + torch.arange(h)[None, :])[:, :, None]  # [B, H, 1]
    cols = (dx[:, None] + torch.arange(w)[None, :])[:, None, :]  # [B, 1, W]
    batch = torch.arange(b)[:, None, None]
    # Advanced indexing over (batch, row, col) with the channel slice in between puts the
    # channel axis last: [B, H, W, C].
    return padded[batch, :, rows, cols].permute(0, 3, 1, 2).contiguous()


def train_classifier(
    model: nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    *,
    epochs: int,
    batch_size: int = 64,
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    weight: np.ndarray | None = None,
    seed: int = 0,
    augment: bool = False,
    num_threads: int | None = None,
) -> nn.Module:
    """Train ``model`` in place with Adam on cross-entropy and return it (in eval mode).

    ``y`` is int64 class indices [N] or soft targets [N, C]. ``weight`` [N] weights each sample's
    loss; the batch loss is ``mean(weight * ce)`` (a zero weight drops a sample, as a pseudo-label
    mask does). Shuffling and augmentation (random +-1 pixel shifts) draw from a generator seeded
    with ``seed``; seed the model's initialisation yourself. ``num_threads`` sets torch's
    intra-op threads for the duration of training (see ``torch_threads``).
    """
    xt = torch.as_tensor(np.asarray(x, dtype=np.float32))
    yt = torch.as_tensor(np.asarray(y))
    if yt.dtype.is_floating_point:
        yt = yt.float()
    else:
        yt = yt.long()
    wt = None if weight is None else torch.as_tensor(np.asarray(weight, dtype=np.float32))
    n = xt.shape[0]
    if yt.shape[0] != n or (wt is not None and wt.shape[0] != n):
        raise ValueError(
            f"x, y and weight must have the same length, got {n}, {yt.shape[0]}, "
            f"{None if wt is None else wt.shape[0]}"
        )
    if n == 0:
        raise ValueError("train_classifier needs at least one sample")
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    with torch_threads(num_threads):
        _run_epochs(model, optimizer, xt, yt, wt, epochs, batch_size, generator, augment)
    model.eval()
    return model


def _run_epochs(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    xt: torch.Tensor,
    yt: torch.Tensor,
    wt: torch.Tensor | None,
    epochs: int,
    batch_size: int,
    generator: torch.Generator,
    augment: bool,
) -> None:
    n = xt.shape[0]
    skip_singletons = n >= 2 and _has_batchnorm(model)  # BatchNorm cannot train on one sample
    model.train()
    for epoch in range(epochs):
        order = torch.randperm(n, generator=generator)
        total = 0.0
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            if skip_singletons and idx.numel() < 2:
                continue
            xb = xt[idx]
            if augment:
                xb = random_shift(xb, generator)
            ce = F.cross_entropy(_logits_of(model(xb)), yt[idx], reduction="none")
            loss = (ce * wt[idx]).mean() if wt is not None else ce.mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * idx.numel()
        logger.debug("epoch %d/%d: loss %.4f", epoch + 1, epochs, total / n)


def _has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


@torch.no_grad()
def predict_outputs(model: nn.Module, x: np.ndarray) -> tuple[np.ndarray, ...]:
    """Run ``model`` in eval mode without gradients; return every output as numpy arrays.

    The model's training/eval mode is restored afterwards.
    """
    was_training = model.training
    model.eval()
    try:
        xt = torch.as_tensor(np.asarray(x, dtype=np.float32))
        chunks: list[tuple[torch.Tensor, ...]] = []
        for start in range(0, xt.shape[0], _INFERENCE_BATCH):
            out = model(xt[start : start + _INFERENCE_BATCH])
            chunks.append(tuple(out) if isinstance(out, (tuple, list)) else (out,))
        if not chunks:
            raise ValueError("predict_outputs needs at least one sample")
        return tuple(torch.cat(parts).numpy() for parts in zip(*chunks))
    finally:
        model.train(was_training)


def predict_logits(model: nn.Module, x: np.ndarray) -> np.ndarray:
    """Logits [N, C] (float32) of ``model`` on ``x``, in eval mode and without gradients."""
    return predict_outputs(model, x)[0]


def evaluate(model: nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    """Top-1 accuracy of ``model`` on ``(x, y)``."""
    logits = predict_logits(model, x)
    return float(np.mean(logits.argmax(axis=1) == np.asarray(y)))

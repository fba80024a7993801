"""Test-time-augmented views of a batch, for policies that judge agreement across views (UPS)."""

from __future__ import annotations

import numpy as np

from pseudostream.server.config import ViewsConfig

__all__ = ["AugmentedViews"]


class AugmentedViews:
    """Makes K-1 augmented copies of a batch; view 0 (the batch itself) is not repeated."""

    def __init__(self, config: ViewsConfig) -> None:
        self.config = config
        self._rng = np.random.default_rng(config.seed)

    @property
    def count(self) -> int:
        return self.config.count

    def augment(self, x: np.ndarray) -> np.ndarray:
        """[(K-1) * B, ...] augmented copies of ``x`` [B, ...], view-major."""
        k, shift = self.config.count - 1, self.config.max_shift
        out = np.repeat(x[None], k, axis=0)
        if shift and x.ndim >= 3:
            for v in range(k):  # one shift per view: K-1 array ops, not one per sample
                dy, dx = self._rng.integers(-shift, shift + 1, size=2)
                out[v] = _shifted(x, int(dy), int(dx))
        if self.config.noise_std:
            out += self._rng.normal(0.0, self.config.noise_std, out.shape).astype(x.dtype)
        return out.reshape(k * x.shape[0], *x.shape[1:])


def _shifted(x: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """``x`` moved by (dy, dx) along its last two axes, zero-filled."""
    out = np.zeros_like(x)
    h, w = x.shape[-2:]
    ys, yd = (slice(0, h - dy), slice(dy, h)) if dy >= 0 else (slice(-dy, h), slice(0, h + dy))
    xs, xd = (slice(0, w - dx), slice(dx, w)) if dx >= 0 else (slice(-dx, w), slice(0, w + dx))
    out[..., yd, xd] = x[..., ys, xs]
    return out

"""A seeded suite of distribution shifts for the 8x8 digits, to evaluate test-time adaptation.

Two independent parts, in the spirit of CIFAR-10-C (Hendrycks & Dietterich, "Benchmarking Neural
Network Robustness to Common Corruptions and Perturbations", ICLR 2019; official code:
``ImageNet-C/create_c/make_cifar_c.py`` of hendrycks/robustness) and of the non-i.i.d. test
streams of NOTE (Gong et al., "NOTE: Robust Continual Test-time Adaptation Against Temporal
Correlation", NeurIPS 2022; official code: the Dirichlet sampler in ``data_loader/`` of
TaesikGong/NOTE) and CCC (Press et al., "RDumb: A simple approach that questions our progress in
continual test-time adaptation", NeurIPS 2023; official code: oripress/CCC):

* ``corrupt(x, kind, severity, seed)``: one of ``CORRUPTIONS`` at severity 1..3, on images
  [N, 1, 8, 8] (or [N, 8, 8]) in [0, 1]; float32 output in [0, 1]; the input is not modified.
  The combined demo shift of ``models.shift`` is here too, as ``"demo"``.
* stream orders, index arrays into a labelled pool: ``iid_order``, ``dirichlet_order``
  (class-ordered), ``label_shift_order`` (imbalanced), and ``long_stream`` (a schedule of
  windows cycling through corruptions and severities).

Severity values were set before measuring anything, as fractions of a "severe" level.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.ndimage import affine_transform, gaussian_filter

from pseudostream.models import shift

__all__ = ["CORRUPTIONS", "SEVERITIES", "corrupt", "iid_order", "dirichlet_order",
           "label_shift_order", "long_stream", "Segment"]

SEVERITIES = (1, 2, 3)

# kind -> values at severities 1, 2, 3
_LEVELS: dict[str, tuple[float, float, float]] = {
    "gaussian_noise": (0.1, 0.2, 0.3),      # std of additive N(0, s^2) pixel noise
    "blur": (0.5, 0.8, 1.1),                # sigma (pixels) of a Gaussian blur
    "contrast": (0.6, 0.4, 0.25),           # kept fraction of each image's contrast
    "affine": (10.0, 20.0, 30.0),           # max |rotation| in degrees (shear and scale follow)
    "salt_and_pepper": (0.05, 0.1, 0.2),    # fraction of pixels set to 0 or 1
}
CORRUPTIONS = (*_LEVELS, "demo")
"""Corruption names; ``"demo"`` is ``models.shift.apply_shift`` (contrast + blur + noise)."""


def _images(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim < 3:
        raise ValueError(f"expected images [N, (1,) H, W], got shape {x.shape}")
    return x.astype(np.float32, copy=True)


def corrupt(x: np.ndarray, kind: str, severity: int, seed: int = 0) -> np.ndarray:
    """A corrupted copy of images ``x``; deterministic for (kind, severity, seed)."""
    if kind not in CORRUPTIONS:
        raise ValueError(f"unknown corruption {kind!r}; known: {', '.join(CORRUPTIONS)}")
    if severity not in SEVERITIES:
        raise ValueError(f"severity must be one of {SEVERITIES}, got {severity!r}")
    if kind == "demo":
        return shift.apply_shift(x, seed=seed, severity=severity)
    out = _images(x)
    level = _LEVELS[kind][severity - 1]
    rng = np.random.default_rng(seed)
    if kind == "gaussian_noise":
        out = out + rng.normal(0.0, level, size=out.shape).astype(np.float32)
    elif kind == "blur":
        out = gaussian_filter(out, sigma=(0.0,) * (out.ndim - 2) + (level, level), mode="constant")
    elif kind == "contrast":
        mean = out.mean(axis=(-2, -1), keepdims=True)
        out = mean + level * (out - mean)
    elif kind == "affine":
        out = _affine(out, level, rng)
    else:  # salt_and_pepper
        hit = rng.random(out.shape) < level
        out = np.where(hit, (rng.random(out.shape) < 0.5).astype(np.float32), out)
    return np.clip(out, 0.0, 1.0).astype(np.float32, copy=False)


def _affine(x: np.ndarray, degrees: float, rng: np.random.Generator) -> np.ndarray:
    """Per image: rotation by U(-degrees, degrees), shear by U(-d/2, d/2) degrees and scale
    1 + U(-d/200, d/200) about the centre, bilinear, zero fill (the digits background)."""
    imgs = x.reshape(x.shape[0], -1, *x.shape[-2:])  # [N, K, H, W]: K channels share a transform
    out = np.empty_like(imgs)
    centre = (np.array(x.shape[-2:]) - 1) / 2.0
    for i in range(imgs.shape[0]):
        a = np.deg2rad(rng.uniform(-degrees, degrees))
        s = np.deg2rad(rng.uniform(-degrees / 2, degrees / 2))
        scale = 1.0 + rng.uniform(-degrees / 200, degrees / 200)
        matrix = np.array([[np.cos(a), -np.sin(a + s)], [np.sin(a), np.cos(a + s)]]) / scale
        offset = centre - matrix @ centre
        for c in range(imgs.shape[1]):
            out[i, c] = affine_transform(imgs[i, c], matrix, offset=offset, order=1, mode="constant")
    return out.reshape(x.shape)


def iid_order(n: int, seed: int = 0) -> np.ndarray:
    """A seeded permutation of ``range(n)``."""
    return np.random.default_rng(seed).permutation(n)


def dirichlet_order(labels: np.ndarray, alpha: float = 0.1, num_slots: int | None = None,
                    seed: int = 0) -> np.ndarray:
    """Class-ordered (temporally correlated) order of all samples, as NOTE's Dirichlet sampler:
    each class spreads its samples over ``num_slots`` time slots with proportions drawn from
    Dir(alpha); slots are concatenated in time and shuffled inside. Small alpha: each slot holds
    few classes; alpha -> infinity: i.i.d. ``num_slots`` defaults to 10 per class."""
    labels = np.asarray(labels)
    if alpha <= 0:
        raise ValueError(f"alpha must be > 0, got {alpha}")
    classes = np.unique(labels)
    slots = int(num_slots or 10 * len(classes))
    rng = np.random.default_rng(seed)
    per_slot: list[list[np.ndarray]] = [[] for _ in range(slots)]
    for c in classes:
        idx = rng.permutation(np.flatnonzero(labels == c))
        cuts = (np.cumsum(rng.dirichlet(np.full(slots, alpha))) * len(idx)).astype(int)[:-1]
        for s, part in enumerate(np.split(idx, cuts)):
            per_slot[s].append(part)
    return np.concatenate([rng.permutation(np.concatenate(parts)) for parts in per_slot])


def label_shift_order(labels: np.ndarray, imbalance: float = 10.0, seed: int = 0) -> np.ndarray:
    """An i.i.d. order of a class-imbalanced subset: class k (in a seeded random rank order) keeps
    a fraction imbalance ** (-rank / (C - 1)) of its samples (long-tailed, most/least = imbalance)."""
    labels = np.asarray(labels)
    if imbalance < 1:
        raise ValueError(f"imbalance must be >= 1, got {imbalance}")
    classes = np.unique(labels)
    rng = np.random.default_rng(seed)
    rank = rng.permutation(len(classes))
    keep = []
    for c, r in zip(classes, rank):
        idx = rng.permutation(np.flatnonzero(labels == c))
        frac = imbalance ** (-r / max(len(classes) - 1, 1))
        keep.append(idx[: max(1, round(frac * len(idx)))])
    return rng.permutation(np.concatenate(keep))


@dataclass(frozen=True)
class Segment:
    """One stretch of a long stream: ``windows`` windows of corruption ``kind`` at ``severity``."""

    kind: str
    severity: int
    windows: int


def long_stream(num_windows: int = 60, windows_per_segment: int = 4,
                kinds: tuple[str, ...] = ("gaussian_noise", "blur", "contrast", "affine",
                                          "salt_and_pepper"),
                seed: int = 0) -> list[Segment]:
    """A continual schedule (CCC-like) of at least ``num_windows`` windows: segments of
    ``windows_per_segment`` windows cycle through ``kinds`` in a seeded order per cycle, each
    cycle at the next severity (1, 2, 3, 1, ...), with no reset between segments."""
    rng = np.random.default_rng(seed)
    segments: list[Segment] = []
    total, cycle = 0, 0
    while total < num_windows:
        severity = SEVERITIES[cycle % len(SEVERITIES)]
        for k in rng.permutation(len(kinds)):
            if total >= num_windows:
                break
            segments.append(Segment(kinds[k], severity, windows_per_segment))
            total += windows_per_segment
        cycle += 1
    return segments

"""The distribution shift the demo applies to its stream: one fixed, documented corruption.

Applied in this order to every 8x8 image (values in [0, 1]):

1. contrast reduction: each pixel moves ``contrast`` of the way toward its image's mean;
2. Gaussian blur with ``blur`` pixels (``scipy.ndimage.gaussian_filter``, per image);
3. additive Gaussian noise with standard deviation ``noise``, drawn from a seeded generator;
4. clip to [0, 1].

Severity 1..3 scales all three linearly: severity s uses s/3 of the severe values
(``CONTRAST_FACTOR`` 0.5, ``BLUR_SIGMA`` 0.7, ``NOISE_STD`` 0.15). The severe values were chosen
before anything was measured. Measured with the seed-0 demo teacher (clean test accuracy 98.1%):
severity 1 keeps 95.6% on the shifted test split, severity 2 drops to 40%, severity 3 to 11%
(the teacher calls nearly everything an "8"). The demo runs at ``DEMO_SEVERITY`` = 1, the level
at which a frozen teacher still labels usefully; severities 2 and 3 are where test-time
adaptation has to recover the teacher first (``pseudostream demo --severity N`` shows them).
At severity 3 pixels change by 0.24 on average (a test keeps it within [0.20, 0.28]).
"""

from __future__ import annotations

import logging

import numpy as np
from scipy.ndimage import gaussian_filter

__all__ = [
    "apply_shift",
    "severity_params",
    "SHIFT_KIND",
    "CONTRAST_FACTOR",
    "BLUR_SIGMA",
    "NOISE_STD",
    "DEFAULT_SHIFT_SEED",
    "DEMO_SEVERITY",
    "SEVERITIES",
]

logger = logging.getLogger(__name__)

SHIFT_KIND = "contrast+blur+noise"
"""Name of the corruption, for logs and teacher cards."""

CONTRAST_FACTOR = 0.5
"""Severe level: x <- mean + (1 - CONTRAST_FACTOR) * (x - mean), per image: halves the contrast."""

BLUR_SIGMA = 0.7
"""Severe level: standard deviation, in pixels, of the Gaussian blur over the spatial axes."""

NOISE_STD = 0.15
"""Severe level: standard deviation of the additive Gaussian pixel noise (pixels in [0, 1])."""

SEVERITIES = (1, 2, 3)
DEMO_SEVERITY = 1
"""The severity the demo streams at (see the module docstring for why and the measured figures)."""


def severity_params(severity: int) -> dict[str, float]:
    """(contrast, blur, noise) of a severity level: s/3 of the severe values."""
    if severity not in SEVERITIES:
        raise ValueError(f"severity must be one of {SEVERITIES}, got {severity!r}")
    f = severity / 3
    return {"contrast": CONTRAST_FACTOR * f, "blur": BLUR_SIGMA * f, "noise": NOISE_STD * f}


DEFAULT_SHIFT_SEED = 1234


def apply_shift(x: np.ndarray, seed: int = DEFAULT_SHIFT_SEED, severity: int = 3) -> np.ndarray:
    """Return a shifted copy of images ``x`` ([N, 1, 8, 8] or [N, 8, 8], values in [0, 1]).

    Deterministic for a seed; ``x`` is not modified. The output is float32 in [0, 1].
    """
    x = np.asarray(x)
    if x.ndim < 2:
        raise ValueError(f"apply_shift expects images [..., H, W], got shape {x.shape}")
    p = severity_params(severity)
    out = x.astype(np.float32, copy=True)
    spatial = (-2, -1)
    mean = out.mean(axis=spatial, keepdims=True)
    out = mean + (1.0 - p["contrast"]) * (out - mean)
    # Blur only the two spatial axes: sigma 0 on every leading (batch, channel) axis.
    sigma = (0.0,) * (out.ndim - 2) + (p["blur"], p["blur"])
    out = gaussian_filter(out, sigma=sigma, mode="reflect")
    rng = np.random.default_rng(seed)
    out = out + rng.normal(0.0, p["noise"], size=out.shape).astype(np.float32)
    return np.clip(out, 0.0, 1.0).astype(np.float32, copy=False)

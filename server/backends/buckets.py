"""Batch-size buckets: a batch is padded up to one of a few sizes, so an accelerator sees few shapes.

On a GPU, ONNX Runtime's CUDA provider redoes its per-shape set-up whenever a session's input
shape differs from the one it ran last: on an H200 (``benchmarks/PERFORMANCE.md``, session J),
a ResNet-18 session alternating batches of 512 and 256 ran 211 ms a call with cuDNN's exhaustive
algorithm search (the provider's default) and 33 ms with its heuristic one, against 5.7 ms for
512 rows every time. The micro-batcher cuts batches of any size from 1 to ``max_batch``, so
nearly every batch is a new shape. Padded to powers of two from 8 there are a few shapes, and the
embedded backend gives each its own session, warmed up when the model loads. Padding rows are
zeros; the teacher must treat rows independently (inference-mode models do).
"""

from __future__ import annotations

from bisect import bisect_left
from typing import Literal, Sequence, Union

import numpy as np

__all__ = ["GPU_PROVIDERS", "BucketSpec", "bucket_for", "bucket_sizes", "padded"]

BucketSpec = Union[Literal["auto", "off", "powers_of_two"], Sequence[int]]

# ONNX Runtime providers that run on an accelerator and specialise per input shape.
GPU_PROVIDERS = frozenset({"CUDAExecutionProvider", "TensorrtExecutionProvider",
                           "ROCMExecutionProvider", "MIGraphXExecutionProvider"})


def bucket_sizes(spec: BucketSpec, max_batch: int, providers: Sequence[str]) -> tuple[int, ...]:
    """The sizes batches are padded to, ascending; () for none.

    ``auto`` is ``powers_of_two`` when the session's first provider is a GPU one and off on CPU,
    where padding costs compute in proportion and a new shape costs little. ``powers_of_two``
    is 8, 16, 32, ... below ``max_batch``, then ``max_batch`` (fewer rows run padded to 8). A
    list is taken as given.
    """
    if spec == "off" or (spec == "auto" and (not providers or providers[0] not in GPU_PROVIDERS)):
        return ()
    if spec in ("auto", "powers_of_two"):
        sizes = [1 << k for k in range(3, max_batch.bit_length()) if 1 << k < max_batch]
        return (*sizes, max_batch)
    return tuple(sorted(set(int(s) for s in spec)))


def bucket_for(rows: int, sizes: Sequence[int]) -> int:
    """The smallest bucket that holds ``rows``; ``rows`` itself above the largest (or with none)."""
    i = bisect_left(sizes, rows)
    return sizes[i] if i < len(sizes) else rows


def padded(batch: np.ndarray, size: int) -> np.ndarray:
    """``batch`` with zero rows appended up to ``size`` rows (``batch`` itself when it has them)."""
    rows = batch.shape[0]
    if size <= rows:
        return batch
    out = np.zeros((size, *batch.shape[1:]), dtype=batch.dtype)
    out[:rows] = batch
    return out

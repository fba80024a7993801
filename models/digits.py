"""The demo data: scikit-learn's 8x8 digits (shipped inside scikit-learn, no download).

The 1,797 images are split once, stratified by class and with fixed seeds, into

* a labelled 20 %, divided again into ``train`` (75 % of it) and ``calib`` (25 %, held out for
  fitting the temperature);
* the ``stream`` (60 %): the unlabeled samples producers send; its true labels are kept only to
  evaluate pseudo-labels, never to train;
* ``test`` (20 %).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

__all__ = [
    "DigitsSplits",
    "load_digits_splits",
    "sample_id",
    "NUM_CLASSES",
    "IMAGE_SHAPE",
    "LABELLED_FRACTION",
    "STREAM_FRACTION",
    "TEST_FRACTION",
    "CALIB_FRACTION",
]

logger = logging.getLogger(__name__)

NUM_CLASSES = 10
IMAGE_SHAPE = (1, 8, 8)
PIXEL_MAX = 16.0  # digits pixels are integers 0..16

LABELLED_FRACTION = 0.2
STREAM_FRACTION = 0.6
TEST_FRACTION = 0.2
CALIB_FRACTION = 0.25  # of the labelled split


@dataclass(frozen=True)
class DigitsSplits:
    """The demo splits: images float32 [N, 1, 8, 8] in [0, 1], labels int64 [N].

    ``*_idx`` are indices into the original ``load_digits()`` order. ``stream_y`` is for
    evaluation only: the stream is the unlabeled data.
    """

    train_x: np.ndarray
    train_y: np.ndarray
    train_idx: np.ndarray
    calib_x: np.ndarray
    calib_y: np.ndarray
    calib_idx: np.ndarray
    stream_x: np.ndarray
    stream_y: np.ndarray
    stream_idx: np.ndarray
    stream_ids: list[str]
    test_x: np.ndarray
    test_y: np.ndarray
    test_idx: np.ndarray

    @property
    def source_prior(self) -> np.ndarray:
        """Class marginal of the labelled training split, float64 [10]."""
        counts = np.bincount(self.train_y, minlength=NUM_CLASSES).astype(np.float64)
        return counts / counts.sum()


def sample_id(index: int) -> str:
    """The stream id of original digits sample ``index``, e.g. ``digits-000123``."""
    return f"digits-{int(index):06d}"


def load_digits_splits(seed: int = 0) -> DigitsSplits:
    """Load digits and split it (see the module docstring); the same seed gives the same splits."""
    data = load_digits()
    x = (data.images.astype(np.float32) / PIXEL_MAX).reshape(-1, *IMAGE_SHAPE)
    y = data.target.astype(np.int64)
    idx = np.arange(len(y))

    # test first, then labelled vs stream from the rest: 0.2 / 0.8 of the rest = 0.25.
    rest_idx, test_idx = train_test_split(
        idx, test_size=TEST_FRACTION, stratify=y, random_state=seed
    )
    labelled_share = LABELLED_FRACTION / (LABELLED_FRACTION + STREAM_FRACTION)
    stream_idx, labelled_idx = train_test_split(
        rest_idx, test_size=labelled_share, stratify=y[rest_idx], random_state=seed + 1
    )
    train_idx, calib_idx = train_test_split(
        labelled_idx, test_size=CALIB_FRACTION, stratify=y[labelled_idx], random_state=seed + 2
    )
    # Each split keeps train_test_split's seeded shuffle: the stream is i.i.d. in order, not in
    # the collection order of the original file (which cycles through the classes).
    logger.debug(
        "digits splits (seed %d): train %d, calib %d, stream %d, test %d",
        seed, len(train_idx), len(calib_idx), len(stream_idx), len(test_idx),
    )
    return DigitsSplits(
        train_x=x[train_idx], train_y=y[train_idx], train_idx=train_idx,
        calib_x=x[calib_idx], calib_y=y[calib_idx], calib_idx=calib_idx,
        stream_x=x[stream_idx], stream_y=y[stream_idx], stream_idx=stream_idx,
        stream_ids=[sample_id(i) for i in stream_idx],
        test_x=x[test_idx], test_y=y[test_idx], test_idx=test_idx,
    )

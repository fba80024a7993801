"""Build the demo teacher: a small CNN trained on the labelled digits split, calibrated, exported.

``build_demo_teacher`` writes into ``out_dir``:

* ``model.onnx``: input ``input`` [B, 1, 8, 8] float32, outputs ``logits`` [B, 10] and
  ``features`` [B, 64] (the penultimate layer, ``logits == features @ weight.T + bias``);
* ``head.npz``: the head's ``weight`` [10, 64] and ``bias`` [10], and ``feature_mean`` [64], the
  mean feature of the training split (for feature-space adapters);
* ``model.pt``: the torch ``state_dict`` of ``DigitsCNN`` (weight-level adapters train a shadow
  torch copy; ``load_demo_torch_model`` restores it);
* ``teacher.json``: the ``TeacherCard``, with the temperature fitted on the ``calib`` split and
  the figures: accuracy on the test split, clean and shifted (``models.shift``), and ECE/NLL
  before and after temperature scaling on ``calib`` (in-sample for T) and on test.

The build is cached by a fingerprint of the recipe; it takes a few seconds on two CPU cores.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path

import numpy as np
import onnx
import sklearn
import torch

from pseudostream.models import shift
from pseudostream.models.calibration import (
    expected_calibration_error,
    fit_temperature,
    nll,
    scaled_softmax,
)
from pseudostream.models.card import CARD_FILENAME, MODEL_FILENAME, TeacherCard
from pseudostream.models.cnn import DigitsCNN
from pseudostream.models.digits import (
    IMAGE_SHAPE,
    NUM_CLASSES,
    DigitsSplits,
    load_digits_splits,
)
from pseudostream.models.export import export_onnx
from pseudostream.models.training import predict_outputs, torch_threads, train_classifier

__all__ = [
    "build_demo_teacher",
    "load_demo_torch_model",
    "DEFAULT_OUT_DIR",
    "HEAD_FILENAME",
    "TORCH_FILENAME",
    "RECIPE",
]

logger = logging.getLogger(__name__)

DEFAULT_OUT_DIR = ".cache/teachers/digits-cnn"
HEAD_FILENAME = "head.npz"
TORCH_FILENAME = "model.pt"
NAME = "digits-cnn"
VERSION = "1"
OPSET = 18

RECIPE = {
    "recipe_version": 1,  # bump when the code below changes what is built
    "architecture": "DigitsCNN(num_classes=10, in_channels=1, feature_dim=64)",
    "epochs": 60,
    "batch_size": 32,
    "lr": 1e-3,
    "augment": False,
    "num_threads": 1,  # for the whole build: see training.torch_threads
}
"""Training recipe of the demo teacher; part of the cache fingerprint."""


def _fingerprint(seed: int) -> str:
    recipe = dict(
        RECIPE,
        seed=seed,
        opset=OPSET,
        shift=[shift.SHIFT_KIND, shift.CONTRAST_FACTOR, shift.BLUR_SIGMA, shift.NOISE_STD,
               shift.DEFAULT_SHIFT_SEED, shift.DEMO_SEVERITY],
        torch=torch.__version__,
        onnx=onnx.__version__,
        sklearn=sklearn.__version__,
    )
    blob = json.dumps(recipe, sort_keys=True).encode()
    return "sha256:" + hashlib.sha256(blob).hexdigest()


def _cached(out_dir: Path, fingerprint: str) -> TeacherCard | None:
    names = (CARD_FILENAME, MODEL_FILENAME, HEAD_FILENAME, TORCH_FILENAME)
    if not all((out_dir / name).is_file() for name in names):
        return None
    try:
        card = TeacherCard.load(out_dir)
    except ValueError as exc:
        logger.warning("ignoring unreadable teacher card: %s", exc)
        return None
    if card.fingerprint != fingerprint:
        logger.info("teacher in %s was built by another recipe; rebuilding", out_dir)
        return None
    return card


def _train(splits: DigitsSplits, seed: int) -> DigitsCNN:
    with torch.random.fork_rng(devices=[]):  # seed the initialisation without global effects
        torch.manual_seed(seed)
        model = DigitsCNN(num_classes=NUM_CLASSES, in_channels=IMAGE_SHAPE[0])
    return train_classifier(
        model,
        splits.train_x,
        splits.train_y,
        epochs=RECIPE["epochs"],
        batch_size=RECIPE["batch_size"],
        lr=RECIPE["lr"],
        augment=RECIPE["augment"],
        seed=seed,
    )


def load_demo_torch_model(out_dir: Path | str = DEFAULT_OUT_DIR) -> DigitsCNN:
    """The built teacher as a torch ``DigitsCNN`` in eval mode (from ``model.pt``)."""
    model = DigitsCNN(num_classes=NUM_CLASSES, in_channels=IMAGE_SHAPE[0])
    state = torch.load(Path(out_dir) / TORCH_FILENAME, map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    return model.eval()


def _metrics(model: DigitsCNN, splits: DigitsSplits, temperature: float) -> dict[str, float]:
    calib_logits = predict_outputs(model, splits.calib_x)[0]
    test_logits = predict_outputs(model, splits.test_x)[0]
    shifted = {sev: predict_outputs(model, shift.apply_shift(splits.test_x, severity=sev))[0]
               for sev in shift.SEVERITIES}
    shifted_logits = shifted[shift.DEMO_SEVERITY]

    def ece(logits: np.ndarray, labels: np.ndarray, t: float) -> float:
        return expected_calibration_error(scaled_softmax(logits, t), labels)

    return {
        "accuracy_clean": float(np.mean(test_logits.argmax(1) == splits.test_y)),
        "accuracy_shifted": float(np.mean(shifted_logits.argmax(1) == splits.test_y)),
        **{f"accuracy_shifted_severity{sev}": float(np.mean(z.argmax(1) == splits.test_y))
           for sev, z in shifted.items()},
        "accuracy_calib": float(np.mean(calib_logits.argmax(1) == splits.calib_y)),
        "ece_before": ece(calib_logits, splits.calib_y, 1.0),
        "ece_after": ece(calib_logits, splits.calib_y, temperature),
        "nll_before": nll(calib_logits, splits.calib_y, 1.0),
        "nll_after": nll(calib_logits, splits.calib_y, temperature),
        "ece_test_before": ece(test_logits, splits.test_y, 1.0),
        "ece_test_after": ece(test_logits, splits.test_y, temperature),
        "nll_test_before": nll(test_logits, splits.test_y, 1.0),
        "nll_test_after": nll(test_logits, splits.test_y, temperature),
    }


def build_demo_teacher(
    out_dir: Path | str = DEFAULT_OUT_DIR, *, seed: int = 0, force: bool = False
) -> TeacherCard:
    """Train, calibrate and export the digits teacher into ``out_dir``; return its card.

    If ``out_dir`` already holds a teacher built by the same recipe, seed and library versions,
    it is returned without rebuilding (unless ``force``). The same seed gives the same figures.
    """
    out_dir = Path(out_dir)
    fingerprint = _fingerprint(seed)
    if not force and (card := _cached(out_dir, fingerprint)) is not None:
        logger.info("using cached teacher %s v%s in %s", card.name, card.version, out_dir)
        return card
    with torch_threads(RECIPE["num_threads"]):
        return _build(out_dir, seed, fingerprint)


def _build(out_dir: Path, seed: int, fingerprint: str) -> TeacherCard:
    started = time.perf_counter()
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / CARD_FILENAME).unlink(missing_ok=True)  # written last: no card = incomplete build
    splits = load_digits_splits(seed)
    model = _train(splits, seed)
    temperature = fit_temperature(predict_outputs(model, splits.calib_x)[0], splits.calib_y)

    example = torch.as_tensor(splits.train_x[:2])
    export_onnx(model, example, out_dir / MODEL_FILENAME, opset=OPSET, input_name="input")
    torch.save(model.state_dict(), out_dir / TORCH_FILENAME)
    train_features = predict_outputs(model, splits.train_x)[1]
    np.savez(
        out_dir / HEAD_FILENAME,
        weight=model.head.weight.detach().numpy().astype(np.float32),
        bias=model.head.bias.detach().numpy().astype(np.float32),
        feature_mean=train_features.mean(axis=0).astype(np.float32),
    )

    card = TeacherCard(
        name=NAME,
        version=VERSION,
        classes=[str(c) for c in range(NUM_CLASSES)],
        input_name="input",
        input_shape=list(IMAGE_SHAPE),
        temperature=temperature,
        source_prior=splits.source_prior.tolist(),
        metrics=_metrics(model, splits, temperature),
        fingerprint=fingerprint,
    )
    card.save(out_dir)
    logger.info(
        "built teacher %s v%s in %.1f s: %s",
        NAME, VERSION, time.perf_counter() - started,
        ", ".join(f"{k}={v:.4f}" for k, v in card.metrics.items()),
    )
    return card

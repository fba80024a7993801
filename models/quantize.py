"""Reduced-precision teachers, accepted only if they decide like the fp32 teacher.

Two paths, both measured on this project's CPU (AVX-512 with VNNI and BF16) before choosing:

* **int8**: ONNX Runtime static quantization in QDQ format (``quantize_static`` with a
  ``CalibrationDataReader`` over the labelled split, per-channel int8 weights, uint8 activations,
  after ONNX Runtime's ``quant_pre_process``). The result is an ordinary teacher folder
  (``model.onnx`` + ``teacher.json``) that the embedded ONNX Runtime backend and Triton serve.
* **bf16**: the teacher's torch module in bfloat16, channels-last, saved with ``torch.export``
  (``model.pt2``). ONNX float16 on ONNX Runtime's CPU provider ran slower than fp32 here, and its
  CPU provider has no bfloat16 convolutions, so the bf16 path runs in torch (``Bf16Teacher``); the
  embedded backend cannot serve it (it needs ``model.onnx``).

The gate: on a held-out split the candidate and the fp32 teacher both decide at the topic policy
(FixMatch: accept when the temperature-scaled max probability >= tau). A sample agrees when the
accept/reject decision and the label (argmax) are the same; the candidate is written only if at
least ``min_agreement`` (99%) of samples agree, else ``AgreementTooLow`` says by how much it missed.

Data: for the digits teachers (input [1, 8, 8], 10 classes) calibration uses the labelled split
(train + calib) and the gate the test and stream splits, which calibration never saw. Other
teachers (the benchmark's random-weight ResNet-18) have no data set here: seeded uniform noise in
[0, 1) of the teacher's input shape stands in for both, with different seeds.
"""

from __future__ import annotations

import logging
import re
import shutil
import tempfile
import warnings
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from onnxruntime.quantization import CalibrationDataReader

from pseudostream.models.calibration import scaled_softmax
from pseudostream.models.card import CARD_FILENAME, MODEL_FILENAME, TeacherCard

__all__ = ["Agreement", "QuantizedTeacher", "QuantizationError", "AgreementTooLow", "agreement",
           "default_splits", "quantize_int8", "quantize_bf16", "Bf16Teacher", "load_torch_teacher",
           "describe", "BF16_FILENAME", "DEFAULT_TAU", "DEFAULT_MIN_AGREEMENT"]

logger = logging.getLogger(__name__)

BF16_FILENAME = "model.pt2"
DEFAULT_TAU = 0.95  # FixMatch's threshold
DEFAULT_MIN_AGREEMENT = 0.99
_COPIED = ("head.npz",)  # feature-space adapters' head: still valid for a quantized body


class QuantizationError(RuntimeError):
    """A reduced-precision teacher could not be built."""


class AgreementTooLow(QuantizationError):
    """The candidate decides differently from the fp32 teacher too often; nothing was written."""

    def __init__(self, message: str, agreement: "Agreement") -> None:
        super().__init__(message)
        self.agreement = agreement


@dataclass(frozen=True)
class Agreement:
    """How a candidate's decisions compare with the fp32 teacher's on ``samples`` held-out inputs.

    ``decisions``: same accept/reject; ``labels``: same argmax; ``joint``: both (the gated figure).
    ``reference_accepted`` and ``reference_classes`` (the fp32 teacher's accept rate and number of
    distinct predicted classes) show how demanding the comparison was: a teacher that rejects
    everything, or predicts one class, agrees trivially.
    """

    samples: int
    decisions: float
    labels: float
    joint: float
    tau: float
    reference_accepted: float
    reference_classes: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class QuantizedTeacher:
    """An accepted reduced-precision teacher folder."""

    path: Path
    precision: str  # "int8" or "bf16"
    agreement: Agreement
    card: TeacherCard


def agreement(reference_logits: np.ndarray, candidate_logits: np.ndarray, temperature: float,
              tau: float = DEFAULT_TAU) -> Agreement:
    """Compare FixMatch decisions (max p >= tau on logits / temperature) of two logit arrays."""
    p_ref = scaled_softmax(np.asarray(reference_logits, np.float64), temperature)
    p_new = scaled_softmax(np.asarray(candidate_logits, np.float64), temperature)
    same_decision = (p_ref.max(axis=1) >= tau) == (p_new.max(axis=1) >= tau)
    same_label = p_ref.argmax(axis=1) == p_new.argmax(axis=1)
    return Agreement(samples=int(len(p_ref)), decisions=float(same_decision.mean()),
                     labels=float(same_label.mean()), joint=float((same_decision & same_label).mean()),
                     tau=float(tau), reference_accepted=float((p_ref.max(axis=1) >= tau).mean()),
                     reference_classes=int(np.unique(p_ref.argmax(axis=1)).size))


def default_splits(card: TeacherCard, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(calibration inputs, held-out inputs) for ``card`` (see the module docstring)."""
    from pseudostream.models.digits import IMAGE_SHAPE, NUM_CLASSES

    if tuple(card.input_shape) == IMAGE_SHAPE and card.num_classes == NUM_CLASSES:
        from pseudostream.models.digits import load_digits_splits

        d = load_digits_splits(seed)
        return np.concatenate([d.train_x, d.calib_x]), np.concatenate([d.test_x, d.stream_x])
    shape = tuple(card.input_shape)
    calibration = np.random.default_rng(seed).random((256, *shape), dtype=np.float32)
    heldout = np.random.default_rng(seed + 1).random((1024, *shape), dtype=np.float32)
    return calibration, heldout


def _ort_logits(model: Path, card: TeacherCard, x: np.ndarray, batch: int = 128) -> np.ndarray:
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    return np.concatenate([session.run([card.logits_name], {card.input_name: x[i:i + batch]})[0]
                           for i in range(0, len(x), batch)])


def _gate(found: Agreement, min_agreement: float, precision: str) -> None:
    if found.joint >= min_agreement:
        return
    raise AgreementTooLow(
        f"{precision} candidate refused: it agrees with the fp32 teacher on {found.joint:.2%} of "
        f"{found.samples} held-out samples (accept/reject {found.decisions:.2%}, labels "
        f"{found.labels:.2%}, FixMatch tau {found.tau:g}); {min_agreement:.2%} required. Nothing was "
        "written: keep serving fp32, or calibrate on data that looks like the stream.", found)


def _staging(out_dir: Path) -> tempfile.TemporaryDirectory:
    """A scratch folder beside ``out_dir`` (same file system: accepted files are renamed)."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    return tempfile.TemporaryDirectory(prefix=f".{out_dir.name}-", dir=out_dir.parent)


def _publish(staging: Path, out_dir: Path) -> Path:
    """Move the accepted files from ``staging`` into ``out_dir`` (created if needed)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for f in staging.iterdir():
        f.replace(out_dir / f.name)
    return out_dir


def _card(card: TeacherCard, precision: str, found: Agreement) -> TeacherCard:
    metrics = dict(card.metrics, **{f"{precision}_agreement": found.joint,
                                    f"{precision}_decision_agreement": found.decisions,
                                    f"{precision}_label_agreement": found.labels})
    return replace(card, version=f"{card.version}-{precision}", metrics=metrics,
                   fingerprint=f"{card.fingerprint}+{precision}")


class _Batches(CalibrationDataReader):
    """Calibration inputs for ``quantize_static``, ``batch`` samples at a time."""

    def __init__(self, name: str, x: np.ndarray, batch: int = 64) -> None:
        self._items = iter([{name: x[i:i + batch]} for i in range(0, len(x), batch)])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._items, None)


def quantize_int8(teacher_dir: str | Path, out_dir: str | Path, *,
                  calibration: np.ndarray | None = None, heldout: np.ndarray | None = None,
                  tau: float = DEFAULT_TAU, min_agreement: float = DEFAULT_MIN_AGREEMENT,
                  per_channel: bool = True) -> QuantizedTeacher:
    """Statically quantize the teacher in ``teacher_dir`` to int8 (QDQ) into ``out_dir``.

    Raises AgreementTooLow (and writes nothing) when the gate refuses the candidate.
    """
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    teacher_dir, out_dir = Path(teacher_dir), Path(out_dir)
    card = TeacherCard.load(teacher_dir)
    cal_default, held_default = default_splits(card)
    calibration = cal_default if calibration is None else calibration
    heldout = held_default if heldout is None else heldout
    reader = _Batches(card.input_name, calibration)
    with _staging(out_dir) as tmp:
        staging = Path(tmp) / "out"
        staging.mkdir()
        prepared = Path(tmp) / "prepared.onnx"
        try:
            quant_pre_process(str(teacher_dir / MODEL_FILENAME), str(prepared))
            quantize_static(str(prepared), str(staging / MODEL_FILENAME), reader,
                            quant_format=QuantFormat.QDQ, per_channel=per_channel,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
        except Exception as exc:  # onnx / onnxruntime raise many types
            raise QuantizationError(f"int8 quantization of {teacher_dir} failed: {exc}") from exc
        found = agreement(_ort_logits(teacher_dir / MODEL_FILENAME, card, heldout),
                          _ort_logits(staging / MODEL_FILENAME, card, heldout), card.temperature, tau)
        _gate(found, min_agreement, "int8")
        new_card = _card(card, "int8", found)
        new_card.save(staging)
        for name in _COPIED:
            if (teacher_dir / name).is_file():
                shutil.copy2(teacher_dir / name, staging / name)
        path = _publish(staging, out_dir)
    logger.info("int8 teacher in %s: agreement %.4f on %d samples", path, found.joint, found.samples)
    return QuantizedTeacher(path, "int8", found, new_card)


def load_torch_teacher(teacher_dir: str | Path) -> Any:
    """The fp32 torch module of a teacher folder: ``model.pt`` (the demo recipe), or the
    benchmark ResNet-18 rebuilt from the seed its fingerprint names. QuantizationError otherwise."""
    teacher_dir = Path(teacher_dir)
    card = TeacherCard.load(teacher_dir)
    if (teacher_dir / "model.pt").is_file():
        from pseudostream.models.demo_teacher import load_demo_torch_model

        return load_demo_torch_model(teacher_dir)
    match = re.fullmatch(r"resnet18-random-seed(\d+)", card.fingerprint)
    if match:
        import torch

        from pseudostream.models.zoo import ResNet18

        torch.manual_seed(int(match.group(1)))  # the same draws as build_resnet18_teacher
        return ResNet18(num_classes=card.num_classes).eval()
    raise QuantizationError(f"bf16 needs the teacher's torch weights: {teacher_dir} has no "
                            "model.pt and is not a known benchmark recipe")


class Bf16Teacher:
    """Runs a ``model.pt2`` written by ``quantize_bf16``: float32 numpy in, float32 logits out."""

    def __init__(self, teacher_dir: str | Path, threads: int | None = None) -> None:
        import torch

        if threads:
            torch.set_num_threads(threads)
        self._torch = torch
        self._module = torch.export.load(str(Path(teacher_dir) / BF16_FILENAME)).module()

    def __call__(self, x: np.ndarray) -> np.ndarray:
        torch = self._torch
        with torch.inference_mode():
            t = torch.from_numpy(np.ascontiguousarray(x)).to(torch.bfloat16)
            if t.ndim == 4:
                t = t.contiguous(memory_format=torch.channels_last)
            return self._module(t)[0].float().numpy()


def quantize_bf16(teacher_dir: str | Path, out_dir: str | Path, *, model: Any = None,
                  heldout: np.ndarray | None = None, tau: float = DEFAULT_TAU,
                  min_agreement: float = DEFAULT_MIN_AGREEMENT) -> QuantizedTeacher:
    """Export the teacher's torch module in bfloat16 (channels-last) as ``model.pt2`` + card.

    ``model`` defaults to ``load_torch_teacher(teacher_dir)``. Raises AgreementTooLow (and
    writes nothing) when the gate refuses the candidate.
    """
    import torch

    teacher_dir, out_dir = Path(teacher_dir), Path(out_dir)
    card = TeacherCard.load(teacher_dir)
    heldout = default_splits(card)[1] if heldout is None else heldout
    module = (load_torch_teacher(teacher_dir) if model is None else model).eval().to(torch.bfloat16)
    example = torch.zeros(2, *card.input_shape, dtype=torch.bfloat16)
    if example.ndim == 4:
        module = module.to(memory_format=torch.channels_last)
        example = example.contiguous(memory_format=torch.channels_last)
    batch = torch.export.Dim("batch", min=1, max=1 << 16)
    with _staging(out_dir) as tmp:
        staging = Path(tmp) / "out"
        staging.mkdir()
        try:
            with torch.inference_mode():
                program = torch.export.export(module, (example,), dynamic_shapes=({0: batch},))
            with warnings.catch_warnings():  # torch 2.13 warns about CPU weights it packs as is
                warnings.filterwarnings("ignore", message="No complete tensor found")
                torch.export.save(program, str(staging / BF16_FILENAME))
        except Exception as exc:  # torch.export raises many types
            raise QuantizationError(f"bf16 export of {teacher_dir} failed: {exc}") from exc
        candidate = Bf16Teacher(staging)
        found = agreement(_ort_logits(teacher_dir / MODEL_FILENAME, card, heldout),
                          np.concatenate([candidate(heldout[i:i + 128]) for i in range(0, len(heldout), 128)]),
                          card.temperature, tau)
        _gate(found, min_agreement, "bf16")
        new_card = _card(card, "bf16", found)
        new_card.save(staging)
        path = _publish(staging, out_dir)
    logger.info("bf16 teacher in %s: agreement %.4f on %d samples", path, found.joint, found.samples)
    return QuantizedTeacher(path, "bf16", found, new_card)


def describe(result: QuantizedTeacher) -> dict[str, Any]:
    """A JSON-ready summary of an accepted candidate (for the CLI and the benchmark)."""
    return {"dir": str(result.path), "precision": result.precision, "version": result.card.version,
            "agreement": result.agreement.to_dict(),
            "files": sorted(p.name for p in result.path.iterdir() if p.name != CARD_FILENAME)}

"""Export an adapted shadow model as a teacher directory the service can publish.

``export_adapted`` writes ``model.onnx`` (through ``models.export.export_onnx``: checker and ONNX
Runtime parity) and then ``teacher.json`` (the source card with a new version and fingerprint;
same input, outputs, classes and temperature), so ``TeacherBackend.load_version(out_dir)``
serves it. The module is exported in eval mode: every BN layer normalises with the running
statistics the adapter set after its last window (see ``models/tta/base.py`` for why), so the
served model is batch-independent; ONNX Runtime folds each BN into its convolution at load.

CPython 3.11.7's ``ast`` races with traceback formatting in other threads (gh-106905) and the
exporter parses source with it: in a process with other threads (a gRPC server) pass
``in_child=True`` to export in a spawned child process.
"""

from __future__ import annotations

import copy
import dataclasses
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch
from torch import nn

from pseudostream.models.card import MODEL_FILENAME, TeacherCard
from pseudostream.models.export import export_onnx
from pseudostream.models.tta.base import WeightAdapter

__all__ = ["export_adapted"]

OPSET = 18


def _export(model: nn.Module, example: torch.Tensor, path: Path, input_name: str) -> None:
    export_onnx(model, example, path, opset=OPSET, input_name=input_name)


def export_adapted(adapter: WeightAdapter, out_dir: str | Path, source_card: TeacherCard, *,
                   version: str | None = None, in_child: bool = False) -> TeacherCard:
    """Write the adapter's served model and a card into ``out_dir``; return the card.

    ``version`` defaults to ``<source version>+<method>.<windows adapted>``; the card's
    fingerprint is the adapter's, its metrics say how it was adapted. Raises ExportError (from
    ``export_onnx``) if the ONNX file does not reproduce the torch model.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "teacher.json").unlink(missing_ok=True)  # written last: no card = incomplete
    model = copy.deepcopy(adapter.model).eval().requires_grad_(False)
    example = torch.zeros((2, *source_card.input_shape), dtype=torch.float32)
    path = out_dir / MODEL_FILENAME
    if in_child:
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
            pool.submit(_export, model, example, path, source_card.input_name).result()
    else:
        _export(model, example, path, source_card.input_name)
    card = dataclasses.replace(
        source_card,
        version=version or f"{source_card.version}+{adapter.name}.{adapter.windows}",
        fingerprint=adapter.fingerprint(),
        metrics={"tta_windows": float(adapter.windows), "tta_updates": float(adapter.updates),
                 "tta_bn_prior": adapter.bn_prior},
    )
    card.save(out_dir)
    return card

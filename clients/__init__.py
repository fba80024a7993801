"""Clients of the labeling service: async client, blocking client, trainer dataset, CLI.

``PseudoLabelDataset`` needs torch; it is imported only when first used.
"""

from __future__ import annotations

from typing import Any

from pseudostream.clients.client import AsyncLabelerClient, make_label_request
from pseudostream.clients.sync import LabelerClient
from pseudostream.clients.types import AckResult, LabelColumns, LabelResult

__all__ = [
    "AsyncLabelerClient",
    "LabelerClient",
    "LabelResult",
    "AckResult",
    "LabelColumns",
    "PseudoLabelDataset",
    "make_label_request",
]


def __getattr__(name: str) -> Any:
    if name == "PseudoLabelDataset":
        from pseudostream.clients.dataset import PseudoLabelDataset

        return PseudoLabelDataset
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

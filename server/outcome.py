"""What labeling one request gives back: its decisions, log offsets and teacher versions.

A plain result type, apart from the pipeline that makes it, so the codecs (gRPC, KServe) and the
core that carry it need not import the hot path.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from pseudostream.server.idempotency import concat_decisions
from pseudostream.server.selection import Decisions

__all__ = ["LabelOutcome"]


@dataclass
class LabelOutcome:
    """The decisions for one WorkItem, with log offsets (-1 where rejected)."""

    decisions: Decisions
    offsets: np.ndarray
    teacher_version: np.ndarray  # [n] str
    policy: str

    @staticmethod
    def concat(parts: Sequence["LabelOutcome"]) -> "LabelOutcome":
        """Join the outcomes of the chunks of one request, in order."""
        if len(parts) == 1:
            return parts[0]
        return LabelOutcome(concat_decisions([p.decisions for p in parts]),
                            np.concatenate([p.offsets for p in parts]),
                            np.concatenate([p.teacher_version for p in parts]), parts[0].policy)

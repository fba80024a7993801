"""Selection policies: which teacher predictions become pseudo-labels.

Importing this package registers every policy in ``POLICIES``; ``make_policy`` builds one from
its config name and parameters.
"""

from __future__ import annotations

from typing import Any

from pseudostream.server.errors import ConfigError
from pseudostream.server.selection.base import POLICIES, Decisions, PolicyBatch, ThresholdPolicy
from pseudostream.server.selection.adsh import AdshPolicy
from pseudostream.server.selection.confident import ConfidentLearningPolicy
from pseudostream.server.selection.curriculum import CurriculumPolicy
from pseudostream.server.selection.debiaspl import DebiasPLPolicy
from pseudostream.server.selection.dist_align import AlignedPolicy, DistributionAlignment
from pseudostream.server.selection.fixed import FixedThresholdPolicy
from pseudostream.server.selection.flexmatch import FlexMatchPolicy
from pseudostream.server.selection.freematch import FreeMatchPolicy
from pseudostream.server.selection.multilabel import MultiLabelPolicy
from pseudostream.server.selection.softmatch import SoftMatchPolicy
from pseudostream.server.selection.uncertainty import UncertaintyPolicy

__all__ = [
    "POLICIES",
    "Decisions",
    "PolicyBatch",
    "ThresholdPolicy",
    "FixedThresholdPolicy",
    "FlexMatchPolicy",
    "FreeMatchPolicy",
    "SoftMatchPolicy",
    "CurriculumPolicy",
    "DebiasPLPolicy",
    "AdshPolicy",
    "ConfidentLearningPolicy",
    "UncertaintyPolicy",
    "MultiLabelPolicy",
    "DistributionAlignment",
    "AlignedPolicy",
    "make_policy",
]


def make_policy(name: str, num_classes: int, params: dict[str, Any] | None = None) -> ThresholdPolicy:
    """Build the policy registered as ``name``; unknown names and parameters raise ConfigError."""
    cls = POLICIES.get(name)
    try:
        return cls(num_classes, **(params or {}))
    except TypeError as exc:
        raise ConfigError(f"policy {name!r}: bad parameters {params!r}: {exc}") from None

"""Weight-level test-time adaptation on a shadow torch copy of the teacher (torch side only: the
server image is torch-free and imports none of this).

Importing this package registers every method in ``WEIGHT_ADAPTERS``: ``bn_stats``, ``tent``,
``eata``, ``sar``. ``build_weight_adapter(name, model, card, **options)`` constructs one with the
card's temperature and class count; ``export_adapted`` writes the adapted model as a teacher
directory for ``TeacherBackend.load_version``.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from pseudostream.models.card import TeacherCard
from pseudostream.models.tta.base import WEIGHT_ADAPTERS, WeightAdapter, set_bn_stats
from pseudostream.models.tta.bn_stats import BNStatsAdapter
from pseudostream.models.tta.eata import EATAAdapter
from pseudostream.models.tta.export import export_adapted
from pseudostream.models.tta.sar import SARAdapter
from pseudostream.models.tta.tent import TentAdapter

__all__ = ["WEIGHT_ADAPTERS", "WeightAdapter", "BNStatsAdapter", "TentAdapter", "EATAAdapter",
           "SARAdapter", "build_weight_adapter", "export_adapted", "set_bn_stats"]

_NEEDS_CLASSES = {"eata", "sar"}


def build_weight_adapter(name: str, model: nn.Module, card: TeacherCard, **options: Any) -> WeightAdapter:
    """The registered adapter ``name`` on a copy of ``model``, with the card's temperature (and
    class count where the method needs it); ``options`` are the method's keyword arguments.
    An unknown name raises ConfigError listing the known ones."""
    cls = WEIGHT_ADAPTERS.get(name)
    if name in _NEEDS_CLASSES:
        options.setdefault("num_classes", card.num_classes)
    return cls(model, temperature=card.temperature, **options)

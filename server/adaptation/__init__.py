"""Test-time output adapters: correct the teacher's probabilities on a shifted stream.

Importing this package registers every adapter in ``ADAPTERS``.
"""

from __future__ import annotations

from pseudostream.server.adaptation.base import ADAPTERS, AdapterInput, OutputAdapter
from pseudostream.server.adaptation.feature_shift import FeatureShiftAdapter
from pseudostream.server.adaptation.lame import LAMEAdapter
from pseudostream.server.adaptation.prior_em import PriorEMAdapter
from pseudostream.server.adaptation.t3a import T3AAdapter

__all__ = ["ADAPTERS", "AdapterInput", "OutputAdapter", "FeatureShiftAdapter", "LAMEAdapter",
           "PriorEMAdapter", "T3AAdapter"]

"""pseudostream.server.labellog: where accepted pseudo-labels wait for trainers.

``LabelLog`` is the interface (semantics in :mod:`pseudostream.server.labellog.base`);
``SqliteLabelLog`` is the embedded implementation.
"""

from pseudostream.server.labellog.base import LabelBatch, LabelLog, LabelRecord
from pseudostream.server.labellog.sqlite import SqliteLabelLog

__all__ = ["LabelBatch", "LabelLog", "LabelRecord", "SqliteLabelLog"]

"""Protobuf messages of the admin RPCs (ProposeTeacher, TeacherHistory) from service objects."""

from __future__ import annotations

from dataclasses import asdict

from pseudostream.proto.v1 import labeler_pb2 as pb
from pseudostream.server.gate import AuditFigures
from pseudostream.server.lineage import VersionRecord

__all__ = ["audit_figures", "version_record"]


def audit_figures(figures: AuditFigures | None) -> pb.AuditFigures | None:
    """The message for ``figures`` (None stays unset)."""
    return None if figures is None else pb.AuditFigures(**asdict(figures))


def version_record(record: VersionRecord) -> pb.VersionRecord:
    """The message for one lineage record."""
    fields = asdict(record)
    audit = fields.pop("audit")
    return pb.VersionRecord(**fields, audit=pb.AuditFigures(**audit) if audit else None)

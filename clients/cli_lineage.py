"""``pseudostream teacher propose`` and ``pseudostream teacher history``: close the loop."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from pseudostream.clients.cli_admin import teacher_app


@teacher_app.command("propose")
def propose(topic: str = typer.Option(..., "--topic"),
            checkpoint: Path = typer.Option(..., "--checkpoint", exists=True, dir_okay=False,
                                            help="student.onnx, or student.pt (a state_dict)"),
            architecture: Optional[str] = typer.Option(None, "--architecture",
                                                       help=".pt: module:Class (default: in the "
                                                       "checkpoint, else the demo CNN)"),
            trained_on: str = typer.Option("0:0", "--trained-on",
                                           help="label-log offsets FROM:TO the student trained on"),
            note: str = typer.Option("", "--note"),
            target: str = typer.Option("127.0.0.1:50051", "--target")) -> None:
    """Propose a trained student as TOPIC's next teacher; it is served only if it passes the
    topic's audit gate. Exits 2 if the gate rejects it (the figures are printed either way)."""
    from pseudostream.clients.sync import LabelerClient

    try:
        start, end = (int(v) for v in trained_on.split(":"))
    except ValueError:
        raise typer.BadParameter("--trained-on must be FROM:TO, two offsets") from None
    if checkpoint.suffix == ".onnx":
        data = checkpoint.read_bytes()
    else:  # export with no other thread alive (CPython 3.11.7's ast race, gh-106905)
        from pseudostream.models.student import student_to_onnx

        with LabelerClient(target) as client:
            shape = list(client.get_topic(topic).input_shape)
        data = student_to_onnx(checkpoint, shape, architecture)
    with LabelerClient(target) as client:
        r = client.propose_teacher(topic, data, trained_from=start, trained_to=end, note=note)
    figures = {k: {"accuracy": f.accuracy, "ece": f.ece, "temperature": f.temperature}
               for k, f in (("candidate", r.candidate), ("current", r.current)) if f.samples}
    typer.echo(json.dumps({"promoted": r.promoted, "version": r.version, "ema": r.ema,
                           "reason": r.reason, **figures, "candidate_id": r.candidate_id}, indent=2))
    if not r.promoted:
        raise typer.Exit(2)


@teacher_app.command("history")
def history(teacher: str = typer.Option(..., "--teacher"),
            as_json: bool = typer.Option(False, "--json"),
            target: str = typer.Option("127.0.0.1:50051", "--target")) -> None:
    """Every version of TEACHER with its parent, origin, proposer and audit figures."""
    import time

    from google.protobuf.json_format import MessageToDict

    from pseudostream.clients.sync import LabelerClient

    with LabelerClient(target) as client:
        r = client.teacher_history(teacher)
    if as_json:
        typer.echo(json.dumps(MessageToDict(r, preserving_proto_field_name=True), indent=2))
        return
    typer.echo(f"teacher {r.teacher}: serving version {r.served_version}")
    for rec in r.records:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(rec.created_at))
        audit = (f" acc {rec.audit.accuracy:.4f} ece {rec.audit.ece:.4f}"
                 if rec.audit.samples else "")
        trained = (f" trained on [{rec.trained_from_offset}, {rec.trained_to_offset})"
                   if rec.trained_to_offset else "")
        typer.echo(f"{when}  v{rec.version or '-':<4} <- v{rec.parent or '-':<4} {rec.origin:<8} "
                   f"{rec.decision:<11} by {rec.proposer}{trained}{audit}")

"""The ``pseudostream`` command line: serve, label, subscribe, demo, teacher build-demo.

Arguments are parsed here only; every command calls library code.
"""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Optional

import typer

from pseudostream.clients import cli_lineage  # noqa: F401  (registers teacher propose/history)
from pseudostream.clients.cli_admin import DEFAULT_TEACHER_DIR, teacher_app, triton_app

app = typer.Typer(help="pseudostream: online pseudo-labeling service.", no_args_is_help=True,
                  add_completion=False)
app.add_typer(teacher_app, name="teacher")
app.add_typer(triton_app, name="triton")


def _logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


@app.command()
def serve(config: Path = typer.Option(..., "--config", "-c", exists=True, help="YAML config file"),
          verbose: bool = typer.Option(False, "--verbose", "-v")) -> None:
    """Run the labeling service until SIGINT/SIGTERM."""
    from pseudostream.server.app import serve_forever
    from pseudostream.server.config import load_config

    _logging(verbose)
    cfg = load_config(config)
    asyncio.run(serve_forever(cfg, on_ready=lambda s: typer.echo(f"serving on {s.address}")))


@app.command()
def label(npy: Path = typer.Argument(..., exists=True, help=".npy file, first dimension = samples"),
          topic: str = typer.Option(..., "--topic", "-t"),
          target: str = typer.Option("127.0.0.1:50051", "--target"),
          batch: int = typer.Option(64, "--batch", help="samples per request"),
          id_prefix: str = typer.Option("", "--id-prefix", help="ids are PREFIX + row index")) -> None:
    """Stream the samples of a .npy file to TOPIC; print one JSON line per decision."""
    import numpy as np

    from pseudostream.clients.client import make_label_request
    from pseudostream.clients.sync import LabelerClient

    data = np.load(npy)
    prefix = id_prefix or f"{npy.stem}-"
    requests = (make_label_request(topic, data[i:i + batch],
                                   [f"{prefix}{k}" for k in range(i, min(i + batch, len(data)))])
                for i in range(0, len(data), batch))
    with LabelerClient(target) as client:
        for result in client.label_stream(requests):
            for k in range(len(result)):
                typer.echo(json.dumps({
                    "id": result.ids[k], "accepted": bool(result.accepted[k]),
                    "label": int(result.label[k]), "confidence": round(float(result.confidence[k]), 6),
                    "weight": float(result.weight[k]), "reason": result.reason[k],
                    "offset": int(result.offset[k]), "teacher_version": result.teacher_version[k]}))


@app.command()
def subscribe(topic: str = typer.Option(..., "--topic", "-t"),
              group: str = typer.Option(..., "--group", "-g"),
              consumer: str = typer.Option("cli", "--consumer"),
              target: str = typer.Option("127.0.0.1:50051", "--target"),
              ack: bool = typer.Option(False, "--ack", help="ack each batch after printing it"),
              limit: Optional[int] = typer.Option(None, "--limit", help="stop after N labels")) -> None:
    """Print a topic's pseudo-labels as JSON lines (optionally acking them)."""
    from pseudostream.clients.sync import LabelerClient

    seen = 0
    with LabelerClient(target) as client:
        for records in client.subscribe(topic, group, consumer, include_samples=False):
            for r in records:
                typer.echo(json.dumps({"offset": r.offset, "id": r.sample_id, "label": r.label,
                                       "confidence": r.confidence, "weight": r.weight,
                                       "teacher_version": r.teacher_version,
                                       "deliveries": r.deliveries}))
            if ack:
                client.ack(topic, group, [r.offset for r in records], consumer)
            seen += len(records)
            if limit is not None and seen >= limit:
                break


@app.command()
def demo(report: Path = typer.Option(Path("demo-report.json"), "--report", help="where to write the JSON report"),
         producers: int = typer.Option(4, "--producers", min=1),
         teacher_dir: Path = typer.Option(DEFAULT_TEACHER_DIR, "--teacher-dir"),
         severity: int = typer.Option(1, "--severity", min=1, max=3,
                                      help="shift severity (models/shift.py); 1 is the demo's"),
         backend: str = typer.Option("onnxruntime", "--backend",
                                     help="onnxruntime (embedded) | triton (a local Triton)"),
         rounds: int = typer.Option(0, "--rounds", min=0, help="self-training rounds: each "
                                    "round's student is proposed and, past the audit gate, "
                                    "becomes the next round's teacher"),
         verbose: bool = typer.Option(False, "--verbose", "-v")) -> None:
    """Run the whole loop on the embedded teacher and write a report."""
    from pseudostream.clients.demo import DemoSettings, format_report, run_demo

    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING)
    result = run_demo(DemoSettings(producers=producers, teacher_dir=teacher_dir, severity=severity,
                                   backend=backend, rounds=rounds))
    report.write_text(json.dumps(result, indent=2) + "\n")
    typer.echo(format_report(result))
    typer.echo(f"report written to {report}")


def main() -> None:
    """Entry point of the ``pseudostream`` script: service errors print as one line, exit 1."""
    import grpc

    from pseudostream.server.errors import PseudostreamError

    try:
        app()
    except grpc.RpcError as exc:
        typer.echo(f"error: {exc.code().name}: {exc.details()}", err=True)  # type: ignore[attr-defined]
        raise SystemExit(1) from None
    except PseudostreamError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()

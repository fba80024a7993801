"""``pseudostream teacher ...`` and ``pseudostream triton ...``: build, export, serve, publish."""

from __future__ import annotations

import json
import signal
import threading
from pathlib import Path
from typing import Optional

import typer

teacher_app = typer.Typer(help="Build, export, publish and roll back teachers.", no_args_is_help=True)
triton_app = typer.Typer(help="Triton model repositories and a local Triton server.",
                         no_args_is_help=True)

DEFAULT_TEACHER_DIR = Path(".cache/teachers/digits-cnn")


@teacher_app.command("build-demo")
def build_demo(out: Path = typer.Option(DEFAULT_TEACHER_DIR, "--out"),
               force: bool = typer.Option(False, "--force", help="rebuild even if cached"),
               seed: int = typer.Option(0, "--seed")) -> None:
    """Train, calibrate and export the digits teacher (cached)."""
    from pseudostream.models.demo_teacher import build_demo_teacher

    card = build_demo_teacher(out, seed=seed, force=force)
    typer.echo(json.dumps({"dir": str(out), "name": card.name, "version": card.version,
                           "temperature": card.temperature, **card.metrics}, indent=2))


@teacher_app.command("export")
def export(model: Path = typer.Argument(..., exists=True, help="teacher folder (model.onnx + teacher.json)"),
           fmt: str = typer.Option("onnx", "--format", help="onnx | tensorrt"),
           out: Optional[Path] = typer.Option(None, "--out", help="output file"),
           fp16: bool = typer.Option(False, "--fp16"),
           max_batch: int = typer.Option(128, "--max-batch")) -> None:
    """Export a teacher: torch (model.pt) -> ONNX with checker and output parity, or
    ONNX -> TensorRT engine (needs a GPU)."""
    if fmt == "onnx":
        import torch

        from pseudostream.models.card import TeacherCard
        from pseudostream.models.demo_teacher import load_demo_torch_model
        from pseudostream.models.export import export_onnx

        card = TeacherCard.load(model)
        path = export_onnx(load_demo_torch_model(model), torch.zeros(2, *card.input_shape),
                           out or model / "model.onnx", input_name=card.input_name)
        typer.echo(f"wrote {path} (onnx.checker passed; ORT matches torch within 1e-4)")
    elif fmt == "tensorrt":
        from pseudostream.models.tensorrt import build_engine

        engine = build_engine(model / "model.onnx", out or model / "model.plan", fp16=fp16,
                              max_batch=max_batch, timing_cache=model / "timing.cache")
        typer.echo(f"wrote {engine}")
    else:
        raise typer.BadParameter("--format must be onnx or tensorrt")


@teacher_app.command("publish")
def publish(teacher: str = typer.Option(..., "--teacher"),
            model_dir: Path = typer.Option(..., "--model-dir", help="a folder the service can read"),
            target: str = typer.Option("127.0.0.1:50051", "--target")) -> None:
    """Serve MODEL_DIR as the teacher's next version (in-flight batches finish on the old one)."""
    from pseudostream.clients.sync import LabelerClient

    with LabelerClient(target) as client:
        r = client.publish_teacher(teacher, str(model_dir.resolve()))
    typer.echo(json.dumps({"teacher": r.teacher, "version": r.version, "versions": list(r.versions)}))


@teacher_app.command("rollback")
def rollback(teacher: str = typer.Option(..., "--teacher"),
             version: str = typer.Option(..., "--version"),
             target: str = typer.Option("127.0.0.1:50051", "--target")) -> None:
    """Serve an earlier version of the teacher again."""
    from pseudostream.clients.sync import LabelerClient

    with LabelerClient(target) as client:
        r = client.rollback_teacher(teacher, version)
    typer.echo(json.dumps({"teacher": r.teacher, "version": r.version, "versions": list(r.versions)}))


@teacher_app.command("quantize")
def quantize(model: Path = typer.Argument(..., exists=True, help="teacher folder (model.onnx + teacher.json)"),
             out: Path = typer.Option(..., "--out", help="folder for the reduced-precision teacher"),
             precision: str = typer.Option("int8", "--precision", help="int8 (ONNX Runtime QDQ) | bf16 (torch)"),
             tau: float = typer.Option(0.95, "--tau", help="the topic policy's threshold (FixMatch)"),
             min_agreement: float = typer.Option(0.99, "--min-agreement",
                                                 help="share of held-out decisions that must agree")) -> None:
    """Quantize a teacher (int8 static QDQ, calibrated on the labelled split; or bf16) and keep it
    only if its decisions agree with the fp32 teacher's on a held-out split."""
    from pseudostream.models.quantize import QuantizationError, describe, quantize_bf16, quantize_int8

    if precision not in ("int8", "bf16"):
        raise typer.BadParameter("--precision must be int8 or bf16")
    run = quantize_int8 if precision == "int8" else quantize_bf16
    try:
        result = run(model, out, tau=tau, min_agreement=min_agreement)
    except QuantizationError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(json.dumps(describe(result), indent=2))


@triton_app.command("repo")
def repo(teacher_dir: Path = typer.Argument(DEFAULT_TEACHER_DIR, exists=True),
         out: Path = typer.Option(Path(".cache/triton-repo"), "--out"),
         platform: str = typer.Option("python", "--platform",
                                      help="python (bundled Triton) | onnxruntime_onnx | tensorrt_plan"),
         name: Optional[str] = typer.Option(None, "--name"),
         max_batch: int = typer.Option(128, "--max-batch"),
         engine: Optional[Path] = typer.Option(None, "--engine", help="tensorrt_plan: the engine")) -> None:
    """Write a Triton model repository (config.pbtxt + version folder) for a teacher."""
    from pseudostream.models.triton_repo import write_model_repository

    path = write_model_repository(out, teacher_dir, name=name, version=None, platform=platform,
                                  max_batch_size=max_batch, engine=engine)
    typer.echo(f"wrote {path}")


@triton_app.command("serve")
def serve(repo_dir: Path = typer.Option(Path(".cache/triton-repo"), "--repo", exists=True),
          grpc_port: int = typer.Option(8001, "--grpc-port"),
          http_port: int = typer.Option(8000, "--http-port"),
          metrics_port: int = typer.Option(8002, "--metrics-port")) -> None:
    """Run the tritonserver bundled in nvidia-pytriton on REPO until SIGINT/SIGTERM."""
    from pseudostream.server.backends.triton_server import LocalTritonServer

    server = LocalTritonServer(repo_dir, grpc_port=grpc_port, http_port=http_port,
                               metrics_port=metrics_port)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    with server:
        typer.echo(f"triton ready: grpc {server.grpc_url}, http {server.http_url}, "
                   f"metrics {server.metrics_url} (log: {server.log_path})")
        stop.wait()

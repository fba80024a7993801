"""How fast one trainer drains a backlog of labels with their samples, side by side in one run.

    python -m pseudostream.benchmarks.drain [--shape 3,32,32] [--batches 100] [--max-batch 256]
        [--rounds 2] [--no-ack] [--no-samples] [--dataset] [--out drain-report.json]

A SQLite label log is filled once with ``--batches`` appends of 256 records, each with a random
float32 sample of ``--shape``. Each round then drains it several ways, each as a new consumer
group (which starts at the oldest record), acking each batch (``--no-ack``: no acks):

* ``in_process`` and ``in_process_columnar``: the log read straight (``SqliteLabelLog.read``, or
  ``read_columns``), the limits;
* ``service``: a fresh ``pseudostream serve`` on the file (a one-node pooling teacher; nothing is
  labeled), one trainer on ``subscribe`` (one message per record);
* ``service_columnar``: the same on ``subscribe_columns`` (packed columns, one samples tensor a
  batch);
* ``service_glibc_defaults``: ``service`` with the allocator left to glibc
  (``keep_freed_memory_mib: 0``, see ``server/allocator.py``);
* with ``--dataset``, ``dataset`` and ``dataset_batched``: the trainer is ``PseudoLabelDataset``
  through a DataLoader (batches of ``--max-batch`` samples collated per sample, or
  ``batched=True`` with ``batch_size=None``), ``commit`` after each batch.

Reported per way: the figures of its median round (records/s, MB/s of samples delivered, and for
the services their user and system CPU and minor page faults per record, and records/s against
the in-process read of the same round: as records for the per-record ways, as columns for the
others), then each round's records/s in order; last, the medians over rounds of service against
glibc's defaults and of the columnar way against the per-record one. With ``--no-samples`` the
services deliver ids only (``include_samples`` false). This process (the in-process reads and
the trainers) sets the allocator as the service does (``--trainer-keep-freed-mib``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from pseudostream.benchmarks.bench_load import proc_stat
from pseudostream.benchmarks.bench_service import TOPIC, ServiceProcess
from pseudostream.benchmarks.log_append import batch, shape_arg
from pseudostream.clients.client import AsyncLabelerClient
from pseudostream.models.pooling_teacher import build_pooling_teacher
from pseudostream.server.allocator import keep_freed_memory
from pseudostream.server.config import LabelLogConfig
from pseudostream.server.labellog import SqliteLabelLog
from pseudostream.server.labellog.factory import page_size_for

__all__ = ["main"]

APPEND = 256  # records per append, as a service appends a batch
# Each service way's keep_freed_memory_mib and trainer (a drain_* function's kind)
WAYS = {"service": (64, "records"), "service_columnar": (64, "columns"), "service_glibc_defaults": (0, "records")}
DATASET_WAYS = {"dataset": (64, "dataset"), "dataset_batched": (64, "dataset_batched")}


async def fill(db: Path, shape: tuple[int, ...], batches: int) -> int:
    """Append ``batches`` batches of ``APPEND`` records with samples; the page size a service
    would give a new file for these samples."""
    samples = np.random.default_rng(0).random((APPEND, *shape), dtype=np.float32)
    async with SqliteLabelLog(db, page_size=page_size_for(LabelLogConfig(), samples[0].nbytes)) as log:
        for k in range(batches):
            await log.append(TOPIC, batch(k, samples))
    return batches * APPEND


async def drain_in_process(db: Path, group: str, total: int, max_batch: int, ack: bool,
                           columnar: bool = False) -> float:
    """Seconds to read (and ack) ``total`` records as ``group`` straight from the log, as
    records or (``columnar``) as columns."""
    async with SqliteLabelLog(db) as log:
        got, started = 0, time.perf_counter()
        while got < total:
            if columnar:
                offsets = np.concatenate([c.offset for c in await log.read_columns(TOPIC, group, "trainer", max_batch)])
            else:
                offsets = [r.offset for r in await log.read(TOPIC, group, "trainer", max_batch)]
            got += len(offsets)
            if ack:
                await log.ack(TOPIC, group, offsets)
        return time.perf_counter() - started


def drain_dataset(target: str, group: str, total: int, max_batch: int, ack: bool, samples: bool = True,
                  batched: bool = False) -> float:
    """Seconds for a PseudoLabelDataset trainer to iterate (and commit) ``total`` records as
    ``group``: through a DataLoader collating ``max_batch`` samples, or ``batched``."""
    from torch.utils.data import DataLoader

    from pseudostream.clients.dataset import PseudoLabelDataset

    dataset = PseudoLabelDataset(target, TOPIC, group, "trainer", include_samples=samples, max_batch=max_batch,
                                 max_records=total, batched=batched, idle_timeout_s=30.0)
    try:
        got, started = 0, time.perf_counter()
        for batch in DataLoader(dataset, batch_size=None if batched else max_batch):
            got += len(batch[1])
            if ack:
                dataset.commit()
        seconds = time.perf_counter() - started
    finally:
        dataset.close()
    if got != total:
        raise RuntimeError(f"the dataset trainer got {got} of {total} records")
    return seconds


async def drain_service(target: str, group: str, total: int, max_batch: int, ack: bool,
                        samples: bool = True, columnar: bool = False) -> float:
    """Seconds for one trainer to receive (and ack) ``total`` records as ``group``, with their
    samples or (``samples`` false) their ids only; as records or (``columnar``) as columns."""
    async with AsyncLabelerClient(target) as client:
        await client.wait_ready()
        got, started = 0, time.perf_counter()
        if columnar:
            async for columns in client.subscribe_columns(TOPIC, group, "trainer", max_batch=max_batch,
                                                          include_samples=samples):
                got += len(columns)
                if ack:
                    await client.ack(TOPIC, group, columns.offset, "trainer")
                if got >= total:
                    break
            return time.perf_counter() - started
        async for records in client.subscribe(TOPIC, group, "trainer", max_batch=max_batch,
                                              include_samples=samples):
            got += len(records)
            if ack:
                await client.ack(TOPIC, group, [r.offset for r in records], "trainer")
            if got >= total:
                break
        return time.perf_counter() - started


def usage(pid: int) -> np.ndarray:
    """(user CPU s, system CPU s, minor page faults) of process ``pid`` so far (/proc/PID/stat)."""
    fields = proc_stat(f"/proc/{pid}/stat")
    tick = os.sysconf("SC_CLK_TCK")
    return np.array([int(fields[11]) / tick, int(fields[12]) / tick, int(fields[7])], dtype=float)


def _figures(total: int, seconds: float, sample_bytes: int, used: np.ndarray | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"records_per_s": round(total / seconds, 1),
                           "mb_per_s": round(total * sample_bytes / seconds / 1e6, 1)}
    if used is not None:
        out.update(user_us_per_record=round(used[0] / total * 1e6, 1),
                   system_us_per_record=round(used[1] / total * 1e6, 1),
                   page_faults_per_record=round(used[2] / total, 2))
    return out


def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    db = work / "labels.db"
    total = asyncio.run(fill(db, args.shape, args.batches))
    teacher = build_pooling_teacher(work / "teacher", args.shape)
    sample_bytes = int(np.prod(args.shape)) * 4
    ways = {**WAYS, **(DATASET_WAYS if args.dataset else {})}
    rounds: dict[str, list[dict[str, Any]]] = {"in_process": [], "in_process_columnar": [],
                                               **{way: [] for way in ways}}
    for k in range(args.rounds):
        for columnar, way in ((False, "in_process"), (True, "in_process_columnar")):
            seconds = asyncio.run(drain_in_process(db, f"{way}-{k}", total, args.max_batch, args.ack, columnar))
            rounds[way].append(_figures(total, seconds, sample_bytes))
        for way, (keep, trainer) in ways.items():
            settings = {"label_log": {"path": str(db)}, "keep_freed_memory_mib": keep, "metrics_port": None}
            with ServiceProcess(work, "pooling", {"model_dir": str(teacher), "intra_op_threads": 1}, {},
                                settings) as service:
                before = usage(service.pid)
                drain = (args.samples, trainer == "dataset_batched")
                seconds = (drain_dataset(service.target, f"{way}-{k}", total, args.max_batch, args.ack, *drain)
                           if trainer.startswith("dataset") else
                           asyncio.run(drain_service(service.target, f"{way}-{k}", total, args.max_batch, args.ack,
                                                     args.samples, trainer == "columns")))
                figures = _figures(total, seconds, sample_bytes if args.samples else 0, usage(service.pid) - before)
            limit = rounds["in_process" if trainer == "records" else "in_process_columnar"][k]["records_per_s"]
            figures["vs_in_process"] = round(figures["records_per_s"] / limit, 3)
            rounds[way].append(figures)
    report: dict[str, Any] = {"setup": {"shape": list(args.shape), "records": total, "max_batch": args.max_batch,
                                        "ack": args.ack, "samples": args.samples, "rounds": args.rounds,
                                        "dataset": args.dataset}}
    for way, figures in rounds.items():
        order = sorted(range(len(figures)), key=lambda i: figures[i]["records_per_s"])
        median = figures[order[(len(order) - 1) // 2]]
        report[way] = {**median, "rounds_records_per_s": [f["records_per_s"] for f in figures]}
    for name, (a, b) in {"service_vs_glibc_defaults": ("service", "service_glibc_defaults"),
                         "columnar_vs_records": ("service_columnar", "service")}.items():
        report[name] = round(float(np.median([x["records_per_s"] / y["records_per_s"]
                                              for x, y in zip(rounds[a], rounds[b])])), 3)
    return report


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shape", type=shape_arg, default=(3, 32, 32), help="one sample's shape, C,H,W")
    p.add_argument("--batches", type=int, default=100, help=f"appends of {APPEND} records to drain")
    p.add_argument("--max-batch", type=int, default=256, help="records per delivered batch")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--no-ack", dest="ack", action="store_false", help="do not ack what arrives")
    p.add_argument("--no-samples", dest="samples", action="store_false",
                   help="the services deliver ids without samples (include_samples false)")
    p.add_argument("--dataset", action="store_true",
                   help="also drain with PseudoLabelDataset trainers, per sample and batched")
    p.add_argument("--trainer-keep-freed-mib", type=int, default=64,
                   help="the allocator setting (server/allocator.py) of this process: the in-process reads "
                        "and the trainer; 0 keeps glibc's defaults")
    p.add_argument("--out", type=Path, default=None, help="also write the report here")
    args = p.parse_args(argv)
    if args.batches < 1 or args.rounds < 1 or args.max_batch < 1 or len(args.shape) < 2:
        p.error("--batches, --rounds and --max-batch must be >= 1, and --shape C,H[,W]")
    allocator = keep_freed_memory(args.trainer_keep_freed_mib << 20)
    with tempfile.TemporaryDirectory() as tmp:
        report = run(args, Path(tmp))
    report["setup"]["trainer_allocator"] = allocator
    text = json.dumps(report, indent=1)
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n")
    return report


if __name__ == "__main__":
    main()

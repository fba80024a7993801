"""Latency of the SQLite label log's appends at a steady pace, as a busy service makes them.

    python -m pseudostream.benchmarks.log_append [--seconds 5] [--gap-ms 5] [--batch 256]
        [--shape 1,8,8] [--page-size 4096]

Appends batches of ``--batch`` float32 samples of ``--shape`` (the digits' 1x8x8 by default)
with fresh ids, one every ``--gap-ms`` after the last returned, to a new file of ``--page-size``
byte pages, and prints the append latency (p50, p99, max, how many took over 5 ms), appended MB/s,
the WAL file's size at the end, and how often the writer checkpointed itself because the WAL was
past its backstop (the appends outran the background checkpoints). The first 50 appends are not
counted. It shows what a WAL checkpoint costs the append it runs in, and what the page size does
for your samples; the service-level figures are ``bench``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from pseudostream.server.config import SQLITE_PAGE_SIZES
from pseudostream.server.labellog import LabelBatch, SqliteLabelLog

WARMUP = 50


def batch(k: int, samples: np.ndarray) -> LabelBatch:
    """Batch ``k``: every row of ``samples`` accepted, with ids ``k-0``, ``k-1``, ..."""
    n = len(samples)
    return LabelBatch(ids=[f"{k}-{i}" for i in range(n)], label=np.zeros(n, np.int64),
                      confidence=np.ones(n, np.float32), weight=np.ones(n, np.float32),
                      threshold=np.zeros(n, np.float32), teacher_version="1", policy="fixed",
                      samples=samples)


async def run(args: argparse.Namespace, db: Path) -> dict:
    samples = np.random.default_rng(0).random((args.batch, *args.shape), dtype=np.float32)
    latencies: list[float] = []
    async with SqliteLabelLog(db, page_size=args.page_size) as log:
        stop = time.perf_counter() + args.seconds
        k = 0
        while time.perf_counter() < stop:
            started = time.perf_counter()
            await log.append("bench", batch(k, samples))
            latencies.append((time.perf_counter() - started) * 1000)
            k += 1
            await asyncio.sleep(args.gap_ms / 1000)
        wal = Path(f"{db}-wal")
        wal_bytes = wal.stat().st_size if wal.exists() else 0
        writer_checkpoints = log._checkpointer.backstops if log._checkpointer is not None else 0
    ms = np.array(latencies[WARMUP:] or latencies)
    return {"appends": k, "mb_per_s_appending": round(samples.nbytes / 1e6 / (ms.mean() / 1000), 1),
            "p50_ms": round(float(np.percentile(ms, 50)), 3),
            "p99_ms": round(float(np.percentile(ms, 99)), 3), "max_ms": round(float(ms.max()), 2),
            "over_5_ms": int((ms > 5).sum()), "wal_bytes": wal_bytes,
            "writer_checkpoints": writer_checkpoints}


def shape_arg(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(d) for d in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is no shape: give sizes like 3,32,32") from None
    if not shape or min(shape) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: every size must be >= 1")
    return shape


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--gap-ms", type=float, default=5.0, help="pause after each append")
    p.add_argument("--batch", type=int, default=256, help="samples per append")
    p.add_argument("--shape", type=shape_arg, default=(1, 8, 8), help="one sample's shape, e.g. 3,32,32")
    p.add_argument("--page-size", type=int, default=4096, choices=SQLITE_PAGE_SIZES,
                   help="the new file's SQLite page size")
    args = p.parse_args(argv)
    if args.batch < 1 or args.seconds <= 0 or args.gap_ms < 0:
        p.error("--batch must be >= 1, --seconds > 0 and --gap-ms >= 0")
    with tempfile.TemporaryDirectory(prefix="log-append-") as tmp:
        result = asyncio.run(run(args, Path(tmp) / "labels.db"))
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()

"""Latency of the SQLite label log's appends at a steady pace, as a busy service makes them.

    python -m pseudostream.benchmarks.log_append [--seconds 5] [--gap-ms 5] [--batch 256]

Appends batches of ``--batch`` digits-sized samples (1x8x8 float32) with fresh ids, one every
``--gap-ms`` after the last returned, and prints the append latency (p50, p99, max, how many
took over 5 ms) and the WAL file's size at the end. The first 50 appends are not counted. It
shows what a WAL checkpoint costs the append it runs in; the service-level figures are ``bench``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path

import numpy as np

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
    samples = np.random.default_rng(0).random((args.batch, 1, 8, 8), dtype=np.float32)
    latencies: list[float] = []
    async with SqliteLabelLog(db) as log:
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
    ms = np.array(latencies[WARMUP:] or latencies)
    return {"appends": k, "p50_ms": round(float(np.percentile(ms, 50)), 3),
            "p99_ms": round(float(np.percentile(ms, 99)), 3), "max_ms": round(float(ms.max()), 2),
            "over_5_ms": int((ms > 5).sum()), "wal_bytes": wal_bytes}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--gap-ms", type=float, default=5.0, help="pause after each append")
    p.add_argument("--batch", type=int, default=256, help="samples per append")
    args = p.parse_args(argv)
    if args.batch < 1 or args.seconds <= 0 or args.gap_ms < 0:
        p.error("--batch must be >= 1, --seconds > 0 and --gap-ms >= 0")
    with tempfile.TemporaryDirectory(prefix="log-append-") as tmp:
        result = asyncio.run(run(args, Path(tmp) / "labels.db"))
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()

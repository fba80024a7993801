"""The SQLite log's idempotency index as it grows: the longest single add, against one dict.

    python -m pseudostream.benchmarks.recent_index [--ids 2000000] [--batch 128]

Remembers ``--ids`` fresh ids in batches of ``--batch`` (each batch asked for first, as the
service recalls before it appends), once into ``RecentIndex`` (ids spread over its shards) and
once into a single dict (the index before the shards: ``dict.update`` and ``keys() & ids``),
interleaved batch by batch so both see the same machine. Prints, for each: the mean microseconds
per batch (find + add), the longest add in ms, and the number of adds over 5 ms. The longest add
is a dict growing its table (every entry copied while the event loop waits), so it grows with the
index: the stall every producer sees once per doubling.
"""

from __future__ import annotations

import argparse
import itertools
import json
import secrets
import time

from pseudostream.server.labellog._recent import RecentIndex


class OneDict:
    """The baseline: one dict of every remembered id."""

    def __init__(self) -> None:
        self.where: dict[str, int] = {}

    def find(self, topic: str, ids: list[str], now: float) -> dict[int, set[str]]:
        rows: dict[int, set[str]] = {}
        for sid in self.where.keys() & set(ids):
            rows.setdefault(self.where[sid], set()).add(sid)
        return rows

    def add(self, topic: str, row: int, ids: list[str], expires: float) -> None:
        self.where.update(zip(ids, itertools.repeat(row)))


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ids", type=int, default=2_000_000)
    p.add_argument("--batch", type=int, default=128)
    args = p.parse_args(argv)
    if args.batch < 1 or args.ids < args.batch:
        p.error(f"need --batch >= 1 and --ids >= --batch, got {args.batch} and {args.ids}")
    indexes = {"sharded": RecentIndex(), "one_dict": OneDict()}
    stats = {name: {"seconds": 0.0, "longest_add_s": 0.0, "adds_over_5_ms": 0} for name in indexes}
    prefix = secrets.token_hex(4)
    batches = args.ids // args.batch
    for row in range(batches):
        ids = [f"{prefix}-{row}-{j}" for j in range(args.batch)]
        for name, index in indexes.items():
            s = stats[name]
            t0 = time.perf_counter()
            assert not index.find("t", ids, 0.0)  # fresh ids: nothing remembered
            t1 = time.perf_counter()
            index.add("t", row, ids, 1e12)
            t2 = time.perf_counter()
            s["seconds"] += t2 - t0
            s["longest_add_s"] = max(s["longest_add_s"], t2 - t1)
            s["adds_over_5_ms"] += (t2 - t1) > 0.005
    result = {"ids": batches * args.batch, "batch": args.batch}
    for name, s in stats.items():
        result[name] = {"us_per_batch": round(s["seconds"] / batches * 1e6, 1),
                        "longest_add_ms": round(s["longest_add_s"] * 1e3, 3),
                        "adds_over_5_ms": s["adds_over_5_ms"]}
    result["sharded"]["largest_shard"] = indexes["sharded"].largest_shard()
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()

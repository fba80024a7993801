"""The SQLite log's pending rows, a run of consecutive offsets per statement: the runs, and that
a read then an ack of scattered, repeated and unknown offsets touch exactly the rows they name."""

from __future__ import annotations

import numpy as np

from pseudostream.server.labellog import SqliteLabelLog
from pseudostream.server.labellog._pending import offset_runs
from pseudostream.server.labellog.base import LabelBatch


def test_offset_runs_are_distinct_consecutive_and_ascending():
    assert offset_runs([]) == []
    assert offset_runs([5]) == [(5, 5)]
    assert offset_runs([7, 3, 4, 5, 5, 9, 10, 1]) == [(1, 1), (3, 5), (7, 7), (9, 10)]
    assert offset_runs(np.arange(256, dtype=np.int64)) == [(0, 255)]


async def test_reads_add_and_acks_delete_exactly_the_named_rows(tmp_path):
    n = 40
    batch = LabelBatch(ids=[f"s{i}" for i in range(n)], label=np.zeros(n, np.int64),
                       confidence=np.ones(n, np.float32), weight=np.ones(n, np.float32),
                       threshold=np.zeros(n, np.float32), teacher_version="v1", policy="fixed")
    async with SqliteLabelLog(tmp_path / "l.db") as log:
        await log.append("t", batch)
        assert [r.offset for r in await log.read("t", "g", "c", max_records=30)] == list(range(30))
        pending = await log._call("rows", log._rows, "SELECT offset, consumer, deliveries FROM pending "
                                  "WHERE topic = 't' AND grp = 'g' ORDER BY offset", ())
        assert pending == [(o, "c", 1) for o in range(30)]
        # 30..39 were never delivered, 99 never appended, 4 named twice
        assert await log.ack("t", "g", np.array([4, 4, 0, 1, 2, 12, 13, 29, 30, 39, 99])) == 7
        assert await log.ack("t", "g", [0, 1, 2]) == 0
        assert await log.lag("t", "g") == n - 7
        assert await log.committed("t", "g") == 3

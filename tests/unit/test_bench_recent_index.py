"""benchmarks/recent_index: both indexes remember every id and their adds are timed."""

from __future__ import annotations

import pytest

from pseudostream.benchmarks.recent_index import OneDict, main
from pseudostream.server.labellog._recent import RecentIndex


def test_recent_index_bench_times_both_indexes(capsys):
    result = main(["--ids", "20000", "--batch", "100"])
    assert result["ids"] == 20000
    for name in ("sharded", "one_dict"):
        assert result[name]["us_per_batch"] > 0 and result[name]["longest_add_ms"] > 0
        assert 0 <= result[name]["adds_over_5_ms"] <= 200
    assert 0 < result["sharded"]["largest_shard"] < 20000
    assert '"one_dict"' in capsys.readouterr().out


def test_the_baseline_answers_as_the_index_does():
    ids = [f"s{k}" for k in range(10)]
    one, sharded = OneDict(), RecentIndex()
    for index in (one, sharded):
        index.add("t", 1, ids[:5], 1e12)
        index.add("t", 2, ids[3:], 1e12)
    wanted = ["s0", "s4", "s9", "x"]
    assert one.find("t", wanted, 0.0) == sharded.find("t", wanted, 0.0) == {1: {"s0"}, 2: {"s4", "s9"}}


def test_recent_index_bench_refuses_a_batch_bigger_than_the_ids(capsys):
    with pytest.raises(SystemExit):
        main(["--ids", "10", "--batch", "100"])
    assert "--ids >= --batch" in capsys.readouterr().err

"""benchmarks/log_append: appends really happen and their latencies are reported in order."""

from __future__ import annotations

import pytest

from pseudostream.benchmarks.log_append import main


def test_log_append_reports_the_appends_it_timed(capsys):
    result = main(["--seconds", "0.5", "--gap-ms", "1", "--batch", "16"])
    assert result["appends"] > 10
    assert 0 < result["p50_ms"] <= result["p99_ms"] <= result["max_ms"]
    assert 0 <= result["over_5_ms"] <= result["appends"] and result["wal_bytes"] > 16 * 256
    assert '"appends"' in capsys.readouterr().out


def test_log_append_refuses_an_empty_batch(capsys):
    with pytest.raises(SystemExit):
        main(["--batch", "0"])
    assert "--batch must be >= 1" in capsys.readouterr().err

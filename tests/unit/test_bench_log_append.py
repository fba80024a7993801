"""benchmarks/log_append: appends really happen and their latencies are reported in order."""

from __future__ import annotations

import pytest

from pseudostream.benchmarks.log_append import main


def test_log_append_reports_the_appends_it_timed(capsys):
    result = main(["--seconds", "0.5", "--gap-ms", "1", "--batch", "16"])
    assert result["appends"] > 10
    assert 0 < result["p50_ms"] <= result["p99_ms"] <= result["max_ms"]
    assert 0 <= result["over_5_ms"] <= result["appends"] and result["wal_bytes"] > 16 * 256
    assert result["mb_per_s_appending"] > 0
    assert result["writer_checkpoints"] == 0  # 16 digits an append never reach the backstop
    assert '"appends"' in capsys.readouterr().out


def test_log_append_takes_a_sample_shape_and_a_page_size(monkeypatch, sqlite_page_size):
    import pseudostream.benchmarks.log_append as log_append

    seen = []
    real = log_append.SqliteLabelLog

    class Spy(real):
        def __init__(self, path, **kwargs):
            super().__init__(path, **kwargs)
            seen.append(sqlite_page_size(path))

    monkeypatch.setattr(log_append, "SqliteLabelLog", Spy)
    result = main(["--seconds", "0.3", "--gap-ms", "1", "--batch", "4", "--shape", "3,32,32",
                   "--page-size", "65536"])
    assert seen == [65536]
    assert result["appends"] > 3 and result["wal_bytes"] > 4 * 3 * 32 * 32 * 4


def test_log_append_refuses_an_empty_batch(capsys):
    with pytest.raises(SystemExit):
        main(["--batch", "0"])
    assert "--batch must be >= 1" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [(["--shape", "3x32"], "is no shape: give sizes like 3,32,32"),
                                           (["--shape", "3,0"], "every size must be >= 1"),
                                           (["--page-size", "1000"], "invalid choice: 1000")])
def test_log_append_refuses_a_bad_shape_or_page_size(capsys, argv, message):
    with pytest.raises(SystemExit):
        main(argv)
    assert message in capsys.readouterr().err

"""The benchmark commands refuse an --in-flight below 1 with a usage error instead of dividing by
zero samples after a window with no callers."""

from __future__ import annotations

import pytest


def test_bench_parses_in_flight_and_refuses_zero(capsys):
    pytest.importorskip("psutil")  # the harness imports it
    from pseudostream.benchmarks.bench import parse_args

    assert parse_args([]).in_flight == 2
    assert parse_args(["--in-flight", "1"]).in_flight == 1  # 1 skips the pipelined window
    with pytest.raises(SystemExit):
        parse_args(["--in-flight", "0"])
    assert "--in-flight must be 1 or more, got 0" in capsys.readouterr().err


def test_bench_repeats_each_window_three_times_by_default_and_refuses_zero(capsys):
    pytest.importorskip("psutil")
    from pseudostream.benchmarks.bench import parse_args

    assert parse_args([]).repeats == 3
    assert parse_args(["--quick"]).repeats == 2  # the smoke run still takes a median
    with pytest.raises(SystemExit):
        parse_args(["--repeats", "0"])
    assert "--repeats must be 1 or more, got 0" in capsys.readouterr().err


def test_service_load_refuses_zero_in_flight(capsys):
    pytest.importorskip("psutil")
    from pseudostream.benchmarks.service_load import main

    with pytest.raises(SystemExit):
        main(["--in-flight", "0"])
    assert "--in-flight must be 1 or more, got 0" in capsys.readouterr().err

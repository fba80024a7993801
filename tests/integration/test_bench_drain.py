"""benchmarks/drain: one trainer drains a filled log in-process and through three real services
(``pseudostream serve``), each with the allocator setting and the subscription it names, and
every record arrives."""

from __future__ import annotations

import pytest

from pseudostream.benchmarks.drain import main

pytestmark = pytest.mark.integration


def test_drain_reports_each_way_side_by_side(tmp_path, capsys):
    # enough records that each service's CPU spans several clock ticks
    report = main(["--batches", "12", "--rounds", "1", "--shape", "3,8,8", "--max-batch", "100",
                   "--out", str(tmp_path / "drain.json")])
    assert report["setup"]["records"] == 12 * 256
    for way in ("in_process", "in_process_columnar", "service", "service_columnar", "service_glibc_defaults"):
        figures = report[way]
        assert figures["records_per_s"] > 0 and len(figures["rounds_records_per_s"]) == 1
        # MB/s is rounded to 0.1 in the report, records/s to 0.1 record
        assert figures["mb_per_s"] == pytest.approx(figures["records_per_s"] * 3 * 8 * 8 * 4 / 1e6, abs=0.06)
    for way, limit in (("service", "in_process"), ("service_columnar", "in_process_columnar"),
                       ("service_glibc_defaults", "in_process")):
        assert report[way]["user_us_per_record"] > 0 and report[way]["page_faults_per_record"] >= 0
        assert report[way]["vs_in_process"] == pytest.approx(
            report[way]["records_per_s"] / report[limit]["records_per_s"], abs=1e-3)
    assert report["service_vs_glibc_defaults"] == pytest.approx(
        report["service"]["records_per_s"] / report["service_glibc_defaults"]["records_per_s"], abs=1e-3)
    assert report["columnar_vs_records"] == pytest.approx(
        report["service_columnar"]["records_per_s"] / report["service"]["records_per_s"], abs=1e-3)
    assert (tmp_path / "drain.json").read_text().startswith("{")
    assert '"service_vs_glibc_defaults"' in capsys.readouterr().out


def test_drain_refuses_a_shape_without_channels(capsys):
    with pytest.raises(SystemExit):
        main(["--shape", "64"])
    assert "--shape C,H[,W]" in capsys.readouterr().err


def test_drain_without_samples_delivers_ids_only():
    report = main(["--batches", "2", "--rounds", "1", "--shape", "3,8,8", "--no-samples"])
    assert report["setup"]["samples"] is False and report["setup"]["records"] == 512
    for way in ("service", "service_columnar"):
        assert report[way]["records_per_s"] > 0 and report[way]["mb_per_s"] == 0
    assert report["in_process"]["mb_per_s"] > 0  # the log read in-process still reads them


def test_drain_with_dataset_trainers_counts_every_record():
    report = main(["--batches", "2", "--rounds", "1", "--shape", "1,8,8", "--max-batch", "100", "--dataset"])
    assert report["setup"]["dataset"] is True and report["setup"]["records"] == 512
    for way in ("dataset", "dataset_batched"):
        # every record arrived (the drain raises otherwise); CPU is read in clock ticks, so a
        # short drain may read none
        assert report[way]["records_per_s"] > 0 and report[way]["user_us_per_record"] >= 0
        assert report[way]["vs_in_process"] == pytest.approx(
            report[way]["records_per_s"] / report["in_process_columnar"]["records_per_s"], abs=1e-3)

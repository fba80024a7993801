"""Crash consistency of a real service process (harness: benchmarks/crash.py).

kill -9 trials (distinct seeds): producers stream, a trainer acks, the service is killed after a
seeded random delay and restarted on the same port and label log. Each trial checks that every
accepted decision a producer received is in the log and reaches the trainer (nothing lost), that
no offset acked before is delivered again, that delivered offsets are exactly
range(log_end_offset), and that producers see UNAVAILABLE/CANCELLED (never INTERNAL) and carry
on after the restart. The SIGTERM tests check the graceful path: exit 0 within the grace period,
clean statuses, and the shutdown checkpoint holding every decided sample.

Durability setting under test: SQLite WAL with synchronous=NORMAL (the default), which survives
a process kill; surviving power loss needs ``label_log.synchronous: FULL`` (not testable by
killing a process).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

_PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "crash.py"


def _harness():
    name = "pseudostream_bench_crash"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, _PATH)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses look their module up
        spec.loader.exec_module(module)
    return sys.modules[name]


@pytest.fixture(scope="module")
def crash():
    return _harness()


@pytest.fixture(scope="module")
def inputs(digits):
    import numpy as np

    return np.ascontiguousarray(digits.stream_x)


@pytest.mark.parametrize("seed", [11, 22, 33])
async def test_kill9_loses_nothing_accepted_and_redelivers_nothing_acked(crash, tmp_path, teacher_dir,
                                                                        inputs, seed):
    r = await crash.kill_trial(seed, tmp_path, teacher_dir, x=inputs, max_delay_s=1.2,
                               after_restart_s=0.4)
    assert r["answered_before_kill"] > 0 and r["accepted"] > 0, r
    assert r["lost"] == 0, r["lost_ids"]  # (1) every accepted decision received is in the log
    assert r["log_end_covers_accepted"] and r["trainer_got_all"], r
    assert r["offset_ids_conflicting"] == 0 and r["offsets_unique"], r  # no offset reused after restart
    assert r["duplicates_after_ack"] == 0 and r["acked_before_kill_redelivered"] == 0, r  # (2)
    assert r["dense"] and r["missing_offsets"] == 0, r  # (3) union == range(log_end_offset)
    assert r["group_lag"] == 0, r
    assert not r["internal_errors"], r["internal_errors"]  # (4)
    assert r["producer_error_codes"] and set(r["producer_error_codes"]) <= crash.CLEAN_CODES, r
    assert r["reconnected"], r  # every producer got answers from the restarted process
    assert r["exit_code"] == 0 and r["ok"], r


async def test_sigterm_drains_checkpoints_and_exits_zero(crash, tmp_path, teacher_dir, inputs):
    grace = 2.0
    r = await crash.sigterm_trial(7, tmp_path, teacher_dir, x=inputs, grace_s=grace)
    assert r["exit_code"] == 0, r
    assert r["exit_s"] < grace + 3.0, r  # the grace period, plus draining and the checkpoint
    assert not r["internal_errors"], r["internal_errors"]
    assert set(r["producer_error_codes"]) <= crash.CLEAN_CODES, r  # in flight: answer or clean status
    # the shutdown checkpoint (checkpoint_every is huge) counts every decided sample; with tau 0
    # every decided sample is in the log, so samples == log_end_offset
    assert r["samples"] == r["log_end_offset"] == r["accepted_state"], r
    assert r["decided_answered"] <= r["samples"] <= r["sent"], r
    assert r["lost"] == 0 and r["accepted_all_present"] and r["trainer_got_all"], r
    assert r["dense"] and r["duplicates_after_ack"] == 0, r
    assert r["second_exit_code"] == 0, r


def test_sigterm_right_after_ready_is_graceful(crash, tmp_path, teacher_dir):
    """serve_forever installs its signal handlers before announcing readiness (it used to
    install them after on_ready, so an early SIGTERM killed the process with -15)."""
    service = crash.Service(tmp_path, teacher_dir, crash.free_port())
    try:
        service.start()
        code, _ = service.terminate(timeout=30)
    finally:
        service.ensure_dead()
    assert code == 0

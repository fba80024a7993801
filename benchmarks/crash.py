"""Crash-consistency trials: ``kill -9`` the service mid-stream, restart it, and check the log.

Each trial starts ``python -m pseudostream.clients.cli serve`` as a subprocess (topic ``digits``
on the demo teacher ``digits-cnn``, policy ``fixed`` with tau 0.0 so every sample is accepted, an
SQLite label log in a fresh folder), runs N producers (async clients streaming requests of 8-16
digits with unique ids) and one trainer of group ``students`` that acks every batch it receives,
then ``kill -9``s the service after a random delay drawn from a seeded RNG, restarts it on the
same port and the same log file, lets the producers reconnect and go on, and lets the trainer
(same consumer name) resume until it has received every offset. It then checks:

1. nothing accepted is lost: every accepted decision a producer *received* names a record in
   the log (GetTopic ``log_end_offset`` >= max offset + 1, and the trainer received that offset,
   with the same sample id, at least once);
2. no duplicate after ack: no offset whose Ack had returned OK is delivered to the group again
   (before or after the restart);
3. offsets are dense: the union of delivered offsets is exactly ``range(log_end_offset)``;
4. clients see clean statuses: after the kill producers see UNAVAILABLE (or a cancelled stream),
   never INTERNAL, and every producer gets answers again after the restart. (grpcio's aio
   client itself may report a request write that fails on the dead connection as INTERNAL
   "Internal error from Core", grpc/grpc#36066; that status never came from the service and is
   counted apart as CLIENT_CORE_INTERNAL.)

Redeliveries (records delivered but not acked before the kill) are expected and counted.

Durability setting under test: the SQLite label log in WAL mode with ``synchronous=NORMAL``
(the default). A commit in WAL mode is written to the WAL file (the OS page cache) before the
call returns, so a *process* crash or ``kill -9`` loses nothing that was answered. NORMAL does
not fsync the WAL on every commit, so a *power loss* or kernel crash may drop the last commits;
``label_log.synchronous: FULL`` is needed for that (not exercised here: killing a process cannot
simulate losing the page cache).

``--sigterm`` (and the test suite) also checks the graceful path: SIGTERM while producers stream
exits 0 within the grace period, no client sees INTERNAL, and the final policy checkpoint is
written (after a restart GetTopic ``samples`` equals the number of samples decided).

    python benchmarks/crash.py --trials 20            # writes crash-report.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np


# The harness lives beside this file; loaded by path so the test suite can load this module too.
sys.path.insert(0, str(Path(__file__).resolve().parent))
from crash_harness import (  # noqa: E402
    CLEAN_CODES,
    GROUP,
    Observed,
    Service,
    TEACHER_DIR,
    _check,
    _until,
    all_delivered,
    free_port,
    get_topic,
    load_inputs,
    streaming,
)

async def kill_trial(seed: int, workdir: Path, teacher_dir: Path = TEACHER_DIR, *, producers: int = 3,
                     x: np.ndarray | None = None, min_delay_s: float = 0.3,
                     max_delay_s: float = 1.5, after_restart_s: float = 0.6) -> dict[str, Any]:
    """One kill -9 trial; returns the checks' counts and ``ok`` (all invariants hold)."""
    rng = random.Random(seed)
    x = load_inputs() if x is None else x
    service = Service(workdir, teacher_dir, free_port())
    obs = Observed()
    started = time.monotonic()
    async with streaming(service, x, seed, producers, obs) as streams:
        delay = rng.uniform(min_delay_s, max_delay_s)
        await asyncio.sleep(delay)
        obs.acked_before_kill = set(obs.acked)
        answered_before = obs.decided
        await asyncio.to_thread(service.kill9)
        obs.epoch = 1
        await asyncio.to_thread(service.start)
        # every producer gets answers from the new process, then they stop
        reconnected = await _until(lambda: all(c[1] > 0 for c in obs.producer_answers_by_epoch.values()),
                                   timeout=15)
        await asyncio.sleep(after_restart_s)
        await streams.stop_producers()
        _, got_all = await all_delivered(service, obs)
        await asyncio.sleep(0.2)  # and nothing more arrives
        await streams.stop_trainer()
        state = await get_topic(service.target)
        code, _ = await asyncio.to_thread(service.terminate)
    result = _check(obs, state.log_end_offset)
    max_offset = max(obs.accepted.values(), default=-1)
    result.update(
        seed=seed, kill_after_s=round(delay, 3), answered_before_kill=answered_before,
        decided=obs.decided, sent=obs.sent, reconnected=reconnected, trainer_got_all=got_all,
        log_end_covers_accepted=state.log_end_offset >= max_offset + 1,
        group_lag=state.group_lag[GROUP], exit_code=code,
        seconds=round(time.monotonic() - started, 2),
    )
    result["ok"] = bool(
        result["lost"] == 0 and result["duplicates_after_ack"] == 0 and result["dense"]
        and result["offsets_unique"] and result["offset_ids_conflicting"] == 0
        and result["log_end_covers_accepted"] and not result["internal_errors"]
        and set(result["producer_error_codes"]) <= CLEAN_CODES and reconnected and got_all
        and result["accepted"] > 0 and answered_before > 0 and code == 0)
    return result


async def sigterm_trial(seed: int, workdir: Path, teacher_dir: Path = TEACHER_DIR, *, producers: int = 3,
                        x: np.ndarray | None = None, grace_s: float = 2.0) -> dict[str, Any]:
    """SIGTERM while producers stream: exit 0 within the grace period, clean statuses, and the
    final checkpoint (checkpoint_every is huge, so only the shutdown one) holds every sample."""
    rng = random.Random(seed)
    x = load_inputs() if x is None else x
    service = Service(workdir, teacher_dir, free_port(), grace_s=grace_s)
    obs = Observed()
    async with streaming(service, x, seed, producers, obs) as streams:
        await asyncio.sleep(rng.uniform(0.5, 1.0))
        # Producers stop with the first error (the stream ended by the stopping service).
        errors_before = len(obs.producer_errors)
        term = asyncio.create_task(asyncio.to_thread(service.terminate, grace_s + 20))
        while not term.done():
            if len(obs.producer_errors) > errors_before:
                streams.stop_producing.set()
            await asyncio.sleep(0.01)
        code, exit_s = await term
        await streams.stop_producers()
        decided_before = obs.decided
        accepted_before = dict(obs.accepted)
        obs.epoch = 1
        await asyncio.to_thread(service.start)
        state, got_all = await all_delivered(service, obs)
        log_end = state.log_end_offset
        await streams.stop_trainer()
        code2, _ = await asyncio.to_thread(service.terminate)
    result = _check(obs, log_end)
    result.update(
        seed=seed, exit_code=code, exit_s=round(exit_s, 2), grace_s=grace_s,
        decided_answered=decided_before, sent=obs.sent, samples=state.samples,
        accepted_state=state.accepted, trainer_got_all=got_all, second_exit_code=code2,
        accepted_all_present=all(accepted_before[s] < log_end for s in accepted_before),
    )
    return result


async def run_trials(trials: int, seed: int, root: Path, producers: int) -> list[dict[str, Any]]:
    x = load_inputs()
    results = []
    for t in range(trials):
        workdir = root / f"trial-{t:02d}"
        workdir.mkdir(parents=True, exist_ok=True)
        r = await kill_trial(seed + t, workdir, producers=producers, x=x)
        results.append(r)
        print(f"trial {t:2d} seed {r['seed']}: kill at {r['kill_after_s']:.2f}s  accepted {r['accepted']:5d}  "
              f"log_end {r['log_end_offset']:5d}  delivered {r['delivered']:5d}  "
              f"redelivered {r['redelivered']:4d}  lost {r['lost']}  dup-after-ack "
              f"{r['duplicates_after_ack']}  dense {r['dense']}  producer codes "
              f"{','.join(r['producer_error_codes']) or '-'}  {r['seconds']:.1f}s  "
              f"{'OK' if r['ok'] else 'FAIL'}", flush=True)
    return results


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--seed", type=int, default=1000)
    ap.add_argument("--producers", type=int, default=3)
    ap.add_argument("--report", type=Path, default=Path("crash-report.json"))
    ap.add_argument("--sigterm", action="store_true", help="also run one SIGTERM trial")
    args = ap.parse_args()
    from pseudostream.models.demo_teacher import build_demo_teacher

    build_demo_teacher(TEACHER_DIR)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="pseudostream-crash-") as tmp:
        results = asyncio.run(run_trials(args.trials, args.seed, Path(tmp), args.producers))
        term = (asyncio.run(sigterm_trial(args.seed, Path(tmp) / "sigterm"))
                if args.sigterm and (Path(tmp) / "sigterm").mkdir() is None else None)
    summary = {
        "trials": len(results),
        "failed": sum(not r["ok"] for r in results),
        "labels_accepted": sum(r["accepted"] for r in results),
        "log_records": sum(r["log_end_offset"] for r in results),
        "delivered": sum(r["delivered"] for r in results),
        "redelivered": sum(r["redelivered"] for r in results),
        "lost": sum(r["lost"] for r in results),
        "duplicates_after_ack": sum(r["duplicates_after_ack"] for r in results),
        "non_dense_trials": sum(not r["dense"] for r in results),
        "internal_errors": sum(len(r["internal_errors"]) for r in results),
        "client_core_internal": sum(r["client_core_internal"] for r in results),
        "producer_error_codes": sorted({c for r in results for c in r["producer_error_codes"]}),
        "synchronous": "NORMAL", "journal_mode": "WAL",
        "seconds": round(time.monotonic() - started, 1),
    }
    print("summary: " + "  ".join(f"{k}={v}" for k, v in summary.items()))
    report = {"summary": summary, "trials": results}
    if term is not None:
        report["sigterm"] = term
        print("sigterm: " + json.dumps({k: term[k] for k in ("exit_code", "exit_s", "samples", "log_end_offset",
                                                               "decided_answered", "lost")}))
    args.report.write_text(json.dumps(report, indent=2, default=str))
    print(f"wrote {args.report}")
    return 0 if summary["failed"] == 0 and summary["lost"] == 0 and summary["duplicates_after_ack"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())

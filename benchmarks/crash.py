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
import collections
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import yaml

from pseudostream.clients.client import AsyncLabelerClient, make_label_request

REPO = Path(__file__).resolve().parents[1]
TEACHER_DIR = REPO / ".cache" / "teachers" / "digits-cnn"
CLI = [sys.executable, "-m", "pseudostream.clients.cli"]
TOPIC, GROUP, CONSUMER = "digits", "students", "trainer-0"
# grpcio's aio client reports a request write that fails after the transport died as INTERNAL
# "Internal error from Core" (grpc/grpc#36066: set_internal_error overwrites the real status).
# The service never sent it (it was dead), so it is recorded as CLIENT_CORE_INTERNAL, apart from
# a genuine INTERNAL status, which must never happen.
CLIENT_CORE_DETAILS = "Internal error from Core"
CLEAN_CODES = {"UNAVAILABLE", "CANCELLED", "CLIENT_CORE_INTERNAL"}


def _code_name(exc: grpc.aio.AioRpcError) -> str:
    code = exc.code().name
    return "CLIENT_CORE_INTERNAL" if code == "INTERNAL" and exc.details() == CLIENT_CORE_DETAILS else code


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def load_inputs() -> np.ndarray:
    from pseudostream.models.digits import load_digits_splits

    return np.ascontiguousarray(load_digits_splits(seed=0).stream_x)


class Service:
    """One service process on a fixed port and log file; can be started again after a kill."""

    def __init__(self, workdir: Path, teacher_dir: Path, port: int, *, grace_s: float = 2.0,
                 checkpoint_every: int = 100_000, synchronous: str = "NORMAL") -> None:
        self.workdir, self.port, self.grace_s = Path(workdir), port, grace_s
        self.config = self.workdir / "service.yaml"
        self.config.write_text(yaml.safe_dump({
            "port": port, "metrics_port": None, "shutdown_grace_s": grace_s,
            "checkpoint_every": checkpoint_every,
            "teachers": {"digits-cnn": {"model_dir": str(teacher_dir), "max_delay_ms": 2,
                                        "intra_op_threads": 1}},
            "topics": {TOPIC: {"teacher": "digits-cnn",
                               "policy": {"name": "fixed", "params": {"tau": 0.0}}}},
            "label_log": {"path": str(self.workdir / "labels.db"), "synchronous": synchronous,
                          "visibility_timeout_s": 30},
        }))
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        self.starts += 1
        err = open(self.workdir / f"service-{self.starts}.log", "w")
        self.proc = subprocess.Popen(CLI + ["serve", "--config", str(self.config)],
                                     stdout=subprocess.PIPE, stderr=err, text=True)
        err.close()
        line = self.proc.stdout.readline()
        if f"serving on {self.target}" not in line:
            self.proc.kill()
            raise RuntimeError(f"service did not start: {line!r}\n"
                               + (self.workdir / f"service-{self.starts}.log").read_text()[-2000:])

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def terminate(self, timeout: float = 30.0) -> tuple[int, float]:
        """SIGTERM; returns (exit code, seconds until it exited)."""
        assert self.proc is not None
        started = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=timeout)
        return code, time.monotonic() - started

    def ensure_dead(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def stderr(self) -> str:
        return "\n".join(p.read_text()[-3000:] for p in sorted(self.workdir.glob("service-*.log")))


@dataclass
class Observed:
    """Everything the clients saw, for the checks."""

    epoch: int = 0  # service incarnation: bumped when the service restarts
    accepted: dict[str, int] = field(default_factory=dict)  # producer-received: id -> offset
    decided: int = 0  # samples whose decision reached a producer
    sent: int = 0  # samples sent by producers
    answers_by_epoch: collections.Counter = field(default_factory=collections.Counter)
    producer_answers_by_epoch: dict[int, collections.Counter] = field(default_factory=dict)
    producer_errors: list[tuple[int, str, str]] = field(default_factory=list)  # (epoch, code, details)
    trainer_errors: list[tuple[int, str, str]] = field(default_factory=list)
    deliveries: list[tuple[int, str, int, int]] = field(default_factory=list)  # (offset, id, deliveries, epoch)
    acked: set[int] = field(default_factory=set)  # offsets whose Ack returned OK
    dup_after_ack: list[int] = field(default_factory=list)  # delivered although already acked
    acked_before_kill: set[int] = field(default_factory=set)


async def producer(k: int, target: str, x: np.ndarray, seed: int, obs: Observed,
                   stop: asyncio.Event, pace_s: float = 0.004) -> None:
    """Stream requests of 8-16 samples until ``stop``; reconnect with a fresh channel on errors."""
    rng = random.Random(seed * 1000 + k)
    seq = 0
    mine = obs.producer_answers_by_epoch.setdefault(k, collections.Counter())
    while not stop.is_set():
        pending: collections.deque[list[str]] = collections.deque()

        async def requests():
            nonlocal seq
            while not stop.is_set():
                n = rng.randint(8, 16)
                rows = [rng.randrange(len(x)) for _ in range(n)]
                ids = [f"p{k}-{seq + i}" for i in range(n)]
                seq += n
                pending.append(ids)
                obs.sent += n
                yield make_label_request(TOPIC, x[rows], ids)
                await asyncio.sleep(pace_s)

        client = AsyncLabelerClient(target)
        try:
            async for r in client.label_stream(requests()):
                ids = pending.popleft()
                assert r.ids == ids, (r.ids, ids)
                for j in np.flatnonzero(r.accepted):
                    obs.accepted[r.ids[j]] = int(r.offset[j])
                obs.decided += len(r.ids)
                obs.answers_by_epoch[obs.epoch] += 1
                mine[obs.epoch] += 1
        except grpc.aio.AioRpcError as exc:
            obs.producer_errors.append((obs.epoch, _code_name(exc), exc.details() or ""))
        finally:
            await client.close()
        if not stop.is_set():
            await asyncio.sleep(0.05)


async def trainer(target: str, obs: Observed, stop: asyncio.Event) -> None:
    """Subscribe as CONSUMER of GROUP, ack every batch; reconnect on errors until ``stop``."""
    while not stop.is_set():
        client = AsyncLabelerClient(target)
        try:
            async for records in client.subscribe(TOPIC, GROUP, CONSUMER, max_batch=32,
                                                  include_samples=False):
                for r in records:
                    if r.offset in obs.acked:
                        obs.dup_after_ack.append(r.offset)
                    obs.deliveries.append((r.offset, r.sample_id, r.deliveries, obs.epoch))
                await client.ack(TOPIC, GROUP, [r.offset for r in records], CONSUMER)
                obs.acked.update(r.offset for r in records)
        except grpc.aio.AioRpcError as exc:
            obs.trainer_errors.append((obs.epoch, _code_name(exc), exc.details() or ""))
        finally:
            await client.close()
        if not stop.is_set():
            await asyncio.sleep(0.05)


async def get_topic(target: str, timeout: float = 15.0) -> Any:
    """GetTopic, retried while UNAVAILABLE: right after a restart the channel may still be in
    connect backoff (gRPC shares subchannels between channels to the same target)."""
    deadline = time.monotonic() + timeout
    while True:
        async with AsyncLabelerClient(target) as client:
            try:
                return await client.get_topic(TOPIC, groups=[GROUP])
            except grpc.aio.AioRpcError as exc:
                if exc.code() != grpc.StatusCode.UNAVAILABLE or time.monotonic() > deadline:
                    raise
        await asyncio.sleep(0.1)


async def _until(predicate, timeout: float, step: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        await asyncio.sleep(step)
    return predicate()


def _check(obs: Observed, log_end: int) -> dict[str, Any]:
    """The four crash invariants, as counts (all violations must be 0)."""
    delivered_ids: dict[int, set[str]] = collections.defaultdict(set)
    for off, sid, _, _ in obs.deliveries:
        delivered_ids[off].add(sid)
    offsets = list(obs.accepted.values())
    lost = sorted(sid for sid, off in obs.accepted.items()
                  if off >= log_end or sid not in delivered_ids.get(off, ()))
    seen = collections.Counter(off for off, *_ in obs.deliveries)
    return {
        "accepted": len(obs.accepted),
        "log_end_offset": log_end,
        "delivered": len(obs.deliveries),
        "redelivered": sum(n - 1 for n in seen.values()),
        "lost": len(lost),
        "lost_ids": lost[:10],
        "duplicates_after_ack": len(obs.dup_after_ack),
        "acked_before_kill_redelivered": len({off for off, *_, ep in obs.deliveries
                                              if ep > 0 and off in obs.acked_before_kill}),
        "offset_ids_conflicting": sum(len(s) > 1 for s in delivered_ids.values()),
        "offsets_unique": len(set(offsets)) == len(offsets),
        "dense": set(seen) == set(range(log_end)),
        "missing_offsets": len(set(range(log_end)) - set(seen)),
        "producer_error_codes": sorted({c for _, c, _ in obs.producer_errors}),
        "trainer_error_codes": sorted({c for _, c, _ in obs.trainer_errors}),
        "client_core_internal": sum(c == "CLIENT_CORE_INTERNAL" for _, c, _ in
                                    obs.producer_errors + obs.trainer_errors),
        "internal_errors": [("producer", *e) for e in obs.producer_errors if e[1] == "INTERNAL"]
        + [("trainer", *e) for e in obs.trainer_errors if e[1] == "INTERNAL"],
    }


async def kill_trial(seed: int, workdir: Path, teacher_dir: Path = TEACHER_DIR, *, producers: int = 3,
                     x: np.ndarray | None = None, min_delay_s: float = 0.3,
                     max_delay_s: float = 1.5, after_restart_s: float = 0.6) -> dict[str, Any]:
    """One kill -9 trial; returns the checks' counts and ``ok`` (all invariants hold)."""
    rng = random.Random(seed)
    x = load_inputs() if x is None else x
    service = Service(workdir, teacher_dir, free_port())
    obs = Observed()
    started = time.monotonic()
    service.start()
    stop_producing, stop_training = asyncio.Event(), asyncio.Event()
    try:
        train = asyncio.create_task(trainer(service.target, obs, stop_training))
        prods = [asyncio.create_task(producer(k, service.target, x, seed, obs, stop_producing))
                 for k in range(producers)]
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
        stop_producing.set()
        await asyncio.gather(*prods)
        state = await get_topic(service.target)
        log_end = state.log_end_offset
        got_all = await _until(lambda: set(range(log_end)) <= {d[0] for d in obs.deliveries}, timeout=20)
        await asyncio.sleep(0.2)  # and nothing more arrives
        stop_training.set()
        train.cancel()
        await asyncio.gather(train, return_exceptions=True)
        state = await get_topic(service.target)
        code, _ = await asyncio.to_thread(service.terminate)
    finally:
        service.ensure_dead()
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
    service.start()
    stop_producing, stop_training = asyncio.Event(), asyncio.Event()
    try:
        train = asyncio.create_task(trainer(service.target, obs, stop_training))
        prods = [asyncio.create_task(producer(k, service.target, x, seed, obs, stop_producing))
                 for k in range(producers)]
        await asyncio.sleep(rng.uniform(0.5, 1.0))
        # Producers stop with the first error (the stream ended by the stopping service).
        errors_before = len(obs.producer_errors)
        term = asyncio.create_task(asyncio.to_thread(service.terminate, grace_s + 20))
        while not term.done():
            if len(obs.producer_errors) > errors_before:
                stop_producing.set()
            await asyncio.sleep(0.01)
        code, exit_s = await term
        stop_producing.set()
        await asyncio.gather(*prods)
        decided_before = obs.decided
        accepted_before = dict(obs.accepted)
        obs.epoch = 1
        await asyncio.to_thread(service.start)
        state = await get_topic(service.target)
        log_end = state.log_end_offset
        got_all = await _until(lambda: set(range(log_end)) <= {d[0] for d in obs.deliveries}, timeout=20)
        stop_training.set()
        train.cancel()
        await asyncio.gather(train, return_exceptions=True)
        code2, _ = await asyncio.to_thread(service.terminate)
    finally:
        service.ensure_dead()
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

"""The crash harness used by ``benchmarks/crash.py`` and ``tests/integration/test_crash.py``:
a service subprocess, producers, a trainer, and the consistency checks (see crash.py).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import random
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator

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


@dataclass
class Streaming:
    """A trainer and producers streaming against a service (``streaming``)."""

    train: asyncio.Task
    producers: list[asyncio.Task]
    stop_producing: asyncio.Event
    stop_training: asyncio.Event

    async def stop_producers(self) -> None:
        self.stop_producing.set()
        await asyncio.gather(*self.producers)

    async def stop_trainer(self) -> None:
        self.stop_training.set()
        self.train.cancel()
        await asyncio.gather(self.train, return_exceptions=True)


@contextlib.asynccontextmanager
async def streaming(service: Service, x: np.ndarray, seed: int, producers: int,
                    obs: Observed) -> AsyncIterator[Streaming]:
    """Starts ``service``, then one trainer and ``producers`` producers against it (they stop on
    ``Streaming``'s calls); on the way out the service process is made sure to be dead."""
    service.start()
    try:
        stop_producing, stop_training = asyncio.Event(), asyncio.Event()
        train = asyncio.create_task(trainer(service.target, obs, stop_training))
        prods = [asyncio.create_task(producer(k, service.target, x, seed, obs, stop_producing))
                 for k in range(producers)]
        yield Streaming(train, prods, stop_producing, stop_training)
    finally:
        service.ensure_dead()


async def all_delivered(service: Service, obs: Observed) -> tuple[Any, bool]:
    """(GetTopic state, whether the trainer received every offset below its log end within 20 s)."""
    state = await get_topic(service.target)
    end = state.log_end_offset
    return state, await _until(lambda: set(range(end)) <= {d[0] for d in obs.deliveries}, timeout=20)


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

"""Weight-level test-time adaptation for one topic, behind the collapse guard.

The shadow torch copy lives in a worker process (server/adaptation/worker.py). Only samples
from producers the topic trusts reach it. Two modes:

* ``online``: trusted samples fill a window; each full window is one adaptation update, checked
  by the guard (server/adaptation/guard.py) on the frozen source's and the adapted model's
  predictions for that window. Kept updates are exported (BatchNorm in eval mode with the adapted
  statistics, so the served model stays batch-independent) and published as a new teacher
  version every ``publish_every`` windows; labeling never waits for any of it.
* ``adapt_then_label``: each batch's trusted rows are one window; the batch is labeled by the
  model adapted on it (offline-like accuracy for a little latency). Labels carry the adapter
  state as ``version+method.windows``.

On an alarm the guard's verdict says what to do: "rollback" drops this window's update (the
window looked class-correlated); "reset" (a collapse signal, or the periodic hard reset every
``reset_every`` updates, RDumb) restores the source weights, re-serves the source version if an
adapted one was published, and counts ``pseudostream_adapter_resets_total``. In
``adapt_then_label`` mode the alarmed window's labels are low-trust: rejected or weighted 0.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pseudostream.server.adaptation.guard import CollapseGuard, GuardVerdict
from pseudostream.server.adaptation.worker import AdaptationWorker
from pseudostream.server.config import WeightAdaptConfig
from pseudostream.server.errors import ConfigError

if TYPE_CHECKING:
    from pseudostream.server.core import LabelingCore
    from pseudostream.server.topic import TopicRuntime

__all__ = ["WeightAdaptation"]

log = logging.getLogger(__name__)


class WeightAdaptation:
    """One topic's weight-level adapter: ``start``, then ``offer`` (online) or ``label_window``."""

    def __init__(self, core: LabelingCore, topic: TopicRuntime, config: WeightAdaptConfig,
                 source_prior: list[float] | None = None) -> None:
        self.core, self.topic, self.config = core, topic, config
        self.teacher = topic.config.teacher
        self.method = config.method
        self.worker = AdaptationWorker(core.config.work_dir / "adapt" / topic.name)
        try:
            self.guard = CollapseGuard(topic.teacher.num_classes, source_prior=source_prior, **config.guard)
        except TypeError as exc:
            raise ConfigError(f"topic {topic.name!r}: adapt.guard: {exc}") from None
        self.source_version = ""
        self.windows = 0  # kept updates since the last reset
        self.alarms = self.resets = self.published = 0
        self.last: GuardVerdict | None = None
        self._buffer: list[np.ndarray] = []
        self._buffered = 0
        self._task: asyncio.Task[None] | None = None
        self._label_lock = asyncio.Lock()

    @property
    def online(self) -> bool:
        return self.config.mode == "online"

    def tag(self) -> str:
        return f"{self.method}.{self.windows}"

    async def start(self) -> None:
        import importlib.util

        if importlib.util.find_spec("torch") is None:
            raise ConfigError(f"topic {self.topic.name!r}: weight-level adaptation runs the teacher in "
                              "torch; install it (pip install 'pseudostream[train]') or drop adapt:")
        source = self.config.teacher_dir or self.core.model_dir(self.teacher)
        if source is None or not (Path(source) / "model.pt").exists():
            raise ConfigError(f"topic {self.topic.name!r}: weight-level adaptation needs the teacher's "
                              f"torch weights (model.pt) in its folder; set adapt.teacher_dir (got {source})")
        self.source_version = self.core.backend(self.teacher).metadata.version
        await self.worker.start(Path(source), self.method, dict(self.config.params))

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self.worker.close()

    def offer(self, x: np.ndarray) -> None:
        """Online mode: queue trusted samples; a full window starts an update unless one runs."""
        if len(x) == 0:
            return
        self._buffer.append(x)
        self._buffered += len(x)
        while self._buffered - len(self._buffer[0]) >= 4 * self.config.window:  # bounded: oldest go
            self._buffered -= len(self._buffer.pop(0))
        if self._buffered >= self.config.window and (self._task is None or self._task.done()):
            pool = np.concatenate(self._buffer)
            window, rest = pool[:self.config.window], pool[self.config.window:]
            self._buffer, self._buffered = ([rest] if len(rest) else []), len(rest)
            self._task = asyncio.create_task(self._online_step(window), name=f"adapt-{self.topic.name}")

    async def _online_step(self, window: np.ndarray) -> None:
        try:
            source, adapted, _ = await self.worker.adapt(window)
            if await self._act(self.guard.check(source, adapted)) and self.windows % self.config.publish_every == 0:
                out = self.core.config.work_dir / "adapt" / self.topic.name / "versions" / f"w{self.windows}-{self.resets}"
                await self.worker.call("export", out=str(out))
                version = await self.core.publish(self.teacher, str(out), origin="adapt",
                                                  proposer=f"adapter:{self.method}")
                self.published += 1
                log.info("topic %s: %s published version %s after %d windows", self.topic.name,
                         self.method, version, self.windows)
        except Exception as exc:  # the topic keeps labeling with what is served
            log.warning("topic %s: adaptation step failed: %s", self.topic.name, exc)

    async def label_window(self, x: np.ndarray, trusted: np.ndarray) -> tuple[np.ndarray, str, bool]:
        """Adapt-then-label: (probabilities for every row of ``x``, state tag, alarm)."""
        async with self._label_lock:
            alarm = False
            if int(trusted.sum()) >= 2:  # BatchNorm statistics need two samples
                source, adapted, _ = await self.worker.adapt(x[trusted])
                verdict = self.guard.check(source, adapted)
                alarm = not await self._act(verdict) and verdict.alarm
            return await self.worker.predict(x), self.tag(), alarm

    async def _act(self, verdict: GuardVerdict) -> bool:
        """Apply the guard's verdict; True if the update is kept."""
        self.last = verdict
        metrics = self.core.metrics
        for reason in verdict.reasons:
            metrics.adapter_alarms.labels(self.topic.name, self.method, reason).inc()
        if verdict.action == "keep":
            self.windows += 1
            return True
        self.alarms += bool(verdict.alarm)
        if verdict.action == "rollback":
            await self.worker.call("undo")
            log.warning("topic %s: %s update dropped (%s)", self.topic.name, self.method, ", ".join(verdict.reasons))
            return False
        await self.worker.call("reset")
        if verdict.alarm:
            self.guard.reset()
        self.windows = 0
        self.resets += 1
        metrics.adapter_resets.labels(self.topic.name, self.method).inc()
        backend = self.core.backend(self.teacher)
        if backend.metadata.version != self.source_version:
            await self.core.rollback(self.teacher, self.source_version, proposer=f"guard:{self.method}")
        log.warning("topic %s: %s reset to the source (%s)", self.topic.name, self.method,
                    ", ".join(verdict.reasons) or "periodic reset")
        return False

"""A teacher served by NVIDIA Triton Inference Server, over gRPC (``tritonclient.grpc.aio``).

Input and output names, dtypes and shapes come from Triton's model metadata; the temperature,
class names and task from the model config's ``parameters`` (written by
``models.triton_repo``). Every response names the model version that produced it, and that is
the teacher version each label records. Failures Triton reports as temporary (``UNAVAILABLE``,
a full queue, a dropped connection) are retried with exponential backoff; after
``breaker_failures`` failures in a row a circuit breaker answers at once with
TeacherUnavailable (UNAVAILABLE plus a retry hint) for ``breaker_reset_s`` instead of letting
clients hang, then lets one trial request through.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from pathlib import Path

import numpy as np
import tritonclient.grpc.aio as triton
from tritonclient.utils import InferenceServerException, triton_to_np_dtype

from pseudostream.server.backends.base import BACKENDS, TeacherBackend, TeacherMetadata, TeacherOutput
from pseudostream.server.backends.triton_shm import SharedMemoryPool
from pseudostream.server.config import TeacherConfig, TritonSettings
from pseudostream.server.errors import ConfigError, TeacherUnavailable, UnknownName

__all__ = ["TritonBackend", "CircuitBreaker"]

log = logging.getLogger(__name__)

_RETRYABLE = ("UNAVAILABLE", "Exceeds maximum queue size", "DEADLINE_EXCEEDED", "Socket closed",
              "Connection reset", "failed to connect", "CANCELLED")


class CircuitBreaker:
    """Opens after ``failures`` consecutive failures; half-opens after ``reset_s``."""

    def __init__(self, failures: int, reset_s: float) -> None:
        self.failures, self.reset_s = failures, reset_s
        self._consecutive = 0
        self._opened_at: float | None = None

    @property
    def retry_after_s(self) -> float:
        """Seconds until the breaker lets a trial request through (0 when closed)."""
        if self._opened_at is None:
            return 0.0
        return max(0.0, self._opened_at + self.reset_s - time.monotonic())

    def allow(self) -> bool:
        return self._opened_at is None or self.retry_after_s == 0.0

    def success(self) -> None:
        self._consecutive, self._opened_at = 0, None

    def failure(self) -> None:
        self._consecutive += 1
        if self._consecutive >= self.failures:
            self._opened_at = time.monotonic()


def _retryable(exc: InferenceServerException) -> bool:
    text = f"{exc.status()} {exc.message()}"
    return any(marker in text for marker in _RETRYABLE)


@BACKENDS.register("triton")
class TritonBackend(TeacherBackend):
    """Runs the teacher on a Triton server; ``load_version`` publishes a new version folder into
    the model repository and loads it (explicit model control); in-flight requests finish on the
    old version."""

    def __init__(self, config: TeacherConfig) -> None:
        if config.triton is None:
            raise ConfigError("the triton backend needs a `triton:` section (url, model)")
        self.settings: TritonSettings = config.triton
        self.breaker = CircuitBreaker(self.settings.breaker_failures, self.settings.breaker_reset_s)
        self._client: triton.InferenceServerClient | None = None
        self._meta: TeacherMetadata | None = None
        self._outputs: tuple[str, ...] = ()
        self._triton_dtype = "FP32"
        self._temperatures: dict[str, float] = {}
        self._shm: SharedMemoryPool | None = None
        self._max_batch = config.max_batch

    @property
    def metadata(self) -> TeacherMetadata:
        if self._meta is None:
            raise TeacherUnavailable(f"Triton model {self.settings.model!r} is not started")
        return self._meta

    async def start(self) -> None:
        self._client = triton.InferenceServerClient(self.settings.url)
        deadline = time.monotonic() + self.settings.startup_timeout_s
        while True:
            try:
                if await self._client.is_model_ready(self.settings.model):
                    break
            except InferenceServerException as exc:
                log.debug("waiting for Triton at %s: %s", self.settings.url, exc)
            if time.monotonic() > deadline:
                raise TeacherUnavailable(f"Triton at {self.settings.url} has no ready model "
                                         f"{self.settings.model!r} after {self.settings.startup_timeout_s} s")
            await asyncio.sleep(0.2)
        await self._read_model()
        if self.settings.shared_memory:
            self._shm = SharedMemoryPool(self._client, self.settings.model, self.metadata,
                                         self._max_batch, self._outputs)
            await self._shm.open()

    async def _read_model(self) -> None:
        assert self._client is not None
        meta = await self._client.get_model_metadata(self.settings.model, as_json=True)
        config = (await self._client.get_model_config(self.settings.model, as_json=True))["config"]
        params = {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}
        (inp,) = meta["inputs"]
        outputs = [o["name"] for o in meta["outputs"]]
        logits = params.get("logits_name", "logits")
        if logits not in outputs:
            raise TeacherUnavailable(f"Triton model {self.settings.model!r} has outputs {outputs}; "
                                     f"expected {logits!r}")
        features = params.get("features_name", "features")
        self._outputs = (logits, features) if features in outputs else (logits,)
        self._triton_dtype = inp["datatype"]
        version = max(meta.get("versions") or ["1"], key=int)
        self._temperatures.setdefault(version, float(params.get("temperature", 1.0)))
        classes = json.loads(params.get("classes", "[]")) or [str(i) for i in range(int(params.get("num_classes", 0)))]
        self._meta = TeacherMetadata(
            name=self.settings.model, version=version, task=params.get("task", "multiclass"),
            classes=tuple(classes), input_name=inp["name"],
            input_shape=tuple(int(d) for d in inp["shape"][1:]),
            input_dtype=np.dtype(triton_to_np_dtype(inp["datatype"])),
            temperature=self._temperatures[version])

    async def infer(self, batch: np.ndarray) -> TeacherOutput:
        if not self.breaker.allow():
            raise TeacherUnavailable(
                f"Triton at {self.settings.url} is failing; retry in {self.breaker.retry_after_s:.1f} s",
                retry_after_s=self.breaker.retry_after_s)
        delay = self.settings.backoff_s
        for attempt in range(self.settings.retries + 1):
            try:
                out = await self._infer_once(batch)
            except InferenceServerException as exc:
                if not _retryable(exc) or attempt == self.settings.retries:
                    self.breaker.failure()
                    raise TeacherUnavailable(
                        f"Triton model {self.settings.model!r} at {self.settings.url} failed: "
                        f"{exc.message()}", retry_after_s=max(delay, self.breaker.retry_after_s)) from exc
                log.debug("Triton attempt %d failed (%s); retrying in %.3f s", attempt + 1, exc, delay)
                await asyncio.sleep(delay)
                delay *= 2
            else:
                self.breaker.success()
                return out
        raise AssertionError("unreachable")

    async def _infer_once(self, batch: np.ndarray) -> TeacherOutput:
        assert self._client is not None and self._meta is not None
        if self._shm is not None:
            return await self._shm.infer(batch, self._result)
        inp = triton.InferInput(self._meta.input_name, list(batch.shape), self._triton_dtype)
        inp.set_data_from_numpy(np.ascontiguousarray(batch))
        outputs = [triton.InferRequestedOutput(name) for name in self._outputs]
        result = await self._client.infer(
            self.settings.model, [inp], outputs=outputs, priority=self.settings.priority,
            client_timeout=self.settings.timeout_s)
        return self._result(result.get_response().model_version,
                            [result.as_numpy(name) for name in self._outputs])

    def _result(self, version: str, arrays: list[np.ndarray]) -> TeacherOutput:
        return TeacherOutput(logits=arrays[0], features=arrays[1] if len(arrays) > 1 else None,
                             teacher_version=version,
                             temperature=self._temperatures.get(version, self.metadata.temperature))

    async def ready(self) -> bool:
        """Whether Triton reports the model ready (for the service's readiness)."""
        try:
            return self._client is not None and await self._client.is_model_ready(self.settings.model)
        except InferenceServerException:
            return False

    @property
    def versions(self) -> list[str]:
        return sorted(self._temperatures, key=int)

    async def load_version(self, model_dir: str | Path) -> str:
        """Write ``model_dir``'s teacher as the next version folder of the repository and load
        it; Triton finishes in-flight requests on the old version, then unloads it."""
        from pseudostream.models.card import TeacherCard
        from pseudostream.models.triton_repo import add_version

        repo = self.settings.repository
        if repo is None:
            raise ConfigError("publishing to Triton needs `triton.repository` (the model "
                              "repository folder the server reads)")
        version = add_version(repo, Path(model_dir), self.settings.model)
        self._temperatures[str(version)] = float(TeacherCard.load(model_dir).temperature)
        await self._load({"specific": {"versions": [version]}})
        return str(version)

    async def rollback(self, version: str) -> str:
        """Serve an earlier version folder again (its files stay in the repository)."""
        if version not in self._temperatures:
            raise UnknownName(f"Triton model {self.settings.model!r} has no known version "
                              f"{version!r}; versions: {', '.join(self.versions)}")
        await self._load({"specific": {"versions": [int(version)]}})
        return version

    async def _load(self, version_policy: dict) -> None:
        """(Re)load the model with ``version_policy`` (explicit model control)."""
        assert self._client is not None
        config = (await self._client.get_model_config(self.settings.model, as_json=True))["config"]
        config["version_policy"] = version_policy
        try:
            await self._client.load_model(self.settings.model, config=json.dumps(config))
        except InferenceServerException as exc:
            raise TeacherUnavailable(f"Triton could not load {version_policy}: {exc.message()}") from exc
        known = dict(self._temperatures)
        await self._read_model()
        self._temperatures = {**known, **self._temperatures}

    async def close(self) -> None:
        if self._shm is not None:
            await self._shm.close()
        if self._client is not None:
            await self._client.close()
        self._client = None

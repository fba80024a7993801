"""The embedded default teacher: the ONNX model run in-process by ONNX Runtime."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper

from pseudostream.models.card import TeacherCard
from pseudostream.server.backends.base import BACKENDS, TeacherBackend, TeacherMetadata, TeacherOutput
from pseudostream.server.backends.buckets import BucketSpec, bucket_for, bucket_sizes, padded
from pseudostream.server.errors import TeacherUnavailable, UnknownName

__all__ = ["OnnxRuntimeBackend", "cuda_unavailable", "load_cuda_libraries", "metadata_from_card"]

log = logging.getLogger(__name__)
_cuda_loaded = False


def load_cuda_libraries() -> None:
    """Load CUDA's and cuDNN's libraries from the nvidia-* wheels where they were installed that
    way (``make gpu``), before a session asks for the CUDA provider: ONNX Runtime's CUDA build
    finds them there only when told to (``preload_dlls``, which skips what is missing). Once."""
    global _cuda_loaded
    if not _cuda_loaded and hasattr(ort, "preload_dlls"):
        ort.preload_dlls()
    _cuda_loaded = True


def cuda_unavailable() -> str | None:
    """Why a session here cannot run on the CUDA provider, or None when it can. The CUDA build
    lists its provider without a GPU too, and a session then falls back to the CPU: a one-node
    session tells."""
    cuda = "CUDAExecutionProvider"
    if cuda not in ort.get_available_providers():
        return (f"onnxruntime here has no {cuda} (onnxruntime-gpu not installed in its place: "
                "make gpu)")
    load_cuda_libraries()
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "probe",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    session = ort.InferenceSession(model.SerializeToString(), providers=[cuda, "CPUExecutionProvider"])
    if session.get_providers()[0] != cuda:
        return "onnxruntime-gpu is installed but its CUDA provider found no usable GPU here"
    return None


def metadata_from_card(card: TeacherCard) -> TeacherMetadata:
    """The service's view of a teacher card."""
    return TeacherMetadata(
        name=card.name,
        version=str(card.version),
        task=card.task,
        classes=tuple(card.classes),
        input_name=card.input_name,
        input_shape=tuple(int(d) for d in card.input_shape),
        input_dtype=np.dtype(card.input_dtype),
        temperature=float(card.temperature),
    )


@dataclass(frozen=True)
class _Loaded:
    session: ort.InferenceSession  # the largest bucket's, or the only one
    metadata: TeacherMetadata
    output_names: tuple[str, ...]  # logits, then features when the model exports them
    buckets: tuple[int, ...] = ()  # batch sizes batches are padded to (none: run as they come)
    by_bucket: dict[int, ort.InferenceSession] = dataclasses.field(default_factory=dict)

    def session_for(self, rows: int) -> ort.InferenceSession:
        """The session that runs a padded batch of ``rows``: its bucket's, else the main one."""
        return self.by_bucket.get(rows, self.session)


@BACKENDS.register("onnxruntime")
class OnnxRuntimeBackend(TeacherBackend):
    """ONNX Runtime session on a worker thread; version swaps replace the session atomically.

    ``intra_op_threads`` pins ORT's thread pool (0 keeps ORT's default) so that inference and the
    gRPC event loop do not oversubscribe the cores. ``workers`` batches run at once, each on
    its own thread through the one (thread-safe) session: for a small teacher on CPU, one
    single-threaded run per core beats one run spread over all cores, whose parallel sections
    wait for whichever core the event loop holds. ``spin`` lets idle intra-op threads busy-wait
    for the next parallel section (ORT's default): fastest on cores nothing else needs, but here
    the spinning threads take the cores from the event loop and the label log, so it is off
    unless asked for. ``providers`` picks execution providers in
    order of preference; those ONNX Runtime does not offer here are skipped (CPU always remains).
    ``provider_options`` maps a provider to its ONNX Runtime options (``{"CUDAExecutionProvider":
    {"use_tf32": 0}}``).

    ``batch_buckets`` (``buckets.py``): each batch is padded up to the next bucket size and runs
    on that bucket's own session, so every session always sees one input shape, and each bucket
    runs once when a version loads. ``auto``: powers of two from 8 up to ``max_batch`` on a GPU
    provider, none on CPU.

    ``split_min_rows`` (with several workers): a batch that finds k >= 2 workers idle runs as k
    parts side by side, each of at least that many rows (0: never split). At low load a lone
    batch then takes a fraction of its time; under load no worker is idle and nothing changes.
    """

    def __init__(
        self,
        model_dir: str | Path,
        *,
        intra_op_threads: int = 0,
        providers: list[str] | None = None,
        workers: int = 1,
        spin: bool = False,
        split_min_rows: int = 0,
        max_batch: int = 128,
        batch_buckets: BucketSpec = "auto",
        provider_options: dict[str, dict[str, Any]] | None = None,
    ) -> None:
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        if split_min_rows < 0:
            raise ValueError(f"split_min_rows must be >= 0, got {split_min_rows}")
        self._model_dir = Path(model_dir)
        self._intra_op_threads = intra_op_threads
        self._providers = providers
        self._workers = workers
        self._spin = spin
        self._split_min_rows = split_min_rows
        self._max_batch = max_batch
        self._batch_buckets = batch_buckets
        self._provider_options = {name: {k: str(v) for k, v in opts.items()}
                                  for name, opts in (provider_options or {}).items()}
        self._busy = 0  # workers running a batch or a part of one (changed on the event loop)
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ort-infer")
        self._loaded: _Loaded | None = None
        self._dirs: dict[str, Path] = {}  # version -> model folder, for rollback

    @property
    def metadata(self) -> TeacherMetadata:
        if self._loaded is None:
            raise TeacherUnavailable(f"teacher in {self._model_dir} is not started")
        return self._loaded.metadata

    @property
    def concurrency(self) -> int:
        return self._workers

    def workers_busy(self, batches: int) -> int:
        return max(batches, self._busy)  # a batch not yet here holds a worker too

    @property
    def providers(self) -> list[str]:
        """The execution providers the current session runs on."""
        return [] if self._loaded is None else self._loaded.session.get_providers()

    @property
    def provider_options(self) -> dict[str, dict[str, str]]:
        """Each provider of the current session with the options it runs with."""
        return {} if self._loaded is None else self._loaded.session.get_provider_options()

    @property
    def batch_buckets(self) -> tuple[int, ...]:
        """The sizes the current session's batches are padded to (() when none are)."""
        return () if self._loaded is None else self._loaded.buckets

    @property
    def versions(self) -> list[str]:
        return sorted(self._dirs, key=lambda v: (len(v), v))

    async def start(self) -> None:
        await self._serve(self._model_dir, version=None)

    async def load_version(self, model_dir: str | Path) -> str:
        """Serve ``model_dir`` as the next version (one more than the highest so far)."""
        numbers = [int(v) for v in self._dirs if v.isdigit()]
        return await self._serve(Path(model_dir), version=str(max(numbers, default=0) + 1))

    async def rollback(self, version: str) -> str:
        if version not in self._dirs:
            raise UnknownName(f"teacher {self.metadata.name} has no version {version!r}; "
                              f"versions: {', '.join(self.versions)}")
        return await self._serve(self._dirs[version], version=version)

    async def _serve(self, model_dir: Path, version: str | None) -> str:
        loop = asyncio.get_running_loop()
        # Build the new session off the event loop, then swap: batches already running keep
        # the session object they captured.
        loaded = await loop.run_in_executor(None, self._load, Path(model_dir))
        if version is not None:
            loaded = dataclasses.replace(loaded, metadata=dataclasses.replace(loaded.metadata, version=version))
        self._loaded = loaded
        self._model_dir = Path(model_dir)
        self._dirs[loaded.metadata.version] = Path(model_dir)
        log.info("teacher %s version %s serving on %s%s", loaded.metadata.name, loaded.metadata.version,
                 loaded.session.get_providers(),
                 f", batches padded to {list(loaded.buckets)}" if loaded.buckets else "")
        return loaded.metadata.version

    def _session(self, model_dir: Path, providers: list[Any]) -> ort.InferenceSession:
        options = ort.SessionOptions()
        if self._intra_op_threads:
            options.intra_op_num_threads = self._intra_op_threads
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if self._spin else "0")
        return ort.InferenceSession(str(model_dir / "model.onnx"), options, providers=providers)

    def _load(self, model_dir: Path) -> _Loaded:
        chosen = self._pick_providers()
        if "CUDAExecutionProvider" in chosen or "TensorrtExecutionProvider" in chosen:
            load_cuda_libraries()
        providers = [(p, self._provider_options[p]) if p in self._provider_options else p for p in chosen]
        try:
            card = TeacherCard.load(model_dir)
            session = self._session(model_dir, providers)
        except Exception as exc:  # OSError, ValueError, and ORT's own pybind error types
            raise TeacherUnavailable(f"cannot load teacher from {model_dir}: {exc}") from exc
        outputs = [o.name for o in session.get_outputs()]
        if card.logits_name not in outputs:
            raise TeacherUnavailable(
                f"model in {model_dir} has outputs {outputs}; expected {card.logits_name!r}"
            )
        names = [card.logits_name] + ([card.features_name] if card.features_name in outputs else [])
        buckets = bucket_sizes(self._batch_buckets, self._max_batch, session.get_providers())
        # One session per bucket: ONNX Runtime's CUDA provider redoes its per-shape set-up (cuDNN's
        # algorithm search among it) whenever a session's input shape differs from its last run.
        try:
            by_bucket = {size: self._session(model_dir, providers) for size in buckets[:-1]}
        except Exception as exc:  # ORT's own pybind error types
            raise TeacherUnavailable(f"cannot load teacher from {model_dir}: {exc}") from exc
        if buckets:
            by_bucket[buckets[-1]] = session
        loaded = _Loaded(session, metadata_from_card(card), tuple(names), buckets, by_bucket)
        self._warm_up(loaded, model_dir)
        return loaded

    @staticmethod
    def _warm_up(loaded: _Loaded, model_dir: Path) -> None:
        """Run every bucket once, so each shape's first-run cost is paid before serving."""
        meta, started = loaded.metadata, time.perf_counter()
        for size in loaded.buckets:
            x = np.zeros((size, *meta.input_shape), dtype=meta.input_dtype)
            try:
                loaded.session_for(size).run(list(loaded.output_names), {meta.input_name: x})
            except Exception as exc:  # onnxruntime raises its own pybind exception types
                raise TeacherUnavailable(f"teacher in {model_dir} failed on a warm-up batch of "
                                         f"{size}: {exc}") from exc
        if loaded.buckets:
            log.info("warmed up %d batch sizes in %.2f s", len(loaded.buckets), time.perf_counter() - started)

    def _pick_providers(self) -> list[str]:
        available = ort.get_available_providers()
        # The Azure provider calls a remote endpoint; it is not a local accelerator to prefer.
        wanted = self._providers or [p for p in available if p != "AzureExecutionProvider"]
        chosen = [p for p in wanted if p in available]
        skipped = [p for p in wanted if p not in available]
        if skipped:
            log.warning("execution providers not available here, skipped: %s", skipped)
        return chosen or ["CPUExecutionProvider"]

    async def infer(self, batch: np.ndarray) -> TeacherOutput:
        loaded = self._loaded
        if loaded is None:
            raise TeacherUnavailable(f"teacher in {self._model_dir} is not started")
        loop = asyncio.get_running_loop()
        parts = self._parts(batch.shape[0])
        self._busy += parts
        try:
            if parts == 1:
                return await loop.run_in_executor(self._executor, self._run, loaded, batch)
            outs = await asyncio.gather(*(loop.run_in_executor(self._executor, self._run, loaded, part)
                                          for part in np.array_split(batch, parts)),
                                        return_exceptions=True)  # every part done before busy drops
        finally:
            self._busy -= parts
        failed = next((o for o in outs if isinstance(o, BaseException)), None)
        if failed is not None:
            raise failed
        return _joined(outs)

    def _parts(self, rows: int) -> int:
        """How many parts a batch of ``rows`` runs as: one per idle worker, within the minimum."""
        if self._split_min_rows == 0:
            return 1
        return max(1, min(self._workers - self._busy, rows // self._split_min_rows))

    @staticmethod
    def _run(loaded: _Loaded, batch: np.ndarray) -> TeacherOutput:
        meta, rows = loaded.metadata, batch.shape[0]
        x = padded(batch, bucket_for(rows, loaded.buckets))
        try:
            results = loaded.session_for(x.shape[0]).run(list(loaded.output_names), {meta.input_name: x})
        except Exception as exc:  # onnxruntime raises its own pybind exception types
            raise TeacherUnavailable(f"teacher {meta.name} v{meta.version} failed: {exc}") from exc
        if x.shape[0] != rows:
            results = [r[:rows] for r in results]
        features = results[1] if len(results) > 1 else None
        return TeacherOutput(logits=results[0], features=features, teacher_version=meta.version,
                             temperature=meta.temperature)

    async def close(self) -> None:
        self._loaded = None
        self._executor.shutdown(wait=True)


def _joined(outs: list[TeacherOutput]) -> TeacherOutput:
    """The parts of one split batch as the one output, rows in order."""
    first = outs[0]
    features = None if first.features is None else np.concatenate([o.features for o in outs])
    return dataclasses.replace(first, logits=np.concatenate([o.logits for o in outs]), features=features,
                               parts=len(outs))

"""The teacher interface: run a batch through the teacher model, swap versions safely."""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pseudostream.server.registry import Registry

__all__ = ["TeacherMetadata", "TeacherOutput", "TeacherBackend", "BACKENDS"]


@dataclass(frozen=True)
class TeacherMetadata:
    """What the service must know about a served teacher."""

    name: str
    version: str
    task: str  # "multiclass" (softmax) or "multilabel" (sigmoid)
    classes: tuple[str, ...]
    input_name: str
    input_shape: tuple[int, ...]  # per sample, without the batch dimension
    input_dtype: np.dtype
    temperature: float = 1.0

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def sample_nbytes(self) -> int:
        """Bytes of one input sample."""
        return math.prod(self.input_shape) * self.input_dtype.itemsize


@dataclass(frozen=True)
class TeacherOutput:
    """The teacher's raw outputs for a batch, and the version that produced them."""

    logits: np.ndarray  # [B, C] float32, before temperature scaling
    features: np.ndarray | None  # [B, F] penultimate features, when the model exports them
    teacher_version: str
    temperature: float = 1.0  # the calibration temperature of that version
    parts: int = 1  # the batch ran as this many parts at once (a backend that splits over idle workers)

    @property
    def part_rows(self) -> int:
        """Rows of the largest part: the batch size its inference time belongs to."""
        return -(-self.logits.shape[0] // self.parts)


class TeacherBackend(ABC):
    """Runs one teacher. Implementations: ONNX Runtime in-process (the embedded default),
    Triton Inference Server. Usable as an async context manager."""

    @property
    @abstractmethod
    def metadata(self) -> TeacherMetadata:
        """The currently served version's metadata."""

    @abstractmethod
    async def start(self) -> None:
        """Load the model; raises TeacherUnavailable if it cannot be served."""

    @abstractmethod
    async def infer(self, batch: np.ndarray) -> TeacherOutput:
        """Run ``batch`` [B, *input_shape] through the teacher. Errors become TeacherUnavailable."""

    @abstractmethod
    async def load_version(self, model_dir: str | Path) -> str:
        """Serve the teacher in ``model_dir`` from now on; in-flight batches finish on the old one.
        Returns the new version."""

    async def ready(self) -> bool:
        """Whether the teacher can serve now (the service's readiness follows it)."""
        return True

    @property
    def concurrency(self) -> int:
        """Batches this backend runs at once (the pipeline cuts a partial batch only while fewer
        workers are busy)."""
        return 1

    def workers_busy(self, batches: int) -> int:
        """Workers busy while ``batches`` batches are in inference: one each, unless the backend
        runs a batch over several idle workers (then it counts them itself)."""
        return batches

    @abstractmethod
    async def rollback(self, version: str) -> str:
        """Serve the earlier ``version`` again (UnknownName if this backend never served it)."""

    @property
    @abstractmethod
    def versions(self) -> list[str]:
        """Every version this backend can serve, oldest first."""

    @abstractmethod
    async def close(self) -> None:
        """Release the model and worker threads."""

    async def __aenter__(self) -> "TeacherBackend":
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


BACKENDS: Registry[TeacherBackend] = Registry("teacher backend")

"""System shared memory between the service and a Triton on the same host (optional).

A small pool of regions, each big enough for one batch of ``max_batch`` inputs and its outputs,
registered with Triton once; a batch takes a free region, writes its inputs, and reads the
outputs back from it, so tensors cross no socket. (Triton 2.69+ needs ``--allow-client-shm``
for this; the bundled 2.51 predates the flag.)
"""

from __future__ import annotations

import asyncio
import os
import uuid
from typing import Any, Callable

import numpy as np
import tritonclient.grpc.aio as triton
import tritonclient.utils.shared_memory as shm

from pseudostream.server.backends.base import TeacherMetadata, TeacherOutput

__all__ = ["SharedMemoryPool"]

_OUT_BYTES_PER_SAMPLE = 4 * 4096  # room for float32 outputs of up to 4096 values per sample


class SharedMemoryPool:
    """``size`` registered regions used one batch at a time each."""

    def __init__(self, client: triton.InferenceServerClient, model: str, meta: TeacherMetadata,
                 max_batch: int, outputs: tuple[str, ...], size: int = 2) -> None:
        self.client, self.model, self.meta, self.outputs = client, model, meta, outputs
        self.in_bytes = max_batch * meta.sample_nbytes
        self.out_bytes = max_batch * _OUT_BYTES_PER_SAMPLE
        self.size = size
        self._free: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self._all: list[tuple[str, Any]] = []

    async def open(self) -> None:
        for _ in range(self.size):
            name = f"pseudostream-{os.getpid()}-{uuid.uuid4().hex[:8]}"
            handle = shm.create_shared_memory_region(name, f"/{name}", self.in_bytes + self.out_bytes)
            await self.client.register_system_shared_memory(name, f"/{name}", self.in_bytes + self.out_bytes)
            self._all.append((name, handle))
            self._free.put_nowait((name, handle))

    async def infer(self, batch: np.ndarray,
                    result: Callable[[str, list[np.ndarray]], TeacherOutput]) -> TeacherOutput:
        name, handle = await self._free.get()
        try:
            data = np.ascontiguousarray(batch)
            shm.set_shared_memory_region(handle, [data])
            inp = triton.InferInput(self.meta.input_name, list(data.shape), "FP32")
            inp.set_shared_memory(name, data.nbytes)
            per_output = self.out_bytes // len(self.outputs)
            requested = []
            for k, out_name in enumerate(self.outputs):
                out = triton.InferRequestedOutput(out_name)
                out.set_shared_memory(name, per_output, offset=self.in_bytes + k * per_output)
                requested.append(out)
            response = await self.client.infer(self.model, [inp], outputs=requested)
            arrays = []
            for k, out_name in enumerate(self.outputs):
                spec = response.get_output(out_name)
                arrays.append(np.array(shm.get_contents_as_numpy(
                    handle, np.float32, list(spec.shape), offset=self.in_bytes + k * per_output)))
            return result(response.get_response().model_version, arrays)
        finally:
            self._free.put_nowait((name, handle))

    async def close(self) -> None:
        for name, handle in self._all:
            try:
                await self.client.unregister_system_shared_memory(name)
            finally:
                shm.destroy_shared_memory_region(handle)
        self._all.clear()

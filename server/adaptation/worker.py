"""The service's side of the weight-level adaptation worker (models/tta_worker.py).

One child process per adapting topic, started with the service's own Python. Requests are
serialised (one in flight); arrays go through files in the topic's work folder. A worker that
dies or answers an error raises TeacherUnavailable: the topic keeps labeling with the source.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from pseudostream.server.errors import TeacherUnavailable

__all__ = ["AdaptationWorker"]


class AdaptationWorker:
    """``await start(teacher_dir, method, params)``, then ``adapt``/``predict``/``undo``/...;
    ``close()`` ends the child."""

    TIMEOUT_S = 600.0  # an export of a large teacher can take minutes

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self._proc: asyncio.subprocess.Process | None = None
        self._lock = asyncio.Lock()
        self._seq = 0

    async def start(self, teacher_dir: Path, method: str, params: dict[str, Any]) -> dict[str, Any]:
        self.folder.mkdir(parents=True, exist_ok=True)
        self._proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "pseudostream.models.tta_worker",
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, limit=1 << 20)
        return await self.call("init", teacher_dir=str(teacher_dir), method=method, params=params)

    async def call(self, op: str, **args: Any) -> dict[str, Any]:
        """One request/response round trip."""
        async with self._lock:
            proc = self._proc
            if proc is None or proc.returncode is not None or proc.stdin is None or proc.stdout is None:
                raise TeacherUnavailable("the adaptation worker is not running")
            try:
                proc.stdin.write((json.dumps({"op": op, **args}) + "\n").encode())
                await proc.stdin.drain()
                line = await asyncio.wait_for(proc.stdout.readline(), self.TIMEOUT_S)
            except (OSError, asyncio.TimeoutError) as exc:
                raise TeacherUnavailable(f"adaptation worker: {op} failed: {exc!r}") from None
        if not line:
            raise TeacherUnavailable(f"adaptation worker exited (code {proc.returncode}) during {op}")
        reply = json.loads(line)
        if not reply.get("ok"):
            raise TeacherUnavailable(f"adaptation worker: {op}: {reply.get('error')}")
        return reply

    def _path(self, stem: str, suffix: str) -> Path:
        self._seq += 1
        return self.folder / f"{stem}-{self._seq % 4}{suffix}"  # a few slots, reused

    async def adapt(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
        """One update on ``x``; (source probs, adapted probs, reply) on it."""
        window, out = self._path("window", ".npy"), self._path("adapted", ".npz")
        np.save(window, np.ascontiguousarray(x, dtype=np.float32))
        reply = await self.call("adapt", window=str(window), out=str(out))
        with np.load(out) as data:
            return data["source"], data["adapted"], reply

    async def predict(self, x: np.ndarray) -> np.ndarray:
        path, out = self._path("x", ".npy"), self._path("probs", ".npz")
        np.save(path, np.ascontiguousarray(x, dtype=np.float32))
        await self.call("predict", x=str(path), out=str(out))
        with np.load(out) as data:
            return data["probs"]

    async def close(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.returncode is not None:
            return
        if proc.stdin is not None:
            proc.stdin.close()
        try:
            await asyncio.wait_for(proc.wait(), 10.0)
        except asyncio.TimeoutError:
            proc.kill()
            await proc.wait()

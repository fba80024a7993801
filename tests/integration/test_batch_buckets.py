"""The embedded backend pads batches to buckets: every bucket has its own session, which runs once
at load and only ever sees its bucket's size; each batch runs padded to its bucket, and the answer
holds the batch's own rows, as an unpadded run gives them."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from pseudostream.server.backends import make_backend
from pseudostream.server.backends.onnxruntime import OnnxRuntimeBackend
from pseudostream.server.config import TeacherConfig

pytestmark = pytest.mark.integration


class Runs(list):
    """The batch size of every ONNX Runtime run, in order; ``by_session``: the sizes each session ran."""

    def __init__(self) -> None:
        super().__init__()
        self.by_session: dict[int, set[int]] = {}


@pytest.fixture
def run_rows(monkeypatch) -> Runs:
    """Every ONNX Runtime run from here on (the real run still happens)."""
    runs = Runs()
    real_run = ort.InferenceSession.run

    def run(self, output_names, feed, *args, **kwargs):
        rows = next(iter(feed.values())).shape[0]
        runs.append(rows)
        runs.by_session.setdefault(id(self), set()).add(rows)
        return real_run(self, output_names, feed, *args, **kwargs)

    monkeypatch.setattr(ort.InferenceSession, "run", run)
    return runs


async def test_on_cpu_auto_pads_nothing(teacher_dir, digits, run_rows):
    async with OnnxRuntimeBackend(teacher_dir, intra_op_threads=1, max_batch=48) as backend:
        assert backend.providers == ["CPUExecutionProvider"] and backend.batch_buckets == ()
        await backend.infer(np.ascontiguousarray(digits.stream_x[:37]))
    assert run_rows == [37]


async def test_buckets_are_warmed_up_and_batches_padded_to_them(teacher_dir, digits, run_rows):
    x = np.ascontiguousarray(digits.stream_x[:60])
    async with OnnxRuntimeBackend(teacher_dir, intra_op_threads=1) as plain:
        expected = [await plain.infer(x[:n]) for n in (37, 1, 60, 20)]
    run_rows.clear()
    run_rows.by_session.clear()
    async with OnnxRuntimeBackend(teacher_dir, intra_op_threads=1, max_batch=48,
                                  batch_buckets="powers_of_two") as backend:
        assert backend.batch_buckets == (8, 16, 32, 48)
        assert run_rows == [8, 16, 32, 48], "each bucket runs once at load"
        got = [await backend.infer(x[:n]) for n in (37, 1, 60, 20)]
    assert run_rows[4:] == [48, 8, 60, 32], "37 rows run as 48, one as 8, 60 (above the last) as is"
    assert sorted(map(sorted, run_rows.by_session.values())) == [[8], [16], [32], [48, 60]], \
        "a session per bucket, each seeing its size alone (the largest's takes what is above it)"
    for e, g in zip(expected, got):
        assert g.logits.shape == e.logits.shape and g.features.shape == e.features.shape
        np.testing.assert_allclose(g.logits, e.logits, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(g.features, e.features, rtol=1e-5, atol=1e-5)


async def test_split_parts_are_padded_each(teacher_dir, digits, run_rows):
    x = np.ascontiguousarray(digits.stream_x[:37])
    async with OnnxRuntimeBackend(teacher_dir, intra_op_threads=1) as plain:
        expected = await plain.infer(x)
    run_rows.clear()
    async with OnnxRuntimeBackend(teacher_dir, intra_op_threads=1, workers=2, split_min_rows=8,
                                  max_batch=64, batch_buckets=[16, 32, 64]) as backend:
        got = await backend.infer(x)
    assert run_rows[3:] == [32, 32], "37 rows split 19 + 18 over two idle workers, each run as 32"
    assert got.parts == 2 and got.logits.shape == expected.logits.shape
    np.testing.assert_allclose(got.logits, expected.logits, rtol=1e-5, atol=1e-5)


async def test_the_config_reaches_the_backend(teacher_dir, run_rows):
    config = TeacherConfig(model_dir=teacher_dir, max_batch=8, batch_buckets=[4, 8],
                           provider_options={"CPUExecutionProvider": {"arena_extend_strategy": "kSameAsRequested"}})
    async with make_backend(config) as backend:
        assert backend.batch_buckets == (4, 8) and run_rows == [4, 8]
        assert "CPUExecutionProvider" in backend.provider_options

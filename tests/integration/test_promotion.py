"""Close the loop on a live service: propose, audit gate, lineage, rollback and the EMA teacher."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import grpc
import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from pseudostream.clients.client import AsyncLabelerClient
from pseudostream.server.app import LabelingServer

pytestmark = pytest.mark.integration


def perturbed(model_path, scale: float, seed: int) -> onnx.ModelProto:
    """The model with Gaussian noise of ``scale`` x each weight's std added to every float weight."""
    model = onnx.load_model(str(model_path))
    rng = np.random.default_rng(seed)
    for i, t in enumerate(model.graph.initializer):
        w = numpy_helper.to_array(t)
        if np.issubdtype(w.dtype, np.floating) and w.size > 1:
            noisy = w + scale * (w.std() or 1.0) * rng.standard_normal(w.shape)
            model.graph.initializer[i].CopyFrom(numpy_helper.from_array(noisy.astype(w.dtype), t.name))
    return model


@pytest.fixture
def audit_npz(tmp_path, digits):
    from pseudostream.models.shift import DEMO_SEVERITY, apply_shift

    path = tmp_path / "audit.npz"
    np.savez(path, x=apply_shift(digits.stream_x[-300:], severity=DEMO_SEVERITY), y=digits.stream_y[-300:])
    return path


@pytest.fixture
def weak_teacher(tmp_path, teacher_dir):
    """The demo teacher with noisy weights: the served v1 that the real teacher should beat."""
    out = tmp_path / "weak"
    shutil.copytree(teacher_dir, out)
    onnx.save_model(perturbed(teacher_dir / "model.onnx", 0.5, seed=3), str(out / "model.onnx"))
    return out


def _config(make_config, audit_npz, model_dir=None, **topic):
    teacher = {"model_dir": model_dir} if model_dir else {}
    return make_config(teachers={"digits-cnn": teacher},
                       topics={"digits": {"audit": {"path": audit_npz}, **topic}})


async def _confidences(client, x, tag):
    r = await client.label("digits", x, ids=[f"{tag}-{i}" for i in range(len(x))])
    return r.label, r.confidence


async def test_better_candidate_is_promoted_worse_rejected_and_rollback_is_exact(
        make_config, audit_npz, weak_teacher, teacher_dir, digits):
    x = np.ascontiguousarray(digits.stream_x[:64])
    async with LabelingServer(_config(make_config, audit_npz, weak_teacher)) as server:
        async with AsyncLabelerClient(server.address) as client:
            before = await _confidences(client, x, "v1")
            worse = perturbed(weak_teacher / "model.onnx", 2.0, seed=9).SerializeToString()
            rejected = await client.propose_teacher("digits", worse, trained_from=0, trained_to=10)
            assert not rejected.promoted and rejected.version == "1"
            assert rejected.candidate.accuracy < rejected.current.accuracy
            assert rejected.reason.startswith("rejected: accuracy") and rejected.current.samples == 300
            assert (await client.get_topic("digits")).teacher_version == "1"

            better = (teacher_dir / "model.onnx").read_bytes()
            promoted = await client.propose_teacher("digits", better, trained_from=10, trained_to=500,
                                                    note="round 1")
            assert promoted.promoted and promoted.version == "2", promoted.reason
            assert promoted.candidate.accuracy > promoted.current.accuracy
            state = await client.get_topic("digits")
            assert state.teacher_version == "2"
            labels2, _ = await _confidences(client, x, "v2")
            assert (labels2 == digits.stream_y[:64]).mean() > (before[0] == digits.stream_y[:64]).mean()

            back = await client.rollback_teacher("digits-cnn", "1")
            assert back.version == "1"
            after = await _confidences(client, x, "v1-again")
            assert np.array_equal(after[0], before[0]) and np.array_equal(after[1], before[1])

            history = await client.teacher_history("digits-cnn")
    records = [(r.version, r.parent, r.origin, r.decision) for r in history.records]
    assert records == [("1", "", "initial", "served"), ("", "1", "propose", "rejected"),
                       ("2", "1", "propose", "promoted"), ("1", "2", "rollback", "served")]
    promoted_rec = history.records[2]
    assert (promoted_rec.trained_from_offset, promoted_rec.trained_to_offset) == (10, 500)
    assert promoted_rec.note == "round 1" and promoted_rec.proposer == "127.0.0.1"
    assert promoted_rec.audit.accuracy == pytest.approx(promoted.candidate.accuracy)
    served_card = json.loads((server.config.work_dir / "teachers" / "digits-cnn").glob("*/teacher.json")
                             .__next__().read_text())
    assert served_card["temperature"] == pytest.approx(promoted.candidate.temperature)  # refit
    assert served_card["metrics"]["audit_accuracy"] == pytest.approx(promoted.candidate.accuracy)


async def test_bad_candidates_get_clear_errors(make_config, audit_npz, teacher_dir, tmp_path):
    from onnx import TensorProto, helper

    wrong = helper.make_model(helper.make_graph(
        [helper.make_node("Flatten", ["input"], ["features"]),
         helper.make_node("Identity", ["features"], ["logits"])], "wrong",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, 1, 4, 4])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [None, 16]),
         helper.make_tensor_value_info("features", TensorProto.FLOAT, [None, 16])]),
        opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    async with LabelingServer(_config(make_config, audit_npz)) as server:
        async with AsyncLabelerClient(server.address, retries=0) as client:
            for data, needle in ((wrong.SerializeToString(), "takes [batch, 1, 8, 8] float32"),
                                 (b"not a model", "not a loadable ONNX model"),
                                 (b"", "model_onnx is empty")):
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await client.propose_teacher("digits", data)
                assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and needle in info.value.details()
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await client.propose_teacher("nope", b"x")
            assert info.value.code() == grpc.StatusCode.NOT_FOUND
            assert (await client.get_topic("digits")).teacher_version == "1"
    async with LabelingServer(make_config()) as server:  # no audit slice: nothing can be judged
        async with AsyncLabelerClient(server.address, retries=0) as client:
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await client.propose_teacher("digits", (teacher_dir / "model.onnx").read_bytes())
            assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert "topics.digits.audit.path" in info.value.details()


async def test_ema_teacher_accumulates_then_gates(make_config, audit_npz, teacher_dir):
    served = onnx.load_model(str(teacher_dir / "model.onnx"))
    s1, s2 = perturbed(teacher_dir / "model.onnx", 0.02, 1), perturbed(teacher_dir / "model.onnx", 0.02, 2)
    config = _config(make_config, audit_npz, ema={"momentum": 0.5, "every": 2},
                     **{"audit": {"path": audit_npz, "max_accuracy_drop": 0.05, "max_ece_increase": 0.05}})
    async with LabelingServer(config) as server:
        async with AsyncLabelerClient(server.address) as client:
            first = await client.propose_teacher("digits", s1.SerializeToString())
            assert first.ema and not first.promoted and "1 of 2" in first.reason
            second = await client.propose_teacher("digits", s2.SerializeToString())
            assert second.ema and second.promoted and second.version == "2", second.reason
        ema = onnx.load_model(str(config.work_dir / "ema" / "digits.onnx"))
    weights = {t.name: numpy_helper.to_array(t) for t in ema.graph.initializer}
    for t0, t1, t2 in zip(served.graph.initializer, s1.graph.initializer, s2.graph.initializer):
        a0, a1, a2 = (numpy_helper.to_array(t).astype(np.float64) for t in (t0, t1, t2))
        expected = 0.5 * (0.5 * a0 + 0.5 * a1) + 0.5 * a2 if a0.dtype.kind == "f" else a0
        assert np.allclose(weights[t0.name], expected, atol=1e-6), t0.name


def test_cli_proposes_a_torch_checkpoint_and_shows_history(make_config, audit_npz, teacher_dir,
                                                           tmp_path, free_port):
    import yaml

    from pseudostream.models.demo_teacher import load_demo_torch_model
    from pseudostream.models.student import save_student

    ckpt = save_student(load_demo_torch_model(teacher_dir), tmp_path / "student.pt")
    port = free_port()
    config = _config(make_config, audit_npz).model_dump(mode="json")
    config["port"], config["metrics_port"] = port, None
    (tmp_path / "svc.yaml").write_text(yaml.safe_dump(config))
    cli = [sys.executable, "-m", "pseudostream.clients.cli"]
    server = subprocess.Popen(cli + ["serve", "--config", str(tmp_path / "svc.yaml")],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    target = f"127.0.0.1:{port}"
    try:
        assert f"serving on {target}" in server.stdout.readline()  # printed once ready
        done = subprocess.run(cli + ["teacher", "propose", "--topic", "digits", "--checkpoint", str(ckpt),
                                     "--trained-on", "0:64", "--target", target],
                              capture_output=True, text=True, timeout=180, check=False)
        assert done.returncode == 0, done.stdout + done.stderr[-2000:]
        result = json.loads(done.stdout)
        assert result["promoted"] and result["version"] == "2"  # the same weights: not worse
        shown = subprocess.run(cli + ["teacher", "history", "--teacher", "digits-cnn", "--target", target],
                               capture_output=True, text=True, timeout=60, check=True).stdout
        assert "serving version 2" in shown and "propose" in shown and "trained on [0, 64)" in shown
    finally:
        server.terminate()
        server.wait(timeout=30)


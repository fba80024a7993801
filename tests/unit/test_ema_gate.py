"""The EMA teacher's update by hand on a tiny ONNX model, and the audit gate's rule."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from pseudostream.server.config import AuditConfig
from pseudostream.server.ema import OnnxEma
from pseudostream.server.errors import InvalidInput
from pseudostream.server.gate import AuditFigures, passes, score


def tiny(w: np.ndarray, b: np.ndarray, name: str = "W") -> onnx.ModelProto:
    """y = x @ W + b, with W [2, 3] and b [3] as initializers."""
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", name, "b"], ["y"])], "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 3])],
        [numpy_helper.from_array(w.astype(np.float32), name), numpy_helper.from_array(b.astype(np.float32), "b")])
    return helper.make_model(graph)


def test_ema_update_matches_the_formula_by_hand():
    w0, b0 = np.arange(6.0).reshape(2, 3), np.zeros(3)
    w1, b1 = np.full((2, 3), 10.0), np.array([1.0, 2.0, 3.0])
    w2, b2 = np.full((2, 3), -2.0), np.array([0.0, 0.0, 4.0])
    ema = OnnxEma(tiny(w0, b0), momentum=0.75)
    ema.update(tiny(w1, b1))
    # theta <- 0.75 theta + 0.25 theta_s
    assert np.allclose(ema.weights()["W"], 0.75 * w0 + 0.25 * w1)
    assert np.allclose(ema.weights()["b"], [0.25, 0.5, 0.75])
    ema.update(tiny(w2, b2))
    assert np.allclose(ema.weights()["W"], 0.75 * (0.75 * w0 + 0.25 * w1) + 0.25 * w2)
    assert np.allclose(ema.weights()["b"], [0.1875, 0.375, 0.5625 + 1.0])
    assert ema.updates == 2
    model = ema.model()  # the served graph, with the EMA weights in it
    onnx.checker.check_model(model)
    assert [n.op_type for n in model.graph.node] == ["Gemm"]
    assert np.allclose(numpy_helper.to_array(model.graph.initializer[0]), ema.weights()["W"])


def test_ema_momentum_zero_takes_the_student():
    ema = OnnxEma(tiny(np.zeros((2, 3)), np.zeros(3)), momentum=0.0)
    ema.update(tiny(np.ones((2, 3)), np.ones(3)))
    assert np.array_equal(ema.weights()["W"], np.ones((2, 3)))


def test_ema_refuses_another_architecture():
    ema = OnnxEma(tiny(np.zeros((2, 3)), np.zeros(3)), momentum=0.5)
    with pytest.raises(InvalidInput, match="missing \\['W'\\]"):
        ema.update(tiny(np.zeros((2, 3)), np.zeros(3), name="V"))
    with pytest.raises(InvalidInput, match="weight 'W' is float32\\[3, 3\\]"):
        ema.update(tiny(np.zeros((3, 3)), np.zeros(3)))
    assert ema.updates == 0 and np.array_equal(ema.weights()["W"], np.zeros((2, 3)))
    with pytest.raises(ValueError):
        OnnxEma(tiny(np.zeros((2, 3)), np.zeros(3)), momentum=1.0)


def test_score_reports_accuracy_and_refit_temperature():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(2000, 4)) * 2.0
    p = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    y = np.array([rng.choice(4, p=row) for row in p])  # calibrated at T = 1 by construction
    f = score(3.0 * z, y)  # over-confident by 3: the refit temperature is about 3
    assert f.accuracy == pytest.approx((z.argmax(1) == y).mean())
    assert f.temperature == pytest.approx(3.0, rel=0.15) and f.samples == 2000 and f.ece < 0.05


def test_gate_rule():
    cfg = AuditConfig(path="unused.npz", max_accuracy_drop=0.01, max_ece_increase=0.02)
    served = AuditFigures(accuracy=0.90, ece=0.05, temperature=1.0, samples=100)
    assert passes(AuditFigures(0.895, 0.06, 1.2, 100), served, cfg)[0]  # within both margins
    ok, why = passes(AuditFigures(0.88, 0.05, 1.0, 100), served, cfg)
    assert not ok and "accuracy 0.8800 < served 0.9000" in why and "candidate: accuracy 0.8800" in why
    ok, why = passes(AuditFigures(0.95, 0.08, 1.0, 100), served, cfg)
    assert not ok and "ECE 0.0800 > served 0.0500" in why
    strict = AuditConfig(path="unused.npz")
    assert passes(served, served, strict)[0] and not passes(AuditFigures(0.8999, 0.05, 1.0, 100), served, strict)[0]


def test_negative_margin_demands_a_gain():
    served = AuditFigures(accuracy=0.90, ece=0.05, temperature=1.0, samples=200)
    cfg = AuditConfig(path="unused.npz", max_accuracy_drop=-0.004)
    assert not passes(served, served, cfg)[0]
    assert passes(AuditFigures(0.905, 0.05, 1.0, 200), served, cfg)[0]

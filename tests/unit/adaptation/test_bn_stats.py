"""bn_stats against Schneider et al. (2020): running stats = N/(N+n) source + n/(N+n) window, by
hand through two BN layers; the served model is batch-independent and exports to ONNX."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn

from pseudostream.models.card import TeacherCard
from pseudostream.models.cnn import DigitsCNN
from pseudostream.models.tta import WEIGHT_ADAPTERS, BNStatsAdapter, export_adapted
from pseudostream.server.errors import ConfigError

EPS = 1e-5


class TinyNet(nn.Module):
    """conv3x3 -> BN -> ReLU -> conv1x1 -> BN -> mean pool -> linear; returns (logits, features)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.c1, self.b1 = nn.Conv2d(1, 3, 3, padding=1, bias=False), nn.BatchNorm2d(3)
        self.c2, self.b2 = nn.Conv2d(3, 2, 1, bias=False), nn.BatchNorm2d(2)
        self.head = nn.Linear(2, 4)
        for bn, mean, var in ((self.b1, 0.5, 2.0), (self.b2, -0.25, 0.5)):
            bn.running_mean.fill_(mean)
            bn.running_var.fill_(var)
            nn.init.uniform_(bn.weight, 0.5, 1.5)
            nn.init.uniform_(bn.bias, -0.5, 0.5)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = torch.relu(self.b1(self.c1(x)))
        z = self.b2(self.c2(h)).mean(dim=(2, 3))
        return self.head(z), z


def window(n: int = 6, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).random((n, 1, 5, 5)).astype(np.float32)


def channel_stats(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and unbiased variance over batch and space, [B, C, H, W]."""
    flat = a.transpose(1, 0, 2, 3).reshape(a.shape[1], -1)
    return flat.mean(1), flat.var(1, ddof=1)


@pytest.mark.parametrize("prior", [0.0, 4.0, 16.0])
def test_mixing_formula_by_hand_through_two_layers(prior):
    net, x = TinyNet(), window()
    n = x.shape[0]
    lam = prior / (prior + n)
    adapter = BNStatsAdapter(net, bn_prior=prior)
    adapter.adapt(x)

    with torch.no_grad():
        c1 = net.c1(torch.from_numpy(x)).numpy().astype(np.float64)
    mean1, var1 = channel_stats(c1)
    exp_mean1, exp_var1 = lam * 0.5 + (1 - lam) * mean1, lam * 2.0 + (1 - lam) * var1
    np.testing.assert_allclose(adapter.model.b1.running_mean.numpy(), exp_mean1, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(adapter.model.b1.running_var.numpy(), exp_var1, rtol=1e-5, atol=1e-6)

    # Layer 2 sees layer 1 normalised with its mixed statistics.
    g1, b1 = net.b1.weight.detach().numpy(), net.b1.bias.detach().numpy()
    h = (c1 - exp_mean1[None, :, None, None]) / np.sqrt(exp_var1[None, :, None, None] + EPS)
    h = np.maximum(h * g1[None, :, None, None] + b1[None, :, None, None], 0)
    c2 = np.einsum("oc,bchw->bohw", net.c2.weight.detach().numpy()[:, :, 0, 0], h)
    mean2, var2 = channel_stats(c2)
    np.testing.assert_allclose(adapter.model.b2.running_mean.numpy(), lam * -0.25 + (1 - lam) * mean2,
                               rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(adapter.model.b2.running_var.numpy(), lam * 0.5 + (1 - lam) * var2,
                               rtol=1e-4, atol=1e-6)


def test_caller_model_untouched_and_reset_restores_source():
    net, x = TinyNet(), window()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    adapter = BNStatsAdapter(net, bn_prior=16)
    source_fp = adapter.fingerprint()
    adapter.adapt(x)
    assert adapter.fingerprint() != source_fp and adapter.windows == 1 and adapter.updates == 0
    for k, v in net.state_dict().items():
        torch.testing.assert_close(v, before[k])
    adapter.reset()
    assert adapter.fingerprint() == source_fp and adapter.windows == 0


def test_prior_zero_serves_the_window_statistics_and_is_batch_independent():
    net, x = TinyNet(), window(n=32)
    adapter = BNStatsAdapter(net, bn_prior=0)
    adapter.adapt(x)
    with torch.no_grad():
        train_mode = net.train()(torch.from_numpy(x))[0].numpy()
    # Same statistics up to the unbiased (served) vs biased (train-mode) variance: n*H*W = 800.
    np.testing.assert_allclose(adapter.logits(x), train_mode, atol=2e-3)
    np.testing.assert_allclose(adapter.logits(x[:3]), adapter.logits(x)[:3], atol=1e-5)


def test_predict_is_the_temperature_scaled_softmax():
    adapter = BNStatsAdapter(TinyNet(), temperature=2.0)
    x = window()
    z = adapter.logits(x).astype(np.float64) / 2.0
    expected = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    np.testing.assert_allclose(adapter.predict(x), expected, rtol=1e-6)


def test_registry_and_config_errors():
    assert WEIGHT_ADAPTERS.names() == ["bn_stats", "eata", "sar", "tent"]
    with pytest.raises(ConfigError, match="known: bn_stats, eata, sar, tent"):
        WEIGHT_ADAPTERS.get("cotta")
    with pytest.raises(ConfigError, match="BatchNorm"):
        BNStatsAdapter(nn.Linear(2, 2))
    with pytest.raises(ConfigError):
        BNStatsAdapter(TinyNet(), bn_prior=-1)


def test_export_adapted_matches_the_served_model(tmp_path):
    torch.manual_seed(0)
    model = DigitsCNN().eval()
    source = TeacherCard(name="digits-cnn", version="1", classes=[str(c) for c in range(10)],
                         input_name="input", input_shape=[1, 8, 8], source_prior=[0.1] * 10,
                         fingerprint="sha256:source", temperature=1.5)
    adapter = WEIGHT_ADAPTERS.get("bn_stats")(model, temperature=source.temperature)
    x = np.random.default_rng(0).random((40, 1, 8, 8)).astype(np.float32)
    adapter.adapt(x)
    card = export_adapted(adapter, tmp_path, source)
    assert TeacherCard.load(tmp_path) == card
    assert card.version == "1+bn_stats.1" and card.fingerprint == adapter.fingerprint()
    assert (card.classes, card.input_shape, card.temperature) == (source.classes, [1, 8, 8], 1.5)
    session = ort.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    logits, features = session.run(["logits", "features"], {"input": x[:7]})
    np.testing.assert_allclose(logits, adapter.logits(x[:7]), atol=1e-4)
    assert features.shape == (7, 64)

"""Teachers for benchmarks: a ResNet-18 for 3x32x32 inputs (random weights are fine for speed).

The CIFAR-style ResNet-18 (He et al. 2016): a 3x3 stem without max-pooling, four stages of two
BasicBlocks (64, 128, 256, 512 channels), global average pooling; ``forward`` returns
``(logits, features)`` like every teacher here.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from pseudostream.models.card import TeacherCard

__all__ = ["ResNet18", "build_resnet18_teacher"]


class _BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNet18(nn.Module):
    """ResNet-18 for 32x32 images; ``forward`` returns (logits, 512-d features)."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU())
        layers, cin = [], 64
        for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            layers += [_BasicBlock(cin, cout, stride), _BasicBlock(cout, cout, 1)]
            cin = cout
        self.layers = nn.Sequential(*layers)
        self.head = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = torch.flatten(nn.functional.adaptive_avg_pool2d(self.layers(self.stem(x)), 1), 1)
        return self.head(features), features


def build_resnet18_teacher(out_dir: str | Path, *, seed: int = 0) -> TeacherCard:
    """Export a randomly initialised ResNet-18 as a teacher folder (model.onnx + teacher.json)."""
    from pseudostream.models.export import export_onnx

    out = Path(out_dir)
    card_path = out / "teacher.json"
    if card_path.is_file() and (out / "model.onnx").is_file():
        return TeacherCard.load(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model = ResNet18().eval()
    export_onnx(model, torch.zeros(2, 3, 32, 32), out / "model.onnx")
    card = TeacherCard(name="resnet18", version="1", classes=[str(i) for i in range(10)],
                       input_name="input", input_shape=[3, 32, 32], source_prior=[0.1] * 10,
                       fingerprint=f"resnet18-random-seed{seed}", metrics={})
    card.save(out)
    return card

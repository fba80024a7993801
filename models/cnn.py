"""The demo teacher's network: a small CNN with BatchNorm for 8x8 single-channel digits."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["DigitsCNN"]


class DigitsCNN(nn.Module):
    """conv-BN-ReLU x2, max-pool to 4x4, conv-BN-ReLU, global average pool, then
    ``Linear(64, feature_dim) + ReLU`` (the penultimate ``features``) and ``head``.

    ``forward(x)`` returns ``(logits, features)`` with ``logits == head(features)``; adapters
    that work in feature space (T3A, feature shift) rely on that identity.
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 1, feature_dim: int = 64) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.feature_dim = feature_dim
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, 32, 3, padding=1, bias=False),
            nn.BatchNorm2d(32),
            nn.ReLU(inplace=True),
            nn.Conv2d(32, 64, 3, padding=1, bias=False),
            nn.BatchNorm2d(64),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),  # 8x8 -> 4x4
            nn.Conv2d(64, 64, 3, padding=1, bias=False),
            nn.BatchNorm2d(64),
            nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.embed = nn.Sequential(nn.Linear(64, feature_dim), nn.ReLU(inplace=True))
        self.head = nn.Linear(feature_dim, num_classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Images [B, C, 8, 8] -> (logits [B, num_classes], features [B, feature_dim])."""
        features = self.embed(self.body(x))
        return self.head(features), features

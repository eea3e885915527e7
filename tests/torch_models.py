"""Small models for the adapter tests."""

import torch
from torch import nn


class NIMA(nn.Module):
    """NIMA-style: a convolutional backbone, then dropout + linear + softmax over 10 levels."""

    def __init__(self, num_bins: int = 10):
        super().__init__()
        self.backbone = nn.Sequential(
            nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )
        self.head = nn.Sequential(nn.Dropout(0.0), nn.Linear(16, num_bins), nn.Softmax(dim=1))

    def forward(self, x):
        return self.head(self.backbone(x))


class TwoLayer(nn.Module):
    """Linear backbone + linear head, for exact checks."""

    def __init__(self, width: int = 6, out: int = 10):
        super().__init__()
        self.backbone = nn.Linear(4, width)
        self.fc = nn.Linear(width, out)

    def forward(self, x):
        return self.fc(torch.tanh(self.backbone(x)))


def distributions(size: int, num_bins: int = 10, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    counts = torch.randint(0, 20, (size, num_bins), generator=generator).float() + 0.1
    return counts / counts.sum(1, keepdim=True)

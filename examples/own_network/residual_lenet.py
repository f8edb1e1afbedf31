"""A network of your own for cnnlab: LeNet's scale with a residual block (the idea of the book's ResNet chapter).

Any ``torch.nn.Module`` trains in cnnlab when a model config names it (``conf/model/residual_lenet.yaml``):

    cd examples/own_network
    cnnlab train --config-dir conf model=residual_lenet
    cnnlab inspect --config-dir conf model=residual_lenet

Its top-level children are the rows of ``cnnlab inspect`` and of the multiply-add count in ``metrics.json``.
"""

from __future__ import annotations

import torch
from torch import nn


class Residual(nn.Module):
    """Two 3x3 convolutions with batch norm, added to their input: ``relu(x + f(x))``."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(channels),
            nn.ReLU(),
            nn.Conv2d(channels, channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(channels),
        )
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(x + self.body(x))


class ResidualLeNet(nn.Module):
    """A 5x5 convolution and max pooling (LeNet's first block, with ReLU and batch norm), a residual block, max
    pooling, then two fully connected layers."""

    def __init__(
        self, in_channels: int = 1, image_size: int = 28, channels: int = 16, hidden: int = 120, num_classes: int = 10
    ) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, channels, 5, padding=2, bias=False),
            nn.BatchNorm2d(channels),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.block = Residual(channels)
        self.pool = nn.MaxPool2d(2)
        side = image_size // 4
        self.head = nn.Sequential(
            nn.Flatten(), nn.Linear(channels * side * side, hidden), nn.ReLU(), nn.Linear(hidden, num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(self.block(self.stem(x))))

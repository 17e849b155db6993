"""LeNet-300-100 and LeNet-5 (Caffe variant), the MNIST networks of the Deep Compression paper."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class LeNet300100(nn.Module):
    """784-300-100-10 multilayer perceptron with ReLU; takes (N, 784) or (N, 1, 28, 28)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(784, 300)
        self.fc2 = nn.Linear(300, 100)
        self.fc3 = nn.Linear(100, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        return self.fc3(F.relu(self.fc2(F.relu(self.fc1(x)))))


class LeNet5(nn.Module):
    """Caffe's LeNet: conv 20@5x5, pool, conv 50@5x5, pool, fc 500, ReLU, fc 10; (N, 1, 28, 28)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 20, 5)
        self.conv2 = nn.Conv2d(20, 50, 5)
        self.fc1 = nn.Linear(800, 500)
        self.fc2 = nn.Linear(500, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(self.conv1(x.view(-1, 1, 28, 28)), 2)
        x = F.max_pool2d(self.conv2(x), 2)
        return self.fc2(F.relu(self.fc1(x.flatten(1))))

"""The LeNet of PyTorch's "Neural Networks" tutorial: 1x32x32 in, 10 out, 61,706 parameters."""

import torch
import torch.nn.functional as F
from torch import nn

INPUT_SHAPE = (1, 1, 32, 32)
NUM_CLASSES = 10  # the outputs: one per class
PARAMETER_COUNT = 61_706


class LeNet(nn.Module):
    """conv 1->6 (5x5), pool, conv 6->16 (5x5), pool, then 400 -> 120 -> 84 -> 10."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 5)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = torch.flatten(x, 1)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return self.fc3(x)

"""The fixed problem every run of a sweep solves: one random input, one one-hot target, MSE."""

import torch
from torch import nn

from tinytrain.model import INPUT_SHAPE

NUM_CLASSES = 10


def make_input(data_seed: int) -> torch.Tensor:
    """The input, from its own generator so that it does not depend on the run's seed."""
    return torch.randn(INPUT_SHAPE, generator=torch.Generator().manual_seed(data_seed))


def make_target(target_index: int) -> torch.Tensor:
    """A one-hot [1, 10] target with a 1 at target_index."""
    target = torch.zeros(1, NUM_CLASSES)
    target[0, target_index] = 1.0
    return target


loss_fn = nn.MSELoss()

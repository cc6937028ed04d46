"""The blog's problem: one fixed random 1x32x32 input, its one-hot target at target_index, MSE; no held-out set."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from torch import nn

from tinytrain.model import INPUT_SHAPE, NUM_CLASSES
from tinytrain.problems import Batch
from tinytrain.spec import RunSpec


def make_input(data_seed: int) -> torch.Tensor:
    """The input, from its own generator so that it does not depend on the run's seed."""
    return torch.randn(INPUT_SHAPE, generator=torch.Generator().manual_seed(data_seed))


def make_target(target_index: int) -> torch.Tensor:
    """A one-hot [1, 10] target with a 1 at target_index."""
    target = torch.zeros(1, NUM_CLASSES)
    target[0, target_index] = 1.0
    return target


loss_fn = nn.MSELoss()


class OneSample:
    """Every step trains on the same input; batch_size and eval_every do not apply."""

    has_test_set = False

    def __init__(self, data_seed: int, target_index: int):
        self.batch = (make_input(data_seed), torch.tensor([target_index]))

    def batches(self, seed: int) -> Iterator[Batch]:
        while True:
            yield self.batch

    def fixed_batch(self) -> Batch:
        return self.batch

    def evaluate(self, net: torch.nn.Module, loss: Callable) -> dict[str, float]:
        return {}


def make(spec: RunSpec) -> OneSample:
    return OneSample(spec.data_seed, spec.target_index)

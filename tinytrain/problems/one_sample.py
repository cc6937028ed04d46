"""The blog's problem: one fixed random input (tinytrain/problem.py) and its label target_index, no test set."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch

from tinytrain.problem import make_input
from tinytrain.problems import Batch
from tinytrain.spec import RunSpec


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

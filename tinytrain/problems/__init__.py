"""The problems a run can solve, behind one small interface: training batches, a loss, held-out metrics.

A problem is one module here with a `make(spec) -> Problem`; problem_catalogue.PROBLEMS names them (plain
data, for spec validation). This file imports torch only where a problem is made or a loss is computed.

    one-sample  the blog's: one random 1x32x32 input and one label (one_sample.py), no test set
    digits      scikit-learn's 8x8 digits upsampled to 1x32x32, minibatches, a held-out test set
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Protocol

from tinytrain.spec.catalogue import LOSSES, PROBLEMS

if TYPE_CHECKING:
    import torch

    from tinytrain.spec import RunSpec

Batch = tuple["torch.Tensor", "torch.Tensor"]  # inputs [N, 1, 32, 32], labels [N] (class indices)


class Problem(Protocol):
    """What training, evaluation and gradcheck need of a problem."""

    has_test_set: bool

    def batches(self, seed: int) -> Iterator[Batch]:
        """The training minibatches of a run, for ever; the same seed gives the same batches."""

    def fixed_batch(self) -> Batch:
        """One batch that does not depend on any run (what gradcheck differentiates)."""

    def evaluate(self, net: torch.nn.Module, loss: Callable) -> dict[str, float]:
        """Metrics of the net on the held-out set (TEST_METRICS), {} for a problem without one."""


def make_problem(spec: RunSpec) -> Problem:
    """The problem of a run, with its data (built once per process and data_seed where it costs)."""
    return importlib.import_module(PROBLEMS[spec.problem]).make(spec)


def loss_function(name: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """outputs [N, 10], labels [N] -> the mean loss: MSE against one-hot labels, or cross-entropy."""
    import torch.nn.functional as F

    from tinytrain.model import NUM_CLASSES

    if name == "mse":
        # F.one_hot of the label as float equals the one-sample target tensor, so the blog's losses keep their bits
        return lambda outputs, labels: F.mse_loss(outputs, F.one_hot(labels, NUM_CLASSES).to(outputs.dtype))
    if name == "cross_entropy":
        return F.cross_entropy
    raise ValueError(f"unknown loss {name!r}: use one of {', '.join(LOSSES)}")

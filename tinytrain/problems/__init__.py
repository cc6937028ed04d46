"""The problems a run can solve, behind one small public interface: training batches, a loss, held-out metrics.

Built-in problems are modules here with a `make(spec) -> Problem`; catalogue.PROBLEMS names them (plain
data, for spec validation). Any other class with the Problem interface is a plugin, named by import path
(`problem = "package.module:Class"`) or by an entry point of the group `tinytrain.problems`
(docs/plugins.md). This file imports torch only where a problem is made or a loss is computed.

    one-sample  the blog's: one random 1x32x32 input and one label (one_sample.py), no test set
    digits      scikit-learn's 8x8 digits upsampled to 1x32x32, minibatches, a held-out test set
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Protocol

from tinytrain import plugins
from tinytrain.spec.catalogue import LOSSES, PROBLEMS

if TYPE_CHECKING:
    import torch

    from tinytrain.spec import RunSpec

Batch = tuple["torch.Tensor", "torch.Tensor"]  # inputs [N, ...] for the net, labels [N] (class indices)


class Problem(Protocol):
    """What training, evaluation and gradcheck need of a problem: the public interface of a problem plugin.

    A plugin class is built as `Class(**settings)`: its constructor's parameters are its own settings
    (`[problem_settings]` in an experiment, checked against the signature and recorded as params), except
    `data_seed` and `batch_size`, which tinytrain passes from the experiment when the constructor names them.
    Everything a run computes must follow from those and the seeds given here, so that runs reproduce.
    """

    has_test_set: bool  # evaluate() measures something (plugins may leave it out: True)

    def batches(self, seed: int) -> Iterator[Batch]:
        """The training minibatches of a run, for ever; the same seed gives the same batches."""

    def fixed_batch(self) -> Batch:
        """One batch that does not depend on any run (what gradcheck differentiates)."""

    def evaluate(self, net: torch.nn.Module, loss: Callable) -> dict[str, float]:
        """Metrics of the net on the held-out set, e.g. test_loss and test_accuracy; {} for none.

        Each is logged at every eval_every steps and at the end, with its last value as final_<name>."""

    # Optional: `model(self) -> torch.nn.Module`, the net to train, built right after torch.manual_seed(seed)
    # (default: the tutorial LeNet, 1x32x32 in, 10 classes out).


def make_problem(spec: RunSpec) -> Problem:
    """The problem of a run, with its data (built once per process and data_seed where it costs)."""
    if spec.problem in PROBLEMS:
        return importlib.import_module(PROBLEMS[spec.problem]).make(spec)
    return make_plugin_problem(problem_class_path(spec.problem), spec)


def problem_class_path(name: str) -> str:
    """The import path of a plugin problem's name (an import path, or an installed entry point's name)."""
    return plugins.installed_class_path(name, plugins.PROBLEM_GROUP, "problem")


def make_plugin_problem(path: str, spec: RunSpec) -> Problem:
    problem_class = plugins.problem_class(path)
    accepted = inspect.signature(problem_class).parameters
    given = {name: getattr(spec, name) for name in plugins.PROBLEM_INPUTS if name in accepted}
    return problem_class(**given, **dict(spec.problem_settings))


def make_net(problem: Problem) -> torch.nn.Module:
    """The problem's own net, or the LeNet (call it right after seeding: the initial weights are the seed's)."""
    model = getattr(problem, "model", None)
    if model is not None:
        return model()
    from tinytrain.model import LeNet

    return LeNet()


def has_test_set(problem: Problem) -> bool:
    return getattr(problem, "has_test_set", True)


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

"""The gradient check: autograd's gradients of the net and loss against central finite differences in float64."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from tinytrain.spec import RunSpec


@dataclass
class TensorCheck:
    name: str
    entries: int  # how many entries were checked
    max_relative_error: float
    max_absolute_error: float

    def passed(self, tolerance: float) -> bool:
        return self.max_relative_error <= tolerance


def gradient_check(
    net_factory: Callable[[], torch.nn.Module] | None = None,
    seed: int = 0,
    data_seed: int = 0,
    target_index: int = 3,
    entries_per_tensor: int | None = 200,
    eps: float = 1e-6,
    problem: str = "one-sample",
    loss: str = "mse",
    batch_size: int = 16,
) -> list[TensorCheck]:
    """Autograd's gradient of the loss against central finite differences, in float64, per parameter tensor.

    Each checked entry's relative error is |fd - ad| / max(|fd|, |ad|, 1e-10). With entries_per_tensor,
    a fixed random sample of each larger tensor is checked (None: every entry; about a minute for LeNet).
    The data is the problem's fixed batch: the one-sample input, or the first batch_size training images;
    a plugin problem's fixed_batch() at its default settings, with its own net if it brings one.
    """
    from tinytrain.problems import loss_function, make_net, make_problem
    from tinytrain.spec.catalogue import PROBLEMS
    from tinytrain.spec.plugins import Plugins, check_problem

    settings = {}
    if problem not in PROBLEMS:  # a plugin: its settings at their defaults (checked: none may be required)
        found = Plugins()
        check_problem(problem, {}, found)
        settings = found.problem(problem).defaults
    where = RunSpec(
        optimizer="sgd",
        kind="sgd",
        lr=1.0,
        seed=seed,
        data_seed=data_seed,
        target_index=target_index,
        problem=problem,
        loss=loss,
        batch_size=batch_size,
        problem_settings=tuple(sorted(settings.items())),
    )
    made = make_problem(where)
    x, labels = made.fixed_batch()
    x, loss_of = x.double(), loss_function(loss)
    torch.manual_seed(seed)
    net = (net_factory or (lambda: make_net(made)))().double()

    def objective() -> torch.Tensor:
        return loss_of(net(x), labels)

    net.zero_grad()
    objective().backward()
    sampler = torch.Generator().manual_seed(seed)
    checks = []
    for name, parameter in net.named_parameters():
        count = parameter.numel()
        if entries_per_tensor is None or count <= entries_per_tensor:
            indices = torch.arange(count)
        else:
            indices = torch.randperm(count, generator=sampler)[:entries_per_tensor]
        checks.append(_check_tensor(name, parameter, indices.tolist(), objective, eps))
    return checks


def _check_tensor(
    name: str, parameter: torch.nn.Parameter, indices: list[int], objective: Callable[[], torch.Tensor], eps: float
) -> TensorCheck:
    """The worst errors over the given entries of one parameter tensor (its .grad holds autograd's gradient)."""
    flat, analytic = parameter.data.view(-1), parameter.grad.view(-1)
    worst_relative = worst_absolute = 0.0
    with torch.no_grad():
        for index in indices:
            original = flat[index].item()
            flat[index] = original + eps
            plus = objective().item()
            flat[index] = original - eps
            minus = objective().item()
            flat[index] = original
            numeric = (plus - minus) / (2 * eps)
            exact = analytic[index].item()
            absolute = abs(numeric - exact)
            worst_absolute = max(worst_absolute, absolute)
            worst_relative = max(worst_relative, absolute / max(abs(numeric), abs(exact), 1e-10))
    return TensorCheck(name, len(indices), worst_relative, worst_absolute)

"""Checks of trust: re-run a logged run from its record alone, and check autograd against finite differences.

Pure torch and plain data: what a run's record says comes in through tracking.read_logged_run.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from dataclasses import dataclass

import torch

from tinytrain.spec import RunSpec
from tinytrain.train import StateDict, train

# What MLflow keeps of a non-finite metric: NaN as NaN, +-inf as +-the largest float.
STORED_INF = sys.float_info.max


@dataclass
class Difference:
    where: str  # "step 17", "checkpoint step 100, tensor fc1.weight"
    logged: float
    retrained: float

    @property
    def size(self) -> float:
        return abs(self.logged - self.retrained)


@dataclass
class Verdict:
    run_id: str
    steps_compared: int
    tensors_compared: int
    difference: Difference | None
    notes: list[str]
    what: str = "losses"  # what steps_compared counts

    @property
    def identical(self) -> bool:
        return self.difference is None

    def describe(self) -> str:
        if self.difference is None:
            checkpoint = (f" and {self.tensors_compared} checkpoint tensors" if self.tensors_compared
                          else " (no checkpoint: the run diverged)")
            return (f"identical: run {self.run_id} retrained from its record gives all {self.steps_compared} "
                    f"logged {self.what}{checkpoint} bit for bit")
        d = self.difference
        return (f"differs at {d.where}: logged {d.logged!r}, retrained {d.retrained!r} "
                f"(difference {d.size:.3g}); {self.steps_compared} values compared")


def as_stored(value: float) -> float:
    """A loss as MLflow stores it (inf clamped to the largest float)."""
    if math.isinf(value):
        return math.copysign(STORED_INF, value)
    return value


def same_bits(logged: float, retrained: float) -> bool:
    retrained = as_stored(retrained)
    return logged == retrained or (math.isnan(logged) and math.isnan(retrained))


def reproduce(run_id: str, spec: RunSpec, logged_losses: list[float], logged_checkpoints: dict[int, StateDict],
              recorded_environment: dict[str, str],
              logged_metrics: dict[str, list[tuple[int, float]]] | None = None) -> Verdict:
    """Train the spec again and compare every logged loss, test metric and checkpoint tensor, bit for bit."""
    notes = [f"recorded {name} {recorded_environment[key]}, running {current}"
             for name, key, current in (("torch", "tinytrain.torch", torch.__version__),)
             if recorded_environment.get(key) not in (None, current)]
    result = train(spec)
    for step, (logged, retrained) in enumerate(zip(logged_losses, result.losses, strict=False)):
        if not same_bits(logged, retrained):
            return Verdict(run_id, step + 1, 0, Difference(f"step {step}", logged, retrained), notes)
    if len(logged_losses) != len(result.losses):
        step = min(len(logged_losses), len(result.losses))
        notes.append(f"the record has {len(logged_losses)} losses, the retrained run {len(result.losses)}")
        return Verdict(run_id, step, 0, Difference(f"step {step} (one of the two ends there)", math.nan, math.nan),
                       notes)
    compared = len(logged_losses)
    for name, series in sorted((logged_metrics or {}).items()):
        retrained_series = result.metrics.get(name, {})
        for step, logged in series:
            compared += 1
            if step not in retrained_series or not same_bits(logged, retrained_series[step]):
                return Verdict(run_id, compared, 0, Difference(
                    f"{name} at step {step}", logged, retrained_series.get(step, math.nan)), notes)
        if len(series) != len(retrained_series):
            notes.append(f"the record has {len(series)} values of {name}, the retrained run {len(retrained_series)}")
            return Verdict(run_id, compared, 0, Difference(f"{name} (one of the two ends earlier)", math.nan,
                                                           math.nan), notes)
    retrained_checkpoints = dict(result.checkpoints)
    if result.final_weights is not None:
        retrained_checkpoints[len(result.losses) - 1] = result.final_weights
    tensors = 0
    for step, weights in sorted(logged_checkpoints.items()):
        if step not in retrained_checkpoints:
            notes.append(f"the retrained run has no checkpoint at step {step}")
            return Verdict(run_id, compared, tensors,
                           Difference(f"checkpoint step {step}", math.nan, math.nan), notes)
        for name, logged in weights.items():
            retrained = retrained_checkpoints[step][name]
            tensors += 1
            if not torch.equal(logged, retrained):
                index = int((logged != retrained).flatten().nonzero()[0])
                return Verdict(run_id, compared, tensors, Difference(
                    f"checkpoint step {step}, tensor {name}[{index}]",
                    float(logged.flatten()[index]), float(retrained.flatten()[index])), notes)
    return Verdict(run_id, compared, tensors, None, notes, "losses and test metrics" if logged_metrics else "losses")


# ---------------------------------------------------------------------------------------------------------
# Gradient check


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
    The data is the problem's fixed batch: the one-sample input, or the first batch_size training images.
    """
    from tinytrain.model import LeNet
    from tinytrain.problems import loss_function, make_problem

    where = RunSpec(optimizer="sgd", kind="sgd", lr=1.0, seed=seed, data_seed=data_seed, target_index=target_index,
                    problem=problem, loss=loss, batch_size=batch_size)
    x, labels = make_problem(where).fixed_batch()
    x, loss_of = x.double(), loss_function(loss)
    torch.manual_seed(seed)
    net = (net_factory or LeNet)().double()

    def objective() -> torch.Tensor:
        return loss_of(net(x), labels)

    net.zero_grad()
    objective().backward()
    sampler = torch.Generator().manual_seed(seed)
    checks = []
    for name, parameter in net.named_parameters():
        flat, analytic = parameter.data.view(-1), parameter.grad.view(-1)
        count = flat.numel()
        if entries_per_tensor is None or count <= entries_per_tensor:
            indices = torch.arange(count)
        else:
            indices = torch.randperm(count, generator=sampler)[:entries_per_tensor]
        worst_relative = worst_absolute = 0.0
        with torch.no_grad():
            for index in indices.tolist():
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
        checks.append(TensorCheck(name, len(indices), worst_relative, worst_absolute))
    return checks

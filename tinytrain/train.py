"""train(spec) -> RunResult: one run of the experiment, in plain torch (no MLflow, no click)."""

from __future__ import annotations

import time

import torch

from tinytrain.model import LeNet
from tinytrain.optimizers import build_optimizer
from tinytrain.problem import loss_fn, make_input, make_target
from tinytrain.results import DIVERGED, FINISHED, RunResult, diverges, failed_result
from tinytrain.spec import RunSpec

StateDict = dict[str, torch.Tensor]


def configure_runtime(threads: int, mkldnn: bool) -> None:
    """The settings that decide the bits of a result besides the spec itself; every run sets them."""
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    torch.backends.mkldnn.enabled = mkldnn
    torch.use_deterministic_algorithms(True)


def runtime_settings() -> dict[str, str]:
    """What configure_runtime set, as it stands in this process (recorded with every run)."""
    return {
        "torch_threads": str(torch.get_num_threads()),
        "mkldnn_enabled": str(torch.backends.mkldnn.enabled),
        "deterministic_algorithms": str(torch.are_deterministic_algorithms_enabled()),
    }


def snapshot(net: torch.nn.Module) -> StateDict:
    return {name: tensor.detach().clone() for name, tensor in net.state_dict().items()}


def initial_net(spec: RunSpec) -> LeNet:
    """The net of a run as it starts: seeded right before it is built."""
    torch.manual_seed(spec.seed)
    return LeNet()


def train(spec: RunSpec) -> RunResult:
    """Train one run: for each step zero_grad, forward, loss, backward, step; then one more forward."""
    configure_runtime(spec.threads, spec.mkldnn)
    started = time.perf_counter()
    x, target = make_input(spec.data_seed), make_target(spec.target_index)
    net = initial_net(spec)
    optimizer = build_optimizer(spec.kind, net.parameters(), spec.lr, spec.optimizer_kwargs)
    losses: list[float] = []
    checkpoints: dict[int, StateDict] = {}
    for step in range(spec.steps):
        optimizer.zero_grad()
        loss = loss_fn(net(x), target)
        losses.append(loss.item())
        if diverges(losses[-1], losses[0], spec.diverge_above):
            return RunResult(spec, losses, DIVERGED, train_seconds=time.perf_counter() - started,
                             runtime=runtime_settings())
        loss.backward()
        optimizer.step()
        done = step + 1
        if spec.checkpoint_every and done % spec.checkpoint_every == 0 and done < spec.steps:
            checkpoints[done] = snapshot(net)
    with torch.no_grad():
        losses.append(loss_fn(net(x), target).item())
    seconds = time.perf_counter() - started
    if diverges(losses[-1], losses[0], spec.diverge_above):
        return RunResult(spec, losses, DIVERGED, train_seconds=seconds, runtime=runtime_settings())
    return RunResult(spec, losses, FINISHED, snapshot(net), checkpoints, seconds, runtime=runtime_settings())


def train_safely(spec: RunSpec) -> RunResult:
    """train(), with an exception turned into a failed result so that a sweep goes on."""
    try:
        return train(spec)
    except Exception as error:  # noqa: BLE001 - any error of one run must not end the sweep
        return failed_result(spec, error)


def evaluate(weights: StateDict, data_seed: int, target_index: int, threads: int = 1, mkldnn: bool = False) -> float:
    """The loss of given weights on the experiment's input and target, under the runs' runtime settings."""
    configure_runtime(threads, mkldnn)
    net = LeNet()
    net.load_state_dict(weights)
    with torch.no_grad():
        return loss_fn(net(make_input(data_seed)), make_target(target_index)).item()

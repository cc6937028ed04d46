"""train(spec) -> RunResult: one run of the experiment, in plain torch (no MLflow, no click)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path

import torch

from tinytrain.engines.state import latest_state, restore, state_bytes, training_state, write_state
from tinytrain.model import LeNet
from tinytrain.optimizers import build_optimizer
from tinytrain.problems import loss_function as problem_loss
from tinytrain.problems import make_problem
from tinytrain.problems.one_sample import loss_fn, make_input, make_target
from tinytrain.results import DIVERGED, FINISHED, STOPPED, RunResult, diverges, failed_result
from tinytrain.spec import RunSpec

StateDict = dict[str, torch.Tensor]


def configure_runtime(threads: int, mkldnn: bool) -> None:
    """The settings that decide the bits of a result besides the spec itself; every run sets them."""
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    torch.backends.mkldnn.enabled = mkldnn
    if not torch.are_deterministic_algorithms_enabled():
        # The switch eager kernels read. torch.use_deterministic_algorithms also sets inductor's flag, for
        # torch.compile, which tinytrain never uses, and importing inductor costs a second of CPU per process.
        torch._C._set_deterministic_algorithms(True)


def runtime_settings() -> dict[str, str]:
    """What configure_runtime set, as it stands in this process, and the engine (recorded with every run)."""
    return {
        "engine": "sequential",
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


@contextlib.contextmanager
def evaluation_mode(optimizer) -> Iterator[None]:
    """The weights to evaluate: schedule-free optimizers train on one sequence of weights and are evaluated
    (and checkpointed) on their average, which optimizer.eval() puts in the net and train() takes back."""
    switches = hasattr(optimizer, "eval") and hasattr(optimizer, "train")
    if switches:
        optimizer.eval()
    try:
        yield
    finally:
        if switches:
            optimizer.train()


def train(spec: RunSpec) -> RunResult:
    """Train one run: per step a minibatch, zero_grad, forward, loss, backward, step; then one more forward.

    That last forward (no update) is on the last step's minibatch: losses[steps] (final_loss) is the loss
    after the last update on the data the last step trained on, as in the blog's one-sample measurement.

    With a state folder (spec.state_folder) the run continues from the latest training state of its lineage
    (engines/state.py) at or before where it ends, and saves its state every checkpoint_every steps and where
    it ends. With stop_at = k < steps it stops before step k's update, as the budget stops a run: it records
    step k's loss (and held-out metrics) as a straight run would, and ends STOPPED with the weights after k
    updates; continuing it redoes step k, so every number equals the straight run's.
    """
    configure_runtime(spec.threads, spec.mkldnn)
    started = time.perf_counter()
    problem = make_problem(spec)
    loss_of = problem_loss(spec.loss)
    batches = problem.batches(spec.seed)
    net = initial_net(spec)
    optimizer = build_optimizer(spec.kind, list(net.named_parameters()), spec.lr, spec.optimizer_kwargs)
    end = spec.stop_step
    losses: list[float] = []
    checkpoints: dict[int, StateDict] = {}
    metrics: dict[str, dict[int, float]] = {}
    first, earlier_seconds = 0, 0.0
    saved = _SavedStates(spec)
    # A stop redoes its step from a state there; a run to its end needs its last step's batch for the last forward
    at_most = end if end < spec.steps else spec.steps - 1
    if saved.enabled and (state := latest_state(spec.state_folder, spec.lineage, at_most)) is not None:
        losses, metrics, earlier_seconds = restore(state, net, optimizer, batches)
        first = saved.resumed_from = state["step"]

    def measure(step: int) -> None:
        with evaluation_mode(optimizer):
            for name, value in problem.evaluate(net, loss_of).items():
                metrics.setdefault(name, {})[step] = value

    def ended(outcome: str, weights: StateDict | None = None) -> RunResult:
        return RunResult(
            spec,
            losses,
            outcome,
            weights,
            checkpoints if weights else {},
            earlier_seconds + time.perf_counter() - started,
            runtime=runtime_settings() | saved.tags(),
            metrics=metrics,
            state=saved.final,
        )

    def save(step: int) -> None:
        seconds = earlier_seconds + time.perf_counter() - started
        saved.save(step, training_state(step, net, optimizer, batches, losses, metrics, seconds))

    for step in range(first, spec.steps):
        if step == end:  # stopped by the budget: the state before this step, then its loss as a straight run logs it
            save(step)
        if problem.has_test_set and spec.eval_every and step % spec.eval_every == 0:
            measure(step)
        x, labels = next(batches)
        optimizer.zero_grad()
        loss = loss_of(net(x), labels)
        losses.append(loss.item())
        if diverges(losses[-1], losses[0], spec.diverge_above):
            saved.discard()
            return ended(DIVERGED)
        if step == end:
            with evaluation_mode(optimizer):
                return ended(STOPPED, snapshot(net))
        loss.backward()
        optimizer.step()
        done = step + 1
        if spec.checkpoint_every and done % spec.checkpoint_every == 0 and done < spec.steps:
            with evaluation_mode(optimizer):
                checkpoints[done] = snapshot(net)
            if done < end:
                save(done)
    if saved.enabled:
        save(spec.steps)  # before the last forward, which draws no batch and changes no state
    with evaluation_mode(optimizer), torch.no_grad():
        losses.append(loss_of(net(x), labels).item())
        weights = snapshot(net)
    if problem.has_test_set:
        measure(spec.steps)
    if diverges(losses[-1], losses[0], spec.diverge_above):
        saved.discard()
        return ended(DIVERGED)
    return ended(FINISHED, weights)


class _SavedStates:
    """The training states one training saves: each written whole to the state folder, the ones it wrote
    before dropped as soon as a later one is there (the one it continued from stays: a rung's state is
    another run's start), and the last kept as bytes for the run's record."""

    def __init__(self, spec: RunSpec):
        self.spec = spec
        self.enabled = bool(spec.state_folder)
        self.written: list[Path] = []
        self.final: bytes | None = None
        self.resumed_from: int | None = None

    def save(self, step: int, state: dict) -> None:
        if not self.enabled:
            return
        data = state_bytes(state)
        path = write_state(self.spec.state_folder, self.spec.lineage, step, data)
        for older in self.written:
            if older != path:
                older.unlink(missing_ok=True)
        self.written, self.final = [path], data

    def discard(self) -> None:
        """A diverged run has nothing to continue: drop what this training wrote."""
        for path in self.written:
            path.unlink(missing_ok=True)
        self.written, self.final = [], None

    def tags(self) -> dict[str, str]:
        return {} if self.resumed_from is None else {"continued_from_step": str(self.resumed_from)}


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

"""train(spec) -> RunResult: one run of the experiment, in plain torch (no MLflow, no click).

The one use of a private torch API in tinytrain is here (configure_runtime): torch._C._set_deterministic_algorithms,
the switch eager kernels read. The public torch.use_deterministic_algorithms sets it too, but also sets
inductor's flag for torch.compile (which tinytrain never uses), and importing inductor costs about a second of
CPU in every process that trains; both give the same bits.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path

import torch

from tinytrain import plugins
from tinytrain.engines.recipe import Schedules
from tinytrain.engines.state import latest_state, restore, state_bytes, training_state, write_state
from tinytrain.model import LeNet
from tinytrain.optimizers import OPTIMIZERS, build_optimizer, plugin_class_path
from tinytrain.problems import Problem, has_test_set, make_net, make_problem, problem_class_path
from tinytrain.problems import loss_function as problem_loss
from tinytrain.problems.one_sample import loss_fn, make_input, make_target
from tinytrain.results import DIVERGED, FINISHED, STOPPED, RunResult, StateDict, diverges, failed_result
from tinytrain.spec import RunSpec
from tinytrain.spec.catalogue import PROBLEMS


def configure_runtime(threads: int, mkldnn: bool) -> None:
    """The settings that decide the bits of a result besides the spec itself; every run sets them."""
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    torch.backends.mkldnn.enabled = mkldnn
    if not torch.are_deterministic_algorithms_enabled():
        torch._C._set_deterministic_algorithms(True)  # private: see the module's docstring


def warm_up() -> None:
    """Make a throwaway optimizer: torch.optim's first construction imports torch._dynamo (about 2 s of CPU),
    which a sweep then pays before its writer has answered rather than at its first run. Nothing it does
    reaches a result: no random number is drawn, no global setting changed."""
    torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)


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


def initial_net(spec: RunSpec, problem: Problem | None = None) -> torch.nn.Module:
    """The net of a run as it starts (the problem's own, or the LeNet): seeded right before it is built."""
    torch.manual_seed(spec.seed)
    return LeNet() if problem is None else make_net(problem)


def plugin_provenance(spec: RunSpec) -> dict[str, str]:
    """Where a run's plugin classes come from, as this process imported them (recorded as tags)."""
    found = {}
    if spec.kind not in OPTIMIZERS:
        found |= plugins.provenance(plugin_class_path(spec.kind), "optimizer")
    if spec.problem not in PROBLEMS:
        found |= plugins.provenance(problem_class_path(spec.problem), "problem")
    return found


# The runtime tag (tinytrain.evaluation) of a run whose optimizer switches weights to be evaluated: how they
# came back, exactly or through optimizer.train()'s round trip (see evaluation_mode)
EVALUATION, EXACT_EVALUATION, ROUND_TRIP_EVALUATION = "evaluation", "exact", "round-trip"


def switches_weights(optimizer) -> bool:
    """Whether an optimizer is evaluated on other weights than it trains (schedule-free: eval() and train())."""
    return hasattr(optimizer, "eval") and hasattr(optimizer, "train")


@contextlib.contextmanager
def evaluation_mode(optimizer, round_trip: bool = False) -> Iterator[None]:
    """The weights to evaluate: schedule-free optimizers train on one sequence of weights and are evaluated
    (and checkpointed) on their average, which optimizer.eval() puts in the net and train() takes back.

    train() computes the training weights back from the average in floating point, which is not eval()'s
    exact inverse: the training weights are kept here and put back bit for bit, so that evaluating
    (eval_every, checkpoint_every, a budget's stop) never changes what a run computes. `round_trip` leaves
    them to train(), as runs recorded before this were trained (reproduce asks for it)."""
    switches = switches_weights(optimizer)
    kept: list[tuple[torch.Tensor, torch.Tensor]] = []
    if switches:
        if not round_trip:
            kept = [(p, p.detach().clone()) for group in optimizer.param_groups for p in group["params"]]
        optimizer.eval()
    try:
        yield
    finally:
        if switches:
            optimizer.train()
            with torch.no_grad():
                for parameter, weights in kept:
                    parameter.copy_(weights)


def evaluation_runtime(optimizer, spec: RunSpec) -> dict[str, str]:
    """The runtime tag of an optimizer that switches weights to be evaluated: how they come back."""
    if not switches_weights(optimizer):
        return {}
    return {EVALUATION: ROUND_TRIP_EVALUATION if spec.round_trip_evaluation else EXACT_EVALUATION}


def train(spec: RunSpec) -> RunResult:
    """Train one run: per step a minibatch, zero_grad, forward, loss, backward, clipping, step, the scheduler's
    step; then one more forward. With a schedule the lr each step uses is logged as `lr` (before the step); with
    clipping the gradients' total norm before clipping (clip_grad_norm_'s return) as `grad_norm`.

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
    evaluated = has_test_set(problem)
    net = initial_net(spec, problem)
    optimizer = build_optimizer(spec.kind, list(net.named_parameters()), spec.lr, spec.optimizer_kwargs)
    schedules = Schedules(optimizer, spec)
    parameters = list(net.parameters())
    end = spec.stop_step
    losses: list[float] = []
    provenance = plugin_provenance(spec)
    checkpoints: dict[int, StateDict] = {}
    metrics: dict[str, dict[int, float]] = {}
    first, earlier_seconds = 0, 0.0
    saved = _SavedStates(spec)
    # A stop redoes its step from a state there; a run to its end needs its last step's batch for the last forward
    at_most = end if end < spec.steps else spec.steps - 1
    if saved.enabled and (state := latest_state(spec.state_folder, spec.lineage, at_most)) is not None:
        losses, metrics, earlier_seconds = restore(state, net, optimizer, batches, scheduler=schedules)
        first = saved.resumed_from = state["step"]

    def measure(step: int) -> None:
        with evaluation_mode(optimizer, spec.round_trip_evaluation):
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
            runtime=runtime_settings() | evaluation_runtime(optimizer, spec) | provenance | saved.tags(),
            metrics=metrics,
            state=saved.final,
        )

    def save(step: int) -> None:
        seconds = earlier_seconds + time.perf_counter() - started
        state = training_state(step, net, optimizer, batches, losses, metrics, seconds, scheduler=schedules)
        saved.save(step, state)

    for step in range(first, spec.steps):
        if step == end:  # stopped by the budget: the state before this step, then its loss as a straight run logs it
            save(step)
        if evaluated and spec.eval_every and step % spec.eval_every == 0:
            measure(step)
        x, labels = next(batches)
        optimizer.zero_grad()
        loss = loss_of(net(x), labels)
        losses.append(loss.item())
        if diverges(losses[-1], losses[0], spec.diverge_above):
            saved.discard()
            return ended(DIVERGED)
        if step == end:
            with evaluation_mode(optimizer, spec.round_trip_evaluation):
                return ended(STOPPED, snapshot(net))
        loss.backward()
        if schedules.schedulers:
            metrics.setdefault("lr", {})[step] = schedules.lr
        if spec.clip_grad_norm:
            norm = torch.nn.utils.clip_grad_norm_(parameters, spec.clip_grad_norm)
            metrics.setdefault("grad_norm", {})[step] = norm.item()
        optimizer.step()
        schedules.step()
        done = step + 1
        if spec.checkpoint_every and done % spec.checkpoint_every == 0 and done < spec.steps:
            with evaluation_mode(optimizer, spec.round_trip_evaluation):
                checkpoints[done] = snapshot(net)
            if done < end:
                save(done)
    if saved.enabled:
        save(spec.steps)  # before the last forward, which draws no batch and changes no state
    with evaluation_mode(optimizer, spec.round_trip_evaluation), torch.no_grad():
        losses.append(loss_of(net(x), labels).item())
        weights = snapshot(net)
    if evaluated:
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

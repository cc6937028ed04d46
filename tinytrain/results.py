"""What a run produced, in plain values: every executor returns it, every recorder writes it.

No torch import here: the weights are whatever the training engine holds (tensors, or arrays on their way
to the writer process), so executors, tracking and reports can type and build results without torch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from tinytrain.spec import RunSpec

FINISHED, DIVERGED, FAILED = "finished", "diverged", "failed"
STOPPED = "stopped"  # stopped early by a budget (successive halving): neither finished nor diverged
OUTCOMES = (FINISHED, DIVERGED, FAILED, STOPPED)
# What a budget adds to a run's runtime (each tagged tinytrain.<name>): the rung it reached, where it stopped
RUNG, STOPPED_AT = "rung", "stopped_at"
LEGACY_FINISHED = "converged"  # what stores written before diverge_above call a finished run


def current_outcome(outcome: str | None) -> str | None:
    """A recorded outcome in today's names: converged (an older store's) is finished."""
    return FINISHED if outcome == LEGACY_FINISHED else outcome


StateDict = dict[str, Any]  # parameter name -> tensor (torch.Tensor where training made it)

# Metrics that measure the machine, not the training: wall time is never the same twice, so `reproduce`
# compares every logged metric but these.
TIMING_METRICS = ("train_seconds",)
# Metrics a finished run also logs for the MLflow UI's views, derived from its losses; `reproduce` checks the
# losses they come from, not them (stores written before have none).
VIEW_METRICS = ("log10_final_loss", "steps_to_target")
TARGET = 1e-3  # the default loss that "time to target" waits for
LOSS_FLOOR = 1e-45  # a final loss of exactly 0 counts as float32's smallest positive value in log10


def log10_loss(loss: float) -> float:
    return math.log10(max(loss, LOSS_FLOOR))


def steps_to_target(losses: Sequence[float], target: float) -> int | None:
    """The first step whose loss is at or below target; None if the run never got there."""
    return next((step for step, loss in enumerate(losses) if loss <= target), None)


# Metrics of the training recipe, at every step (the lr a step used, the gradient norm before clipping): a
# curve, not a result, so no final_<name> of their own.
STEP_METRICS = ("lr", "grad_norm")


@dataclass
class RunResult:
    """What a run produced: the loss at every step, its outcome and the weights to checkpoint."""

    spec: RunSpec
    losses: list[float]  # losses[i] is the loss before step i's update; losses[steps] after the last
    outcome: str  # finished, diverged (a non-finite or too large loss ended it), failed (it raised), stopped
    final_weights: StateDict | None = None  # None for a diverged or failed run: nothing to checkpoint
    checkpoints: dict[int, StateDict] = field(default_factory=dict)  # step -> weights, every checkpoint_every
    train_seconds: float = 0.0
    error: str | None = None
    runtime: dict[str, str] = field(default_factory=dict)  # threads and switches it actually ran with
    # Metrics besides the training loss, name -> step -> value: test_loss and test_accuracy of the weights
    # before step's update, every eval_every steps, and of the final weights at step `steps`.
    metrics: dict[str, dict[int, float]] = field(default_factory=dict)
    # The training state where it ended (engines/state.py), as the bytes of its weights-only file: logged
    # beside the checkpoint when the run saves states (a state folder), None otherwise.
    state: bytes | None = None

    @property
    def initial_loss(self) -> float:
        return self.losses[0] if self.losses else math.nan

    @property
    def final_loss(self) -> float:
        return self.losses[-1] if self.losses else math.nan

    @property
    def final_step(self) -> int:
        return len(self.losses) - 1

    def view_metrics(self) -> dict[str, float]:
        """VIEW_METRICS of a finished run: its final loss in decades (the UI's parallel coordinates have linear
        axes) and the first step at or below TARGET, if it got there. None for a diverged or failed run."""
        if self.outcome != FINISHED or not self.losses:
            return {}
        metrics = {"log10_final_loss": log10_loss(self.final_loss)}
        reached = steps_to_target(self.losses, TARGET)
        if reached is not None:
            metrics["steps_to_target"] = float(reached)
        return metrics

    def logged_metrics(self) -> dict[str, list[tuple[int, float]]]:
        """Every metric a run logs, name -> [(step, value)]: what the store writes and `reproduce` checks.

        The loss, its first and last value, the wall time, and whatever else the problem measured (metrics)
        with its last value as final_<name>. A metric added here is logged and, unless it is in
        TIMING_METRICS, checked bit for bit.
        """
        logged: dict[str, list[tuple[int, float]]] = {"loss": list(enumerate(self.losses))}
        if self.losses:
            logged["initial_loss"] = [(0, self.initial_loss)]
            logged["final_loss"] = [(self.final_step, self.final_loss)]
        logged["train_seconds"] = [(0, self.train_seconds)]
        for name, series in self.metrics.items():
            logged[name] = sorted(series.items())
            if series and name not in STEP_METRICS:
                last = max(series)
                logged[f"final_{name}"] = [(last, series[last])]
        return logged


def diverges(loss: float, initial_loss: float, diverge_above: float | None) -> bool:
    """A loss that is non-finite, or above diverge_above times the run's initial loss (None: no bound)."""
    return not math.isfinite(loss) or (diverge_above is not None and loss > diverge_above * initial_loss)


def failed_result(spec: RunSpec, error: BaseException | str) -> RunResult:
    """The result of a run that could not complete: it raised, its worker died, its cluster gave up on it."""
    message = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
    return RunResult(spec, [], FAILED, error=message)

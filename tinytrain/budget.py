"""Compute spent where it decides: successive halving across seeds (`--budget halving`), and the tuning
metric it and `tinytrain search` rank cells by.

Successive halving: every cell (optimizer, lr) starts, over all its seeds; at each rung the cells are ranked by
the median over their seeds of the tuning metric at that step (a diverged or failed seed counts as worst), and
the best 1/eta continue from their rung's training state (engines/state.py) to the next rung, eta times
longer, until the last rung, `steps`. A run the budget stops is logged with outcome `stopped` and the rung it
reached; every other run as a sweep logs it, with the rung too. Because a continued run equals a straight one
bit for bit, a cell that reaches the end has exactly the numbers a full sweep gives it.

One sweep (one parent run) holds every rung. A run is logged once, when its fate is known: a loser when its
rung is ranked, a survivor at the end. A killed halving sweep, run again, trains each rung from the states it
saved (one forward where a state is at the rung already), ranks the same way, and goes on from the rung it
was on; runs already logged are not logged again.
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass, field, replace

from tinytrain.results import DIVERGED, FAILED, FINISHED, RUNG, STOPPED, STOPPED_AT, RunResult
from tinytrain.spec import ConfigError, Experiment, RunSpec
from tinytrain.spec.settings import TUNING_METRICS, rungs
from tinytrain.sweep import (
    SweepOutcome,
    _check_engine_and_executor,
    _count_engine,
    _progress,
    _recorder,
    with_states,
)

Cell = tuple  # (optimizer, lr, *arm): the grid's other axes as (axis, value) pairs, as compare groups seeds


@dataclass
class Rung:
    """One rung of successive halving: where it ends, each cell's score there, and who continues."""

    step: int
    scores: dict[Cell, float]  # the median over the cell's seeds of the tuning metric (inf: diverged)
    promoted: list[Cell]

    @property
    def dropped(self) -> list[Cell]:
        return [cell for cell in self.scores if cell not in self.promoted]


@dataclass
class Halving:
    """What a halving sweep did: the sweep, its rungs, the steps it trained against the full grid's."""

    outcome: SweepOutcome
    rungs: list[Rung]
    metric: str
    steps_trained: int  # optimizer steps trained this time (continued runs count from their state)
    full_grid_steps: int  # runs x steps: what training every run to the end costs
    best: Cell | None
    notes: list[str] = field(default_factory=list)

    @property
    def fraction(self) -> float:
        return self.steps_trained / self.full_grid_steps if self.full_grid_steps else math.nan


def check_halving(experiment: Experiment) -> None:
    """Bad input that only the grid shows: halving needs at least two cells to rank."""
    cells = {experiment.cell(spec) for spec in experiment.specs()}
    if len(cells) < 2:
        raise ConfigError(
            f"halving ranks cells against each other, and this grid has {len(cells)} cell(s) "
            "(optimizer x lr): give more optimizers or learning rates, or drop --budget halving"
        )


def metric_name(metric: str, result: RunResult) -> str:
    """The tuning metric a run is ranked by: the setting, or for auto the first of TUNING_METRICS it has."""
    if metric != "auto":
        return metric
    return next((name for name in TUNING_METRICS if name == "final_loss" or name in result.metrics), "final_loss")


def tuning_value(result: RunResult, metric: str, step: int | None = None) -> float:
    """A run's tuning metric at a step (default: its last), lower is better: a loss as it is, an accuracy as its
    error; a diverged or failed run, or a value it did not measure, is worst (inf)."""
    if result.outcome in (DIVERGED, FAILED):
        return math.inf
    step = result.final_step if step is None else step
    name = metric_name(metric, result)
    if name in ("final_loss", "loss"):
        value = result.losses[step] if step < len(result.losses) else math.nan
    else:
        value = result.metrics.get(name.removeprefix("final_"), {}).get(step, math.nan)
        if name.endswith("accuracy"):
            value = 1.0 - value
    return value if math.isfinite(value) else math.inf


def cell_score(results: list[RunResult], metric: str, step: int | None = None) -> float:
    """The median over a cell's seeds of the tuning metric (a worst seed counts as worst)."""
    return statistics.median(tuning_value(result, metric, step) for result in results)


def steps_trained(result: RunResult) -> int:
    """The optimizer steps a training did: from the state it continued from to where it ended."""
    if not result.losses:
        return 0
    return result.final_step - int(result.runtime.get("continued_from_step", "0"))


def sweep_halving(
    experiment: Experiment,
    uri: str,
    *,
    executor: str = "inprocess",
    jobs: int = 1,
    scheduler: str | None = None,
    progress: bool = True,
    background: bool = True,
) -> Halving:
    """Successive halving over the experiment's cells (see the module's docstring), logged as one sweep."""
    from tinytrain.executors import make_executor
    from tinytrain.tracking import check_store, finished_keys_readonly

    started_at = time.perf_counter()
    check_halving(experiment)
    settings = experiment.settings
    specs = with_states(experiment.specs(), uri, always=True)
    _check_engine_and_executor(experiment, executor)
    check_store(uri)
    finished = finished_keys_readonly(uri, experiment.name)
    runner = make_executor(executor, jobs, scheduler)
    recorder = _recorder(uri, background)
    cells: dict[Cell, list[RunSpec]] = {}
    for spec in specs:
        cells.setdefault(experiment.cell(spec), []).append(spec)
    points = rungs(settings)
    metric = settings["tuning_metric"]
    alive, done_rungs, failures, notes, engines = list(cells), [], [], [], {}
    recorded: set[str] = set(finished)
    opened: set[str] = set()
    ended: dict[str, RunResult] = {}  # runs that diverged or failed: not trained again at a later rung
    trained, status, interrupted, abandon = 0, "FINISHED", False, False

    def started(spec: RunSpec) -> None:
        if spec.key not in recorded and spec.key not in opened:  # a run opens once and stays open across rungs
            opened.add(spec.key)
            recorder.run_started(spec)

    def record(result: RunResult, rung: int, bar) -> None:
        if result.spec.key in recorded:
            return
        result.runtime[RUNG] = str(rung)
        if result.outcome == STOPPED:
            result.runtime[STOPPED_AT] = str(result.final_step)
        recorder.run_finished(result)
        recorded.add(result.spec.key)
        if result.error:
            failures.append(f"{result.spec.run_name}: {result.error}")
        bar.finished(result.outcome)

    try:
        recorder.open(experiment, specs, finished, False, True)
        with _progress(len(specs), len(recorded & {spec.key for spec in specs}), enabled=progress) as bar:
            for index, step in enumerate(points):
                last = index == len(points) - 1
                todo = [
                    replace(spec, stop_at=0 if last else step)
                    for cell in alive
                    for spec in cells[cell]
                    if spec.key not in ended
                ]
                results: dict[Cell, list[RunResult]] = {cell: [] for cell in alive}
                for spec in (spec for cell in alive for spec in cells[cell] if spec.key in ended):
                    results[experiment.cell(spec)].append(ended[spec.key])  # diverged: worst at every rung
                for result in runner.run(todo, bar.started(started)):
                    if metric == "auto" and result.outcome not in (DIVERGED, FAILED):
                        metric = metric_name(metric, result)  # what auto means for this problem
                    if result.outcome in (DIVERGED, FAILED):
                        ended[result.spec.key] = result
                    trained += steps_trained(result)
                    _count_engine(result.runtime, engines, notes)
                    results[experiment.cell(result.spec)].append(result)
                    if last or result.outcome != STOPPED:  # its fate is known: finished, diverged or failed
                        record(result, index, bar)
                scores = {cell: cell_score(results[cell], metric, step) for cell in alive}
                ranked = sorted(alive, key=lambda cell: (scores[cell], list(cells).index(cell)))
                promoted = ranked if last else ranked[: max(1, len(alive) // settings["eta"])]
                done_rungs.append(Rung(step, scores, promoted))
                if last:
                    break
                for cell in alive:
                    if cell not in promoted:
                        for result in results[cell]:
                            if result.outcome == STOPPED:
                                record(result, index, bar)
                alive = [cell for cell in promoted if math.isfinite(scores[cell])] or promoted[:1]
    except KeyboardInterrupt:
        status, interrupted = "KILLED", True
    except BaseException as error:
        from tinytrain.tracking import TrackingError

        status, abandon = "FAILED", isinstance(error, TrackingError)
        raise
    finally:
        try:
            counts = recorder.close(status)
        finally:
            runner.close(abandon=abandon)
    outcome = SweepOutcome(
        experiment, uri, counts, time.perf_counter() - started_at, interrupted, failures, engines, notes
    )
    best = done_rungs[-1].promoted[0] if done_rungs and done_rungs[-1].step == points[-1] else None
    return Halving(outcome, done_rungs, metric, trained, len(specs) * settings["steps"], best, notes)


def halving_lines(halving: Halving) -> list[str]:
    """What a halving sweep says after its summary: each rung, the cells it dropped and why, the steps spent."""
    lines = []
    for index, rung in enumerate(halving.rungs):
        kept = len(rung.promoted) if index < len(halving.rungs) - 1 else 0
        line = f"Rung {index} (step {rung.step}): {len(rung.scores)} cell(s)"
        if kept:
            dropped = ", ".join(f"{_name(cell)} ({_score(rung.scores[cell])})" for cell in rung.dropped)
            line += f", the best {kept} continue; dropped: {dropped}" if dropped else f", all {kept} continue"
        lines.append(line)
    metric = halving.metric
    if halving.best is not None:
        final = halving.rungs[-1].scores[halving.best]
        lines.append(f"Best cell: {_name(halving.best)} (median {metric} {_score(final)} over its seeds).")
    lines.append(
        f"Steps trained: {halving.steps_trained:,} of the full grid's {halving.full_grid_steps:,} "
        f"({halving.fraction:.0%}); ranked by the median over seeds of {metric}."
    )
    return lines


def _name(cell: Cell) -> str:
    from tinytrain.reports.compare import cell_name

    return cell_name(*cell)


def _score(value: float) -> str:
    return "diverged" if math.isinf(value) else f"{value:.4g}"


__all__ = ["FINISHED", "Halving", "Rung", "check_halving", "halving_lines", "sweep_halving", "tuning_value"]

"""`tinytrain search`: Optuna picks the cells (TPE, GP or QMC), each trial a cell run over the experiment's seeds.

A trial is the experiment with its searched values set (`--set` overrides: the learning rate, a setting, an
optimizer's hyperparameter), trained over the experiment's seeds and logged as an ordinary sweep of one cell:
run keys, resume, compare and reproduce work on it as on any sweep; its parent run is tagged with the study
and the trial's number. The trial's value is the median over its seeds of the tuning metric (budget.py). The
study lives in Optuna's storage beside the store (optuna.db next to mlflow.db, or --storage, e.g. the team's
database URL), so that a killed search resumes: the trial it was in is marked failed and asked again first,
and its runs already logged are not trained again. With halving as its pruner a trial reports its median at
each rung (settings eta and first_rung) and Optuna's SuccessiveHalvingPruner stops it there: its runs are
logged stopped, with the rung, as halving's are.

Without --space it searches the grid's own cells: the optimizer as a category and the lr (any numeric axis)
as an index into the grid's values, the grid's corners first, a cell asked again answered by its earlier
trial and followed by the untried cell nearest to it. With --pruner seeds a trial trains its seeds one by
one in the grid's order and successive halving over seeds stops it at a rung of seeds; --runs is a budget of
runs started, pruned trials' included.

optuna is an optional extra (`pip install tinytrain[search]`); it is imported only here.
"""

from __future__ import annotations

import itertools
import math
import time
from dataclasses import dataclass, field, replace
from typing import Any

from tinytrain.budget import cell_score, metric_name, steps_trained
from tinytrain.results import DIVERGED, FAILED, RUNG, STOPPED, STOPPED_AT, RunResult
from tinytrain.spec import ConfigError, Experiment, load_experiment
from tinytrain.spec.settings import DEFAULTS, is_number, rungs
from tinytrain.sweep import with_states

SAMPLERS = ("tpe", "gp", "qmc")
PRUNERS = ("none", "halving", "seeds")
STUDY_TAG = "tinytrain.study"
TRIAL_TAG = "tinytrain.trial"


@dataclass(frozen=True)
class Dimension:
    """One searched value: a name `--set` understands, its range, and whether it is drawn on a log scale."""

    name: str
    low: float = 0.0
    high: float = 0.0
    log: bool = False
    integer: bool = False
    # A grid axis searched over its own values: an ordered axis (numbers) as an index into them, so that its
    # end-points are reachable and neighbours are near; another (the optimizer, a schedule) as a category
    values: tuple[Any, ...] = ()
    ordered: bool = False

    @property
    def param(self) -> str:
        """The name of the parameter in the study: an ordered grid axis is searched as its index."""
        return f"{self.name} index" if self.values and self.ordered else self.name


def parse_space(texts: list[str] | tuple[str, ...], experiment: Experiment) -> list[Dimension]:
    """'NAME=LOW:HIGH[:log]' for lr, a numeric setting, or optimizers.NAME.HYPERPARAMETER; checked now. Then
    each axis of the experiment's grid with more than one value (but seed) that --space does not name: a trial
    is one cell of the grid. No --space on a grid of one cell is an empty space."""
    space = _ranges(texts, experiment)
    space += grid_space(experiment, {dimension.name for dimension in space})
    if not space:
        raise ConfigError(
            "the search space is empty: the grid has one cell; give at least one --space NAME=LOW:HIGH[:log], "
            "e.g. --space lr=1e-4:1:log"
        )
    return space


def grid_space(experiment: Experiment, named: set[str]) -> list[Dimension]:
    """The grid's own axes with more than one value, seed aside: numbers as ordered values, others as
    categories. An lr given per optimizer (a table) is one ordered axis an optimizer, searched in its cells."""
    space = []
    for axis, values in experiment.grid.items():
        if axis == "seed" or axis in named:
            continue
        if axis == "lr" and isinstance(values, dict):
            for optimizer, lrs in values.items():
                if len(lrs) > 1 and optimizer in experiment.grid["optimizer"]:
                    space.append(Dimension(f"lr ({optimizer})", values=tuple(lrs), ordered=True))
            continue
        if len(values) > 1:
            ordered = all(is_number(value) for value in values)
            space.append(Dimension(axis, values=tuple(sorted(values) if ordered else values), ordered=ordered))
    return space


def _ranges(texts: list[str] | tuple[str, ...], experiment: Experiment) -> list[Dimension]:
    space = []
    for text in texts:
        name, _, bounds = text.partition("=")
        parts = bounds.split(":")
        if not name or len(parts) not in (2, 3) or (len(parts) == 3 and parts[2] != "log"):
            raise ConfigError(f"--space {text!r} must look like NAME=LOW:HIGH or NAME=LOW:HIGH:log")
        try:
            low, high = (float(part) if any(c in part for c in ".eE") else int(part) for part in parts[:2])
        except ValueError:
            raise ConfigError(f"--space {text!r}: LOW and HIGH must be numbers") from None
        log = len(parts) == 3
        if not low < high or (log and low <= 0):
            raise ConfigError(f"--space {text!r}: give LOW < HIGH (and LOW > 0 on a log scale)")
        _check_name(name, experiment)
        integer = name != "lr" and isinstance(low, int) and isinstance(high, int)
        space.append(Dimension(name, low, high, log, integer))
    names = [dimension.name for dimension in space]
    if len(set(names)) < len(names):
        raise ConfigError(f"--space names {', '.join(sorted({n for n in names if names.count(n) > 1}))} twice")
    return space


def _check_name(name: str, experiment: Experiment) -> None:
    if name == "lr":
        return
    if name.startswith("optimizers."):
        optimizer, _, hyperparameter = name.removeprefix("optimizers.").rpartition(".")
        if optimizer in experiment.grid["optimizer"]:
            _kind, _lr, hyperparameters = experiment.resolve_optimizer(optimizer)
            if is_number(hyperparameters.get(hyperparameter)):
                return
        raise ConfigError(
            f"--space {name}: not a numeric hyperparameter of an optimizer of the grid "
            f"({', '.join(experiment.grid['optimizer'])})"
        )
    if name in searchable_settings():
        return
    raise ConfigError(
        f"--space {name}: search lr, a numeric setting ({', '.join(searchable_settings())}) "
        "or optimizers.NAME.HYPERPARAMETER"
    )


def searchable_settings() -> list[str]:
    """The settings a search may vary: the numeric ones (weight_decay too, unset by default), but the budget's."""
    return [
        name
        for name, value in DEFAULTS.items()
        if (is_number(value) or name == "weight_decay") and name not in ("eta", "first_rung")
    ]


@dataclass
class Trial:
    number: int
    params: dict[str, Any]
    value: float | None
    state: str  # COMPLETE, PRUNED, FAIL
    sweep: str | None  # the trial's parent run


@dataclass
class SearchOutcome:
    study: str
    storage: str
    trials: list[Trial]
    steps_trained: int  # this time
    runs: int  # runs logged this time
    seconds: float
    best: Trial | None = None
    failures: list[str] = field(default_factory=list)
    runs_budget: int | None = None  # --runs: the most runs the study may start
    study_runs: int = 0  # the runs the study's trials started, all times together


def default_storage(uri: str) -> str:
    """optuna.db next to a SQLite store's mlflow.db; another store needs --storage."""
    from tinytrain.tracking.location import sqlite_path

    if not uri.startswith("sqlite:///"):
        raise ConfigError(
            f"the store {uri} is not a SQLite file: give --storage, the study's database (e.g. the team's "
            "postgresql://... or sqlite:///path/optuna.db)"
        )
    return f"sqlite:///{sqlite_path(uri).parent / 'optuna.db'}"


def open_study(storage: Any, name: str, sampler: str, seed: int, pruner: Any) -> Any:
    """The study in its storage (a URL, or a storage opened before: its cache of finished trials is kept from
    one trial to the next), made if new; an unreachable storage is one line of bad input."""
    import logging
    import warnings

    import optuna

    optuna.logging.set_verbosity(logging.WARNING)
    samplers = {
        "tpe": lambda: optuna.samplers.TPESampler(seed=seed),
        "gp": lambda: optuna.samplers.GPSampler(seed=seed, deterministic_objective=True),
        "qmc": lambda: optuna.samplers.QMCSampler(seed=seed, scramble=True),
    }
    try:
        store = optuna.storages.RDBStorage(storage) if isinstance(storage, str) else storage
        with warnings.catch_warnings():  # GP's deterministic_objective and QMC are marked experimental
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            chosen = samplers[sampler]()
        return optuna.create_study(
            study_name=name,
            storage=store,
            sampler=chosen,
            pruner=pruner,
            direction="minimize",
            load_if_exists=True,
        )
    except Exception as error:  # noqa: BLE001 - any failure to reach or open it: one line
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ConfigError(f"cannot open the Optuna storage {storage}: {first[:300]}") from None


def search(
    experiment: Experiment,
    uri: str,
    space: list[Dimension],
    *,
    trials: int,
    timeout: float | None,
    sampler: str = "tpe",
    seed: int = 0,
    storage: str | None = None,
    study_name: str | None = None,
    pruner: str = "none",
    overrides: tuple[str, ...] = (),
    runs: int | None = None,
) -> SearchOutcome:
    """Run trials until the study has `trials` finished (complete or pruned) ones, `timeout` seconds pass, the
    study has started `runs` runs, or (a search of the grid's own cells) every cell has been tried."""
    import optuna

    from tinytrain.tracking import check_store

    started = time.perf_counter()
    if pruner == "halving" and len(rungs(experiment.settings)) < 2:
        raise ConfigError("halving as the pruner needs first_rung < steps: there is only one rung")
    seeds = len(experiment.grid["seed"])
    if pruner == "seeds" and seeds < 2:
        raise ConfigError("pruning by seeds needs a grid of at least two seeds: there is only one")
    storage = storage or default_storage(uri)
    check_store(uri)
    name = study_name or f"{experiment.name}-search"
    optuna_pruner = _pruner(pruner, experiment)
    study = open_study(storage, name, sampler, seed, optuna_pruner)
    opened = study._storage
    for stale in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        # a trial of a killed search: failed, and asked again first (its runs logged already are skipped)
        study._storage.set_trial_state_values(stale._trial_id, optuna.trial.TrialState.FAIL)
        study.enqueue_trial(stale.params, skip_if_exists=False)
    done_states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    outcome = SearchOutcome(name, storage, [], 0, 0, 0.0, runs_budget=runs)
    cells = grid_cells(space)

    def objective(trial: optuna.Trial) -> float:
        return _trial(trial, experiment, uri, space, overrides, pruner, name, outcome, runs)

    # One trial at a time, each asked of a sampler seeded with the sampler seed plus the trial's number: a
    # search resumed after a kill asks what the same search run straight through asks
    while True:
        finished = study.get_trials(deepcopy=False, states=done_states)
        if len(finished) >= trials or (timeout is not None and time.perf_counter() - started >= timeout):
            break
        if runs is not None and runs_started(study) + (1 if pruner == "seeds" else seeds) > runs:
            break  # the next trial's first runs would pass the budget of runs
        if cells is not None and len({_cell_of(t) for t in finished}) >= cells:
            break  # every cell of the grid tried
        asked = [t for t in study.get_trials(deepcopy=False) if t.state != optuna.trial.TrialState.FAIL]
        study = open_study(opened, name, sampler, seed + len(asked), optuna_pruner)
        if not study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.WAITING,)):
            # the grid's corners first, each queued when its turn comes (after a trial a killed search was in);
            # after a cell asked again, the untried cell nearest to it
            tried = {tuple(sorted(t.params.items())) for t in asked}
            queued = next((c for c in corners(space) if tuple(sorted(c.items())) not in tried), None)
            if queued is None and asked and "repeats" in asked[-1].user_attrs:
                queued = nearest_untried(space, asked[-1].params, tried)
            if queued is not None:
                study.enqueue_trial(queued)
        study.optimize(objective, n_trials=1, catch=(ConfigError,))
    outcome.trials = [
        Trial(t.number, t.user_attrs.get("cell", dict(t.params)), t.value, t.state.name, t.user_attrs.get("sweep"))
        for t in study.trials
    ]
    outcome.study_runs = runs_started(study)
    complete = [t for t in outcome.trials if t.state == "COMPLETE" and t.value is not None]
    outcome.best = min(complete, key=lambda t: (t.value, t.number)) if complete else None
    outcome.seconds = time.perf_counter() - started
    return outcome


def _pruner(pruner: str, experiment: Experiment) -> Any:
    """halving: Optuna's SuccessiveHalvingPruner over steps (the rungs of the settings eta and first_rung);
    seeds: the same over seeds, each trial's seeds as paired instances (every trial trains them in the grid's
    order, so the median over its first k seeds is ranked against the other trials' on the same k seeds)."""
    import optuna

    if pruner == "halving":
        return _Halving(min_resource=rungs(experiment.settings)[0], reduction_factor=experiment.settings["eta"])
    if pruner == "seeds":
        return _Halving(min_resource=1, reduction_factor=experiment.settings["eta"])
    return optuna.pruners.NopPruner()


def _halving_pruner() -> type:
    import optuna

    class Halving(optuna.pruners.SuccessiveHalvingPruner):
        """Optuna's successive halving, blind to failed trials: the values a trial of a killed search reported
        do not compete again when the trial is asked again, so a resumed search prunes as a straight one."""

        def prune(self, study: Any, trial: Any) -> bool:
            return super().prune(_WithoutFailed(study), trial)

    return Halving


class _WithoutFailed:
    def __init__(self, study: Any) -> None:
        self._study = study

    def __getattr__(self, name: str) -> Any:
        return getattr(self._study, name)

    def get_trials(self, deepcopy: bool = True, states: Any = None) -> list:
        return [t for t in self._study.get_trials(deepcopy=deepcopy, states=states) if t.state.name != "FAIL"]


def _Halving(**options: Any) -> Any:  # noqa: N802 - a class made on first use: optuna is imported only then
    return _halving_pruner()(**options)


def runs_started(study: Any) -> int:
    """The runs the study's trials started, pruned and failed trials included (each trial counts its own)."""
    return sum(int(t.user_attrs.get("runs", 0)) for t in study.get_trials(deepcopy=False))


def corners(space: list[Dimension]) -> list[dict[str, Any]]:
    """The first trials of a search of the grid's own cells: every category (each optimizer) at the ends of
    the ordered axes (the lowest and the highest lr), a two-level factorial design. A best cell at the
    grid's edge, where a grid's range was drawn too narrow, is then found first. None when the corners are
    the whole grid, or the space has a range (--space) besides the grid's axes."""
    if not space or any(not dimension.values for dimension in space):
        return []
    levels = []
    for dimension in space:
        if dimension.name.startswith("lr ("):
            continue  # an lr table: its corners follow the optimizer below
        if dimension.ordered:
            levels.append([(dimension.param, 0), (dimension.param, len(dimension.values) - 1)])
        else:
            levels.append([(dimension.param, value) for value in dimension.values])
    design = []
    for combination in itertools.product(*levels):
        params = dict(combination)
        tables = [d for d in space if d.name == f"lr ({params.get('optimizer')})"]
        for ends in itertools.product(*([(t.param, 0), (t.param, len(t.values) - 1)] for t in tables)):
            design.append({**params, **dict(ends)})
    unique = [dict(items) for items in dict.fromkeys(tuple(sorted(p.items(), key=str)) for p in design)]
    return unique if len(unique) < (grid_cells(space) or 0) else []


def grid_cells(space: list[Dimension]) -> int | None:
    """How many cells a search of the grid's own axes can try (None: the space has a range)."""
    cells = all_cells(space)
    return None if cells is None else len(cells)


def all_cells(space: list[Dimension]) -> list[dict[str, Any]] | None:
    """Every cell of a search of the grid's own axes, as the study's parameters (None: the space has a range)."""
    if any(not dimension.values for dimension in space):
        return None
    plain = [d for d in space if not d.name.startswith("lr (")]
    levels = [
        [(d.param, index) for index in range(len(d.values))] if d.ordered else [(d.param, v) for v in d.values]
        for d in plain
    ]
    cells = []
    for combination in itertools.product(*levels):
        params = dict(combination)
        tables = [d for d in space if d.name == f"lr ({params.get('optimizer')})"]
        for table in itertools.product(*([(t.param, i) for i in range(len(t.values))] for t in tables)):
            cells.append({**params, **dict(table)})
    return cells


def nearest_untried(space: list[Dimension], params: dict[str, Any], tried: set[tuple]) -> dict[str, Any] | None:
    """The untried cell nearest a cell the sampler asked for again: the fewest other categories, then the
    fewest steps along the ordered axes (the first in the grid's order on a tie). Asked next, so that a
    search of a finite grid samples without replacement near where the sampler looks."""
    cells = all_cells(space) or []

    ordered = {dimension.param for dimension in space if dimension.ordered}

    def distance(cell: dict[str, Any]) -> tuple[int, int]:
        categories = sum(cell.get(name) != value for name, value in params.items() if name not in ordered)
        steps = sum(abs(cell[name] - value) if name in cell else 1 for name, value in params.items() if name in ordered)
        return categories, steps

    untried = [cell for cell in cells if tuple(sorted(cell.items())) not in tried]
    return min(untried, key=distance) if untried else None


def _cell_of(trial: Any) -> tuple:
    return tuple(sorted(trial.user_attrs.get("cell", trial.params).items(), key=str))


def trial_overrides(params: dict[str, Any]) -> list[str]:
    return [f"{name.partition(' (')[0]}={value!r}" for name, value in params.items()]


def suggest(trial: Any, space: list[Dimension]) -> dict[str, Any]:
    """The trial's values, by name (a grid axis's value, not its index); the optimizer first, as an lr table
    is asked only for the chosen optimizer."""
    params: dict[str, Any] = {}
    for dimension in sorted(space, key=lambda d: d.name != "optimizer"):
        if dimension.name.startswith("lr (") and dimension.name != f"lr ({params.get('optimizer')})":
            continue
        if dimension.values and dimension.ordered:
            index = trial.suggest_int(dimension.param, 0, len(dimension.values) - 1)
            params[dimension.name] = dimension.values[index]
        elif dimension.values:
            params[dimension.name] = trial.suggest_categorical(dimension.param, list(dimension.values))
        else:
            ask = trial.suggest_int if dimension.integer else trial.suggest_float
            params[dimension.name] = ask(dimension.name, dimension.low, dimension.high, log=dimension.log)
    return params


def _trial(trial, experiment, uri, space, overrides, pruner, study, outcome: SearchOutcome, budget) -> float:
    import optuna

    params = suggest(trial, space)
    trial.set_user_attr("cell", params)
    cell = tuple(sorted(params.items(), key=str))
    earlier = next(
        (
            t
            for t in trial.study.get_trials(
                deepcopy=False, states=(optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
            )
            if _cell_of(t) == cell
        ),
        None,
    )
    if earlier is not None:  # a cell tried already: answered by that trial, nothing trained (Optuna's FAQ)
        trial.set_user_attr("sweep", earlier.user_attrs.get("sweep"))
        trial.set_user_attr("repeats", earlier.number)
        for step, value in earlier.intermediate_values.items():
            trial.report(value, step)
        if earlier.state == optuna.trial.TrialState.PRUNED:
            raise optuna.TrialPruned()
        return earlier.value
    experiment_cell = load_experiment(
        experiment.source if experiment.source != "<text>" else None,
        [*overrides, *trial_overrides(params)],
        text=experiment.to_toml() if experiment.source.startswith("run ") else None,
    )
    left = None if budget is None else budget - runs_started(trial.study)
    value, pruned = _train_cell(experiment_cell, uri, trial, pruner, study, outcome, left)
    if pruned:
        raise optuna.TrialPruned()
    return value


def _train_cell(
    experiment, uri, trial, pruner: str, study: str, outcome: SearchOutcome, left: int | None
) -> tuple[float, bool]:
    """The trial's cell over its seeds, as one sweep (in this process: no writer process per trial).

    halving: all seeds to each rung of steps, the median reported there; seeds: one seed after another, the
    median over the seeds so far reported after each; `left` runs may start at most (then the trial is pruned)."""
    from tinytrain.executors import InProcess
    from tinytrain.tracking import Recorder, finished_keys_readonly

    halving = pruner == "halving"
    specs = with_states(experiment.specs(), uri, always=halving)
    finished = finished_keys_readonly(uri, experiment.name)
    recorder, runner = Recorder(uri), InProcess()
    points = rungs(experiment.settings) if halving else [experiment.settings["steps"]]
    metric, ended, opened = experiment.settings["tuning_metric"], {}, set()
    value, pruned, status = math.inf, False, "FINISHED"
    if pruner == "seeds":
        order = {seed: index for index, seed in enumerate(experiment.grid["seed"])}
        groups = [[spec] for spec in sorted(specs, key=lambda spec: order.get(spec.seed, len(order)))]
    else:
        groups = [specs]

    def started(spec) -> None:
        if spec.key not in finished and spec.key not in opened:
            opened.add(spec.key)
            recorder.run_started(spec)
            trial.set_user_attr("runs", len(opened))  # in the study as each starts: a killed trial's count too

    def record(result: RunResult, rung: int) -> None:
        if result.spec.key in finished:
            return
        if halving:
            result.runtime[RUNG] = str(rung)
        if result.outcome == STOPPED:
            result.runtime[STOPPED_AT] = str(result.final_step)
        recorder.run_finished(result)
        finished[result.spec.key] = ""
        outcome.runs += 1
        if result.error:
            outcome.failures.append(f"trial {trial.number}, {result.spec.run_name}: {result.error}")

    def new(group) -> int:
        return sum(spec.key not in finished and spec.key not in opened for spec in group)

    try:
        recorder.open(experiment, specs, finished, False, True)
        recorder.store.client.set_tag(recorder.parent_run_id, STUDY_TAG, study)
        recorder.store.client.set_tag(recorder.parent_run_id, TRIAL_TAG, str(trial.number))
        trial.set_user_attr("sweep", recorder.parent_run_id)
        results: list[RunResult] = []
        for number, group in enumerate(groups):
            if left is not None and len(opened) + new(group) > left:
                pruned = True  # the budget of runs ends the trial here
                break
            for index, step in enumerate(points):
                last = index == len(points) - 1
                todo = [replace(spec, stop_at=0 if last else step) for spec in group if spec.key not in ended]
                results = [r for r in results if r.spec not in group] + [
                    ended[spec.key] for spec in group if spec.key in ended
                ]
                for result in runner.run(todo, started):
                    outcome.steps_trained += steps_trained(result)
                    if metric == "auto" and result.outcome not in (DIVERGED, FAILED):
                        metric = metric_name(metric, result)
                    if result.outcome in (DIVERGED, FAILED):
                        ended[result.spec.key] = result
                        record(result, index)
                    elif last:
                        record(result, index)
                    results.append(result)
                value = cell_score(results, metric, None if last else step)
                if last:
                    break
                trial.report(_finite(value), step)
                if trial.should_prune():
                    for result in results:
                        if result.outcome == STOPPED:
                            record(result, index)
                    pruned = True
                    break
            if pruned:
                break
            if pruner == "seeds" and number < len(groups) - 1:
                trial.report(_finite(value), number + 1)  # the median over the first number + 1 seeds
                if trial.should_prune():
                    pruned = True
                    break
    except BaseException:
        status = "FAILED"
        raise
    finally:
        recorder.close(status)
    return _finite(value), pruned


def _finite(value: float) -> float:
    return value if math.isfinite(value) else 1e300

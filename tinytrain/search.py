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

optuna is an optional extra (`pip install tinytrain[search]`); it is imported only here.
"""

from __future__ import annotations

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
PRUNERS = ("none", "halving")
STUDY_TAG = "tinytrain.study"
TRIAL_TAG = "tinytrain.trial"


@dataclass(frozen=True)
class Dimension:
    """One searched value: a name `--set` understands, its range, and whether it is drawn on a log scale."""

    name: str
    low: float
    high: float
    log: bool = False
    integer: bool = False


def parse_space(texts: list[str] | tuple[str, ...], experiment: Experiment) -> list[Dimension]:
    """'NAME=LOW:HIGH[:log]' for lr, a numeric setting, or optimizers.NAME.HYPERPARAMETER; checked now."""
    if not texts:
        raise ConfigError(
            "the search space is empty: give at least one --space NAME=LOW:HIGH[:log], e.g. --space lr=1e-4:1:log"
        )
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


def default_storage(uri: str) -> str:
    """optuna.db next to a SQLite store's mlflow.db; another store needs --storage."""
    from tinytrain.tracking.location import sqlite_path

    if not uri.startswith("sqlite:///"):
        raise ConfigError(
            f"the store {uri} is not a SQLite file: give --storage, the study's database (e.g. the team's "
            "postgresql://... or sqlite:///path/optuna.db)"
        )
    return f"sqlite:///{sqlite_path(uri).parent / 'optuna.db'}"


def open_study(storage: str, name: str, sampler: str, seed: int, pruner: Any) -> Any:
    """The study in its storage (made if new); an unreachable storage is one line of bad input."""
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
        store = optuna.storages.RDBStorage(storage)
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
) -> SearchOutcome:
    """Run trials until the study has `trials` finished (complete or pruned) ones, or `timeout` seconds pass."""
    import optuna

    from tinytrain.tracking import check_store

    started = time.perf_counter()
    if pruner == "halving" and len(rungs(experiment.settings)) < 2:
        raise ConfigError("halving as the pruner needs first_rung < steps: there is only one rung")
    storage = storage or default_storage(uri)
    check_store(uri)
    name = study_name or f"{experiment.name}-search"
    optuna_pruner = (
        optuna.pruners.SuccessiveHalvingPruner(
            min_resource=rungs(experiment.settings)[0], reduction_factor=experiment.settings["eta"]
        )
        if pruner == "halving"
        else optuna.pruners.NopPruner()
    )
    study = open_study(storage, name, sampler, seed, optuna_pruner)
    for stale in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        # a trial of a killed search: failed, and asked again first (its runs logged already are skipped)
        study._storage.set_trial_state_values(stale._trial_id, optuna.trial.TrialState.FAIL)
        study.enqueue_trial(stale.params, skip_if_exists=False)
    done_states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    outcome = SearchOutcome(name, storage, [], 0, 0, 0.0)

    def objective(trial: optuna.Trial) -> float:
        return _trial(trial, experiment, uri, space, overrides, pruner == "halving", name, outcome)

    # One trial at a time, each asked of a sampler seeded with the sampler seed plus the trial's number: a
    # search resumed after a kill asks what the same search run straight through asks
    while len(study.get_trials(deepcopy=False, states=done_states)) < trials:
        if timeout is not None and time.perf_counter() - started >= timeout:
            break
        study = open_study(storage, name, sampler, seed + len(study.get_trials(deepcopy=False)), optuna_pruner)
        study.optimize(objective, n_trials=1, catch=(ConfigError,))
    outcome.trials = [
        Trial(t.number, dict(t.params), t.value, t.state.name, t.user_attrs.get("sweep")) for t in study.trials
    ]
    complete = [t for t in outcome.trials if t.state == "COMPLETE" and t.value is not None]
    outcome.best = min(complete, key=lambda t: (t.value, t.number)) if complete else None
    outcome.seconds = time.perf_counter() - started
    return outcome


def trial_overrides(params: dict[str, Any]) -> list[str]:
    return [f"{name}={value!r}" for name, value in params.items()]


def _trial(trial, experiment, uri, space, overrides, halving, study, outcome: SearchOutcome) -> float:
    import optuna

    params = {}
    for dimension in space:
        suggest = trial.suggest_int if dimension.integer else trial.suggest_float
        params[dimension.name] = suggest(dimension.name, dimension.low, dimension.high, log=dimension.log)
    if len(experiment.grid["optimizer"]) > 1:
        params["optimizer"] = trial.suggest_categorical("optimizer", experiment.grid["optimizer"])
    cell = load_experiment(
        experiment.source if experiment.source != "<text>" else None,
        [*overrides, *trial_overrides(params)],
        text=experiment.to_toml() if experiment.source.startswith("run ") else None,
    )
    value, pruned = _train_cell(cell, uri, trial, halving, study, outcome)
    if pruned:
        raise optuna.TrialPruned()
    return value


def _train_cell(experiment, uri, trial, halving: bool, study: str, outcome: SearchOutcome) -> tuple[float, bool]:
    """The trial's cell over its seeds, as one sweep (in this process: no writer process per trial)."""
    from tinytrain.executors import InProcess
    from tinytrain.tracking import Recorder, finished_keys_readonly

    specs = with_states(experiment.specs(), uri, always=halving)
    finished = finished_keys_readonly(uri, experiment.name)
    recorder, runner = Recorder(uri), InProcess()
    points = rungs(experiment.settings) if halving else [experiment.settings["steps"]]
    metric, ended, opened = experiment.settings["tuning_metric"], {}, set()
    value, pruned, status = math.inf, False, "FINISHED"

    def started(spec) -> None:
        if spec.key not in finished and spec.key not in opened:
            opened.add(spec.key)
            recorder.run_started(spec)

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

    try:
        recorder.open(experiment, specs, finished, False, True)
        recorder.store.client.set_tag(recorder.parent_run_id, STUDY_TAG, study)
        recorder.store.client.set_tag(recorder.parent_run_id, TRIAL_TAG, str(trial.number))
        trial.set_user_attr("sweep", recorder.parent_run_id)
        for index, step in enumerate(points):
            last = index == len(points) - 1
            todo = [replace(spec, stop_at=0 if last else step) for spec in specs if spec.key not in ended]
            results = [ended[spec.key] for spec in specs if spec.key in ended]
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
            trial.report(value if math.isfinite(value) else 1e300, step)
            if trial.should_prune():
                for result in results:
                    if result.outcome == STOPPED:
                        record(result, index)
                pruned = True
                break
    except BaseException:
        status = "FAILED"
        raise
    finally:
        recorder.close(status)
    return (value if math.isfinite(value) else 1e300), pruned

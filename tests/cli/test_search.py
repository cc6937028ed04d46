"""`tinytrain search`: Optuna trials as sweeps of one cell on a real store, deterministic for a sampler seed,
resumable, pruned by halving; bad input is one line, exit 2, nothing written."""

from __future__ import annotations

import re

import pytest

from tests.cli.test_sweep import store_digest
from tests.conftest import children, client, invoke
from tinytrain.tracking.location import sqlite_path

pytest.importorskip("optuna")

GRID = """
name = "e2e"
steps = 18
[grid]
optimizer = ["adam"]
seed = [0, 1]
"""


def trial_lrs(uri: str) -> list[str]:
    """The learning rates of the trials' sweeps, in trial order."""
    runs = [run for run in children(uri) if run.data.tags.get("tinytrain.outcome")]
    parents = {}
    for run in runs:
        parent = client(uri).get_run(run.data.tags["mlflow.parentRunId"])
        parents[int(parent.data.tags["tinytrain.trial"])] = run.data.params["lr"]
    return [parents[number] for number in sorted(parents)]


@pytest.mark.parametrize("sampler", ["tpe", "gp", "qmc"])
def test_a_search_is_the_same_for_the_same_sampler_seed_and_logs_ordinary_runs(sampler, experiment_file, tmp_path):
    file = experiment_file(GRID)
    stores = [f"sqlite:///{tmp_path / name / 'mlflow.db'}" for name in ("one", "two")]
    outputs = []
    for uri in stores:
        args = ["search", file, "--space", "lr=1e-4:0.1:log", "--trials", "3", "--sampler", sampler]
        result = invoke([*args, "--tracking-uri", uri])
        assert result.exit_code == 0, result.output
        assert "3 trial(s): 3 complete" in result.output and "6 runs logged" in result.output
        assert (sqlite_path(uri).parent / "optuna.db").is_file()  # the study beside the store
        outputs.append(re.sub(r"\(sweep run \w+\)|[\d.]+ s$|/(one|two)/", "", result.output, flags=re.M))
    assert outputs[0] == outputs[1]
    assert trial_lrs(stores[0]) == trial_lrs(stores[1]) and len(set(trial_lrs(stores[0]))) == 3
    (run,) = [r for r in children(stores[0]) if r.data.params["lr"] == trial_lrs(stores[0])[0]][:1]
    assert invoke(["reproduce", run.info.run_id, "--tracking-uri", stores[0]]).exit_code == 0
    sweep = client(stores[0]).get_run(run.data.tags["mlflow.parentRunId"])
    compared = invoke(["compare", "--sweep", sweep.info.run_id, "--tracking-uri", stores[0]])
    assert compared.exit_code == 0 and "adam" in compared.output


@pytest.mark.parametrize("sampler", ["tpe", "gp", "qmc"])
def test_a_search_resumes_up_to_its_trial_count_as_a_straight_one_would(sampler, experiment_file, store_uri, tmp_path):
    file = experiment_file(GRID)
    args = ["search", file, "--space", "lr=1e-4:0.1:log", "--sampler", sampler]
    assert invoke([*args, "--trials", "2"]).exit_code == 0
    again = invoke([*args, "--trials", "3"])
    assert again.exit_code == 0 and "3 trial(s): 3 complete" in again.output and "2 runs logged" in again.output
    assert "0 runs logged" in invoke([*args, "--trials", "3"]).output
    straight = f"sqlite:///{tmp_path / 'straight' / 'mlflow.db'}"
    assert invoke([*args, "--trials", "3", "--tracking-uri", straight]).exit_code == 0
    assert trial_lrs(store_uri) == trial_lrs(straight)
    timed = invoke([*args, "--trials", "50", "--timeout", "0.001"])  # the time budget ends it before a trial
    assert timed.exit_code == 0 and "3 trial(s)" in timed.output


def test_halving_prunes_trials_and_logs_their_runs_stopped(experiment_file, store_uri):
    file = experiment_file(GRID.replace("steps = 18", "steps = 27\nfirst_rung = 3"))
    args = ["search", file, "--space", "lr=1e-4:1:log", "--trials", "8", "--pruner", "halving", "--sampler", "qmc"]
    result = invoke(args)
    assert result.exit_code == 0, result.output
    pruned = int(re.search(r"(\d+) pruned", result.output)[1])
    assert pruned > 0
    stopped = [run for run in children(store_uri) if run.data.tags["tinytrain.outcome"] == "stopped"]
    assert stopped and all(run.data.tags["tinytrain.rung"] in ("0", "1") for run in stopped)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "the search space is empty"),
        (["--space", "lr=0.1:0.01"], "give LOW < HIGH"),
        (["--space", "momentum=0.1:0.9"], "--space momentum: search lr, a numeric setting"),
        (["--space", "lr=1e-3:1:log", "--storage", "postgresql://nobody@127.0.0.1:9/none"], "cannot open the Optuna"),
        (
            ["--space", "lr=1e-3:1:log", "--storage", "sqlite:////nonexistent/folder/optuna.db"],
            "cannot open the Optuna",
        ),
    ],
)
def test_bad_search_input_is_one_line_exit_2_and_nothing_written(args, message, experiment_file, store_uri):
    result = invoke(["search", experiment_file(GRID), *args])
    assert result.exit_code == 2 and message in result.output and len(result.output.splitlines()) == 1, result.output
    assert store_digest(store_uri) is None
    assert not (sqlite_path(store_uri).parent / "optuna.db").exists()


def test_a_trial_left_running_by_a_killed_search_is_failed_and_asked_again_first(experiment_file, store_uri):
    """What a SIGKILLed search leaves in the study: a RUNNING trial. The next search fails it and runs its
    parameters again first, so the study holds each finished trial once."""
    import optuna

    storage = f"sqlite:///{sqlite_path(store_uri).parent / 'optuna.db'}"
    sqlite_path(store_uri).parent.mkdir(parents=True)
    study = optuna.create_study(study_name="e2e-search", storage=storage, direction="minimize")
    left = study.ask({"lr": optuna.distributions.FloatDistribution(1e-4, 0.1, log=True)})  # as if killed here
    result = invoke(["search", experiment_file(GRID), "--space", "lr=1e-4:0.1:log", "--trials", "1"])
    assert result.exit_code == 0, result.output
    trials = optuna.load_study(study_name="e2e-search", storage=storage).trials
    assert [trial.state.name for trial in trials] == ["FAIL", "COMPLETE"]
    assert trials[1].params == left.params and "1 complete" in result.output


CELLS = """
name = "e2e"
steps = 12
[grid]
optimizer = ["sgd", "adam"]
lr = [0.001, 0.01, 0.1, 0.3]
seed = [0, 1, 2]
"""


def study_trials(uri: str, name: str = "e2e-search") -> list:
    import optuna

    storage = f"sqlite:///{sqlite_path(uri).parent / 'optuna.db'}"
    return optuna.load_study(study_name=name, storage=storage).trials


def test_a_search_of_the_grid_tries_its_cells_corners_first_within_a_budget_of_runs(experiment_file, store_uri):
    """No --space: the grid's own cells (2 optimizers x 4 lrs), the corners (each optimizer at the lowest
    and highest lr) first; --pruner seeds trains a trial's seeds one by one and stops a trial whose first
    seed is outranked; --runs caps the runs the study starts, pruned trials counted by the runs they started;
    a repeated cell trains nothing. The best trial is the full grid's best cell, by the median over seeds."""
    from tinytrain.budget import tuning_value
    from tinytrain.engines.sequential import train
    from tinytrain.spec import load_experiment

    file = experiment_file(CELLS)
    result = invoke(["search", file, "--pruner", "seeds", "--runs", "12", "--trials", "200"])
    assert result.exit_code == 0, result.output
    assert "of a budget of 12" in result.output
    trials = study_trials(store_uri)
    cells = [(t.user_attrs["cell"]["optimizer"], t.user_attrs["cell"]["lr"]) for t in trials]
    assert cells[:4] == [("sgd", 0.001), ("sgd", 0.3), ("adam", 0.001), ("adam", 0.3)]
    runs = children(store_uri)
    started = sum(t.user_attrs.get("runs", 0) for t in trials)
    assert len(runs) == started <= 12  # every run started is logged once, an ordinary run
    assert {run.data.tags["tinytrain.outcome"] for run in runs} <= {"finished", "diverged"}
    pruned = [t for t in trials if t.state.name == "PRUNED" and "repeats" not in t.user_attrs]
    assert pruned and all(t.user_attrs["runs"] < 3 for t in pruned)
    repeats = [t for t in trials if "repeats" in t.user_attrs]
    assert all(t.user_attrs.get("runs", 0) == 0 for t in repeats)
    assert len(set(cells)) == len([t for t in trials if "repeats" not in t.user_attrs])

    experiment = load_experiment(file)
    values: dict[tuple, list[float]] = {}
    for spec in experiment.specs():
        values.setdefault((spec.optimizer, spec.lr), []).append(tuning_value(train(spec), "auto"))
    best = min(values, key=lambda cell: sorted(values[cell])[1])
    assert "Best: trial" in result.output and f"optimizer={best[0]}, lr={best[1]:.4g})" in result.output


@pytest.mark.parametrize("sampler", ["tpe", "qmc"])
def test_a_killed_grid_search_resumes_to_the_trials_and_runs_of_a_straight_one(
    sampler, experiment_file, store_uri, process_groups, tmp_path
):
    """SIGKILL a real `tinytrain search --pruner seeds` process once it has logged some runs; run it again:
    the study holds the same finished trials (cells, states, values) as a search run straight through, and
    the store the same runs, none twice."""
    import subprocess
    import sys
    import time

    from tests.conftest import kill_group

    file = experiment_file(CELLS)
    args = ["search", file, "--pruner", "seeds", "--runs", "14", "--trials", "200", "--sampler", sampler]
    search = process_groups([sys.executable, "-m", "tinytrain", *args], stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and sqlite_path(store_uri).exists() is False:
        time.sleep(0.05)
    while time.monotonic() < deadline:
        try:
            if len(children(store_uri)) >= 4:
                break
        except Exception:  # noqa: BLE001 - the store is being made
            pass
        assert search.poll() is None, "the search ended before it was killed"
        time.sleep(0.05)
    kill_group(search)
    resumed = invoke(args)
    assert resumed.exit_code == 0, resumed.output
    straight = f"sqlite:///{tmp_path / 'straight' / 'mlflow.db'}"
    assert invoke([*args, "--tracking-uri", straight]).exit_code == 0

    def finished(uri):
        return [
            (t.user_attrs["cell"]["optimizer"], t.user_attrs["cell"]["lr"], t.state.name, t.value)
            for t in study_trials(uri)
            if t.state.name != "FAIL"
        ]

    assert finished(store_uri) == finished(straight)
    keys = [run.data.tags["tinytrain.run_key"] for run in children(store_uri) if run.info.status == "FINISHED"]
    assert len(keys) == len(set(keys))
    assert sorted(keys) == sorted(run.data.tags["tinytrain.run_key"] for run in children(straight))


def test_pruning_by_seeds_needs_two_seeds(experiment_file, store_uri):
    result = invoke(["search", experiment_file(CELLS.replace("[0, 1, 2]", "[0]")), "--pruner", "seeds"])
    assert result.exit_code == 2 and "at least two seeds" in result.output, result.output
    assert store_digest(store_uri) is None

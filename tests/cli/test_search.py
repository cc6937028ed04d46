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


def test_a_search_resumes_up_to_its_trial_count_as_a_straight_one_would(experiment_file, store_uri, tmp_path):
    file = experiment_file(GRID)
    args = ["search", file, "--space", "lr=1e-4:0.1:log"]
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

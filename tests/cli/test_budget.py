"""Compute spent where it decides, on a real store: runs that continue after a SIGKILL or when `steps` grows,
successive halving (--budget halving), and its bad input."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import children, client, invoke, kill_group
from tinytrain.engines.sequential import train
from tinytrain.engines.state import saved_steps
from tinytrain.spec import load_experiment
from tinytrain.tracking.location import sqlite_path, state_folder

LONG = """
name = "e2e"
steps = {steps}
checkpoint_every = {every}
{extra}
[grid]
optimizer = ["adam"]
lr = [0.001]
seed = [4]
"""


def metric_history(uri: str, run_id: str, name: str) -> list[float]:
    history = sorted(client(uri).get_metric_history(run_id, name), key=lambda metric: metric.step)
    return [metric.value for metric in history]


def kill_when_a_state_is_saved(process_groups, file: str, uri: str, lineage: str, at_least: int) -> int:
    """Start a sweep in a process group of its own and SIGKILL the group once its run has saved a state at
    `at_least` steps or more; returns the last step saved."""
    folder = state_folder(uri)
    sweep = process_groups([sys.executable, "-m", "tinytrain", "sweep", file, "-q"], stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        steps = saved_steps(folder, lineage)
        if steps and steps[-1] >= at_least:
            break
        assert sweep.poll() is None, "the sweep ended before it was killed"
        time.sleep(0.05)
    else:
        pytest.fail("no state saved within the time")

    kill_group(sweep)
    return saved_steps(folder, lineage)[-1]


DIGITS = 'problem = "digits"\neval_every = 50\nbatch_size = 16'
# Every schedule, killed on each engine and problem: the scheduler's state travels with the training state
KILLED = {
    "vmap": 'engine = "vmap"',
    "sequential": "",
    "digits": DIGITS,
    "sequential-warmup": 'schedule = "warmup"\nwarmup = 0.2',
    "vmap-cosine": 'engine = "vmap"\nschedule = "cosine"',
    "digits-warmup-cosine": f'{DIGITS}\nschedule = "warmup-cosine"\nwarmup = 0.1',
    "sequential-wsd": 'schedule = "wsd"\nwarmup = 0.1\ndecay = 0.3',
    "vmap-linear": 'engine = "vmap"\nschedule = "linear"',
    "digits-step": f'{DIGITS}\nschedule = "step"\nstep_size = 0.1\ngamma = 0.7',
}


@pytest.mark.parametrize("extra", list(KILLED.values()), ids=list(KILLED))
def test_a_sweep_killed_mid_run_continues_from_its_last_saved_step_bit_for_bit(
    extra, experiment_file, store_uri, process_groups
):
    """SIGKILL a real sweep's process group at a random saved step (the vmap engine hands a cell that saves
    states to the sequential one, which vmap equals bit for bit); the sweep run again continues it and its
    record equals the cell trained straight to the end: every loss, every metric (the schedule's lr too)."""
    import random

    steps, every = (1000, 50) if "digits" in extra else (3000, 50)
    file = experiment_file(LONG.format(steps=steps, every=every, extra=extra))
    spec = load_experiment(file).specs()[0]
    at_least = every * random.randrange(1, steps // every // 3)
    killed_at = kill_when_a_state_is_saved(process_groups, file, store_uri, spec.lineage, at_least)
    assert killed_at < steps, f"the run ended before it was killed (at {at_least} steps or more)"
    assert not [run for run in children(store_uri) if run.info.status == "FINISHED"]

    result = invoke(["sweep", file, "-q"])
    assert result.exit_code == 0, result.output
    (run,) = [run for run in children(store_uri) if run.info.status == "FINISHED"]
    assert int(run.data.tags["tinytrain.continued_from_step"]) >= killed_at
    straight = train(spec)  # the same cell trained straight to the end, without a state folder
    assert metric_history(store_uri, run.info.run_id, "loss") == straight.losses
    for name, series in straight.metrics.items():
        assert metric_history(store_uri, run.info.run_id, name) == [series[step] for step in sorted(series)]
    saved = Path(client(store_uri).download_artifacts(run.info.run_id, "training_state.pt"))
    state = torch.load(saved, weights_only=True)
    assert state["step"] == steps and state["losses"].tolist() == straight.losses[:-1]
    assert all(torch.equal(state["weights"][name], straight.final_weights[name]) for name in straight.final_weights)


def test_raising_steps_on_a_finished_sweep_extends_its_runs(experiment_file, store_uri):
    short = experiment_file(LONG.format(steps=30, every=10, extra="").replace("seed = [4]", "seed = [4, 5]"))
    assert invoke(["sweep", short, "-q"]).exit_code == 0
    result = invoke(["sweep", short, "--set", "steps=70", "-q"])
    assert result.exit_code == 0 and "2 trained (2 finished" in result.output
    longer = [run for run in children(store_uri) if run.data.params["steps"] == "70"]
    assert len(longer) == 2 and all(run.data.tags["tinytrain.continued_from_step"] == "30" for run in longer)
    for run in longer:
        spec = load_experiment(short, ["steps=70", f"seed={run.data.params['seed']}"]).specs()[0]
        assert spec.key == run.data.tags["tinytrain.run_key"]  # the continued run is the 70-step cell's run
        assert metric_history(store_uri, run.info.run_id, "loss") == train(dataclasses.replace(spec)).losses
    assert "every cell is done (2 runs" in invoke(["sweep", short, "--set", "steps=70", "-q"]).output
    assert sqlite_path(store_uri).parent.joinpath("states").is_dir()


# ---------------------------------------------------------------------------------------------------------
# Successive halving

HALVING = """
name = "e2e"
steps = {steps}
budget = "halving"
first_rung = {first}
[grid]
optimizer = ["sgd", "adam", "rmsprop"]
lr = [0.001, 0.01, 0.1]
seed = [0, 1]
"""


def full_grid(file: str) -> dict:
    """Every run of the grid trained straight to the end, without a store: key -> result."""
    return {spec.key: train(spec) for spec in load_experiment(file, ["budget=none"]).specs()}


def median_final_losses(results) -> dict:
    import statistics

    from tinytrain.budget import tuning_value

    cells: dict = {}
    for result in results:
        cells.setdefault((result.spec.optimizer, result.spec.lr), []).append(tuning_value(result, "final_loss"))
    return {cell: statistics.median(values) for cell, values in cells.items()}


def test_halving_logs_every_run_once_with_its_rung_and_ends_on_the_full_grids_best_cell(experiment_file, store_uri):
    file = experiment_file(HALVING.format(steps=27, first=3))
    result = invoke(["sweep", file, "-q"])
    assert result.exit_code == 0, result.output
    runs = children(store_uri)
    assert len(runs) == 18 and all(run.info.status == "FINISHED" for run in runs)
    straight = full_grid(file)
    stopped = [run for run in runs if run.data.tags["tinytrain.outcome"] == "stopped"]
    assert stopped and {run.data.tags["tinytrain.rung"] for run in stopped} <= {"0", "1"}
    for run in runs:  # every logged number is the straight run's, up to where the budget stopped it
        losses = metric_history(store_uri, run.info.run_id, "loss")
        assert losses == straight[run.data.tags["tinytrain.run_key"]].losses[: len(losses)]
        if run in stopped:
            rung_step = {"0": 3, "1": 9}[run.data.tags["tinytrain.rung"]]
            assert int(run.data.tags["tinytrain.stopped_at"]) == rung_step == len(losses) - 1
            assert run.data.params["steps"] == "27"  # the run of the full cell, stopped early
    finished = [
        straight[run.data.tags["tinytrain.run_key"]] for run in runs if run.data.tags["tinytrain.outcome"] == "finished"
    ]
    scores = median_final_losses(finished)  # of the cells that reached the end: the best of them is named
    best = min(scores, key=scores.get)
    assert len(scores) == 1 and f"Best cell: {best[0]}@{best[1]:g}" in result.output  # 9 cells -> 3 -> 1
    assert "dropped:" in result.output and "Steps trained:" in result.output

    for run in (stopped[0], next(run for run in runs if run.data.tags["tinytrain.outcome"] == "finished")):
        reproduced = invoke(["reproduce", run.info.run_id])  # a stopped run retrains to where it stopped
        assert reproduced.exit_code == 0, reproduced.output

    compared = invoke(["compare", "--experiment", "e2e"])
    assert compared.exit_code == 0
    assert "the budget (successive halving) stopped" in compared.output and "at step 3:" in compared.output

    # the UI's charts of the sweep: the finished runs only (a stopped run's last loss would pull its cell's average)
    experiment = client(store_uri).get_experiment_by_name("e2e")
    charts = next(json.loads(value) for key, value in experiment.tags.items() if key.endswith("-charts"))
    shown = client(store_uri).search_runs([experiment.experiment_id], charts["searchFilter"])
    finished_ids = {run.info.run_id for run in runs if run.data.tags["tinytrain.outcome"] == "finished"}
    assert {run.info.run_id for run in shown} == finished_ids


def stopped_runs(uri: str) -> int:
    import sqlite3

    if not sqlite_path(uri).exists():
        return 0
    connection = sqlite3.connect(f"file:{sqlite_path(uri)}?mode=ro", uri=True, timeout=30)
    try:
        query = "SELECT COUNT(*) FROM tags WHERE key = 'tinytrain.outcome' AND value = 'stopped'"
        return connection.execute(query).fetchone()[0]
    except sqlite3.OperationalError:  # not made yet
        return 0
    finally:
        connection.close()


def test_a_killed_halving_sweep_resumes_at_the_rung_it_was_on(experiment_file, store_uri, process_groups, tmp_path):

    file = experiment_file(HALVING.format(steps=2700, first=100))
    sweep = process_groups([sys.executable, "-m", "tinytrain", "sweep", file, "-q"], stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not stopped_runs(store_uri):  # the first rung is ranked and its losers logged
        assert sweep.poll() is None and time.monotonic() < deadline, "the first rung never ended"
        time.sleep(0.1)
    kill_group(sweep)
    logged_before = stopped_runs(store_uri)

    resumed = invoke(["sweep", file, "-q"])
    assert resumed.exit_code == 0, resumed.output
    # the first rung comes from its saved states (a forward each), not trained again
    fresh = invoke(["sweep", file, "-q", "--tracking-uri", f"sqlite:///{tmp_path / 'fresh' / 'mlflow.db'}"])
    assert fresh.exit_code == 0, fresh.output

    def trained(output: str) -> int:
        line = next(line for line in output.splitlines() if line.startswith("Steps trained:"))
        return int(line.split()[2].replace(",", ""))

    # the 12 runs of the first rung that did not diverge trained 100 steps each from scratch, and none again
    assert trained(resumed.output) <= trained(fresh.output) - 12 * 100
    finished = [run for run in children(store_uri) if run.info.status == "FINISHED"]
    assert len({run.data.tags["tinytrain.run_key"] for run in finished}) == len(finished) == 18  # each once
    assert stopped_runs(store_uri) >= logged_before

    def outcomes(uri: str) -> dict:
        return {
            run.data.tags["tinytrain.run_key"]: (run.data.tags["tinytrain.outcome"], run.data.tags["tinytrain.rung"])
            for run in children(uri)
            if run.info.status == "FINISHED"
        }

    assert outcomes(store_uri) == outcomes(f"sqlite:///{tmp_path / 'fresh' / 'mlflow.db'}")
    assert [line for line in resumed.output.splitlines() if line.startswith(("Rung", "Best"))] == [
        line for line in fresh.output.splitlines() if line.startswith(("Rung", "Best"))
    ]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["eta=1"], "eta must be an integer >= 2"),
        (["first_rung=27"], "first_rung 27 is not shorter than the run (27 steps)"),
        (["optimizer=adam", "lr=0.01"], "halving ranks cells against each other, and this grid has 1 cell(s)"),
        (["problem=digits", "eval_every=5", "first_rung=3"], "make first_rung a multiple of it"),
    ],
)
def test_bad_halving_input_is_one_line_exit_2_and_nothing_written(overrides, message, experiment_file, store_uri):
    from tests.cli.test_sweep import store_digest

    file = experiment_file(HALVING.format(steps=27, first=0))
    result = invoke(["sweep", file, *(arg for item in overrides for arg in ("--set", item))])
    assert result.exit_code == 2 and message in result.output and len(result.output.splitlines()) == 1
    assert store_digest(store_uri) is None
    assert not sqlite_path(store_uri).parent.joinpath("states").exists()


def test_halving_refuses_force_and_until_separated(experiment_file, store_uri):
    file = experiment_file(HALVING.format(steps=27, first=0))
    for flag in ("--force", "--until-separated"):
        result = invoke(["sweep", file, flag])
        assert result.exit_code == 2 and "drop --until-separated and --force" in result.output

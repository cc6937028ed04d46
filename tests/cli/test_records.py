"""What each run keeps of its weights (the `record` setting), on a real store, through the command line.

model (a LoggedModel per checkpoint) is what every other test of the store checks. Here: weights (a weights file
per checkpoint, a LoggedModel of each cell's median seed made when the sweep closes, by the writer process, from
the store) and none (no weights). For each, a sweep reproduces, a tampering is named with exit 1, and what the
sweep keeps is exactly what the policy says.
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path

import torch

from tests.cli.test_reproduce import copy_run, run_folder
from tests.conftest import children, client, invoke
from tinytrain.engines.state import saved_steps
from tinytrain.spec import RunSpec, load_experiment
from tinytrain.tracking.location import state_folder

GRID = {
    "name": "e2e",
    "steps": 6,
    "checkpoint_every": 4,
    "grid": {"optimizer": ["adam", "sgd"], "lr": [0.01, 100.0], "seed": [0, 1, 2]},
}  # sgd at lr 100 diverges: that cell's median seed has no weights, so no model


def sweep(experiment_file, record: str, **changes) -> str:
    file = experiment_file({**GRID, "record": record, **changes})
    result = invoke(["sweep", file, "-q"])
    assert result.exit_code == 0, result.output
    return file


def cell_models(uri: str) -> list:
    experiment = client(uri).get_experiment_by_name("e2e")
    return list(client(uri).search_logged_models([experiment.experiment_id]))


def artifacts(uri: str, run) -> list[str]:
    """Every file of a run's artifacts, relative to its folder."""
    folder = run_folder(uri, run.info.run_id)
    return sorted(str(path.relative_to(folder)) for path in folder.rglob("*") if path.is_file())


def medians(runs) -> dict[tuple[str, str], str]:
    """(optimizer, lr) -> run id of the cell's median seed by final_loss (a diverged seed is worst; the lower
    of two middles), for the cells whose median seed finished: as docs/records.md says."""
    cells: dict = {}
    for run in runs:
        cells.setdefault((run.data.params["optimizer"], run.data.params["lr"]), []).append(run)
    chosen = {}
    for cell, seeds in cells.items():
        scores = {
            run.info.run_id: run.data.metrics["final_loss"]
            if run.data.tags["tinytrain.outcome"] == "finished"
            else math.inf
            for run in seeds
        }
        ranked = sorted(seeds, key=lambda run: (scores[run.info.run_id], int(run.data.params["seed"])))
        median = ranked[(len(ranked) - 1) // 2]
        assert scores[median.info.run_id] == statistics.median_low(scores.values())
        if median.data.tags["tinytrain.outcome"] == "finished":
            chosen[cell] = median.info.run_id
    return chosen


def reproduce(run_id: str):
    result = invoke(["reproduce", run_id])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    return result


# ---------------------------------------------------------------------------------------------------------
# weights


def test_weights_keeps_a_file_per_checkpoint_and_one_model_per_cell_at_its_median_seed(experiment_file, store_uri):
    import mlflow.pytorch

    from tinytrain.model import LeNet

    sweep(experiment_file, "weights")
    runs = children(store_uri)
    assert len(runs) == 12 and {run.data.params["record"] for run in runs} == {"weights"}
    finished = [run for run in runs if run.data.tags["tinytrain.outcome"] == "finished"]
    assert len(finished) == 6  # both optimizers at lr 0.01; at lr 100 every seed diverges
    for run in runs:
        kept = [name for name in artifacts(store_uri, run) if name != "training_state.pt"]
        assert kept == (["weights/step-000004.pth", "weights/step-000006.pth"] if run in finished else [])

    chosen = medians(runs)
    models = cell_models(store_uri)
    assert len(chosen) == 2 and sorted(model.source_run_id for model in models) == sorted(chosen.values())
    for model in models:
        (run,) = [run for run in runs if run.info.run_id == model.source_run_id]
        assert model.status.name == "READY" and model.name.endswith(f"-median-seed{run.data.params['seed']}")
        assert model.tags["tinytrain.median_of"] == "3 seeds by final_loss"
        (output,) = client(store_uri).get_run(run.info.run_id).outputs.model_outputs
        assert (output.model_id, output.step) == (model.model_id, 6)
        net = mlflow.pytorch.load_model(f"models:/{model.model_id}")  # MLflow's own loader gives the LeNet
        weights = torch.load(run_folder(store_uri, run.info.run_id) / "weights/step-000006.pth", weights_only=True)
        assert isinstance(net, LeNet)
        assert all(torch.equal(net.state_dict()[name], tensor) for name, tensor in weights.items())

    for run in runs:
        result = reproduce(run.info.run_id)
        assert result.exit_code == 0, result.output
        if run.info.run_id in chosen.values():
            assert "2 weights file(s) and 1 LoggedModel(s) (30 tensors) bit for bit\n" in result.output
        elif run in finished:
            assert result.output.endswith(
                "2 weights file(s) (20 tensors) bit for bit; no LoggedModel (record = weights: a cell's median "
                "seed has one)\n"
            )
        else:
            assert result.output.endswith("no checkpoint: its record says it diverged\n")

    compared = invoke(["compare", "--experiment", "e2e"])
    assert compared.exit_code == 0 and compared.output.count("adam") >= 2  # the reports read the runs as before


def test_a_tampered_weights_file_or_cell_model_is_named(experiment_file, store_uri):
    sweep(experiment_file, "weights")
    models = cell_models(store_uri)
    median = models[0].source_run_id
    folder = run_folder(store_uri, median)

    path = folder / "weights/step-000006.pth"
    weights = torch.load(path, weights_only=True)
    weights["fc2.bias"][7] += 1e-3
    torch.save(weights, path)
    result = reproduce(median)
    assert result.exit_code == 1
    assert result.output.startswith("differs at weights file at step 6, tensor fc2.bias[7]: logged ")

    weights["fc2.bias"][7] -= 1e-3
    torch.save(weights, path)
    (folder / "weights/step-000004.pth").unlink()
    result = reproduce(median)
    assert result.exit_code == 1
    assert result.output == (
        "differs at weights file at step 4: missing (not in the run's artifacts); the record says the run "
        "finished, so it keeps these weights\n"
    )

    other = next(
        run.info.run_id
        for run in children(store_uri)
        if run.info.run_id not in {model.source_run_id for model in models}
        and run.data.tags["tinytrain.outcome"] == "finished"
    )
    torch.save({"weights": [1, 2, 3]}, run_folder(store_uri, other) / "weights/step-000006.pth")
    result = reproduce(other)
    assert result.exit_code == 1
    assert result.output.startswith(
        "differs at weights file at step 6: missing (weights/step-000006.pth: weights/step-000006.pth holds a "
        "dict, not the LeNet's state dict)"
    )

    model = models[1]
    model_file = Path(model.artifact_location.removeprefix("file://")) / "data" / "model.pth"
    weights = torch.load(model_file, weights_only=True)
    weights["conv1.weight"].view(-1)[0] += 1e-3
    torch.save(weights, model_file)
    result = reproduce(model.source_run_id)
    assert result.exit_code == 1
    assert result.output.startswith("differs at LoggedModel at step 6, tensor conv1.weight[0]: logged ")


def test_a_resumed_sweep_ends_with_one_model_per_cell_made_from_the_store(experiment_file, store_uri):
    """The first part of a sweep records every run of one cell and some of another, in this process, and is
    killed (close KILLED: no models); the sweep run again trains the rest in its writer process, and makes
    the models of both cells there, from what the store holds. A third sweep that records itself makes none
    again."""
    from tinytrain.engines.sequential import train
    from tinytrain.sweep import run_sweep
    from tinytrain.tracking.recorder import Recorder

    file = experiment_file({**GRID, "record": "weights", "grid": {**GRID["grid"], "lr": [0.01]}})
    experiment = load_experiment(file)
    specs = experiment.specs()  # adam x 3 seeds, then sgd x 3 seeds
    recorder = Recorder(store_uri)
    recorder.open(experiment, specs, {})
    for spec in specs[:4]:
        recorder.run_started(spec)
        recorder.run_finished(train(spec))
    counts = recorder.close("KILLED")
    assert counts.cell_models == 0 and cell_models(store_uri) == []

    result = invoke(["sweep", file, "-q"])
    assert result.exit_code == 0, result.output
    runs = children(store_uri)
    assert len(runs) == 6
    chosen = medians(runs)
    assert sorted(model.source_run_id for model in cell_models(store_uri)) == sorted(chosen.values())

    again = run_sweep(experiment, store_uri, progress=False, record_when_done=True)
    assert again.counts.cell_models == 0 and len(cell_models(store_uri)) == 2


def test_a_sweep_killed_after_its_last_run_gets_its_models_from_the_sweep_that_trains_nothing(
    experiment_file, store_uri
):
    from tinytrain.engines.sequential import train
    from tinytrain.tracking.recorder import Recorder

    file = experiment_file({**GRID, "record": "weights", "grid": {"optimizer": ["adam"], "lr": [0.01], "seed": [0, 1]}})
    experiment = load_experiment(file)
    recorder = Recorder(store_uri)
    recorder.open(experiment, experiment.specs(), {})
    for spec in experiment.specs():
        recorder.run_started(spec)
        recorder.run_finished(train(spec))
    recorder.close("KILLED")
    assert cell_models(store_uri) == []

    for _ in range(2):  # trains nothing; makes the model once
        result = invoke(["sweep", file])
        assert result.exit_code == 0, result.output
        (model,) = cell_models(store_uri)
    assert model.source_run_id == next(iter(medians(children(store_uri)).values()))


# ---------------------------------------------------------------------------------------------------------
# none


def test_none_keeps_no_weights_and_reproduce_says_so(experiment_file, store_uri):
    sweep(experiment_file, "none")
    runs = children(store_uri)
    assert len(runs) == 12 and cell_models(store_uri) == []
    for run in runs:
        assert [name for name in artifacts(store_uri, run) if name != "training_state.pt"] == []
        assert not client(store_uri).get_run(run.info.run_id).outputs.model_outputs
    finished = next(run for run in runs if run.data.tags["tinytrain.outcome"] == "finished")
    result = reproduce(finished.info.run_id)
    assert result.exit_code == 0, result.output
    assert result.output == (
        f"identical: run {finished.info.run_id} retrained from its record gives all 7 logged losses, 2 other "
        "metric value(s) bit for bit; weights not kept (record = none): metrics and outcome checked\n"
    )
    # a record that claims to keep its weights, but has none, is named
    claimed = copy_run(store_uri, finished.info.run_id, params={"record": "weights"})
    result = reproduce(claimed)
    assert result.exit_code == 1
    assert result.output.startswith("differs at weights file at step 4: missing (not in the run's artifacts)")
    # a changed metric is still caught
    losses = [(m.step, m.value) for m in client(store_uri).get_metric_history(finished.info.run_id, "loss")]
    losses[3] = (3, losses[3][1] * 2)
    result = reproduce(copy_run(store_uri, finished.info.run_id, metrics={"loss": losses}))
    assert result.exit_code == 1 and result.output.startswith("differs at metric loss at step 3: logged ")


def test_halving_under_none_keeps_the_states_runs_continue_from(experiment_file, store_uri):
    file = experiment_file(
        {
            "name": "e2e",
            "steps": 27,
            "budget": "halving",
            "first_rung": 3,
            "record": "none",
            "grid": {"optimizer": ["sgd", "adam", "rmsprop"], "lr": [0.001, 0.01, 0.1], "seed": [0, 1]},
        }
    )
    result = invoke(["sweep", file, "-q"])
    assert result.exit_code == 0, result.output
    runs = children(store_uri)
    assert len(runs) == 18 and cell_models(store_uri) == []
    folder = state_folder(store_uri)
    for run in runs:
        assert [name for name in artifacts(store_uri, run) if name != "training_state.pt"] == []
        if run.data.tags["tinytrain.outcome"] != "diverged":  # what a continued run starts from
            assert saved_steps(folder, RunSpec.from_params(run.data.params).lineage)
    stopped = next(run for run in runs if run.data.tags["tinytrain.outcome"] == "stopped")
    finished = next(run for run in runs if run.data.tags["tinytrain.outcome"] == "finished")
    for run in (stopped, finished):
        reproduced = reproduce(run.info.run_id)
        assert reproduced.exit_code == 0, reproduced.output
        assert "weights not kept (record = none)" in reproduced.output


def test_compare_reads_every_policy_as_it_reads_model(experiment_file, tmp_path, monkeypatch):
    """The reports see the same runs and numbers whatever the runs kept of their weights."""
    tables = {}
    for record in ("model", "weights", "none"):
        monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / record / 'mlflow.db'}")
        sweep(experiment_file, record)
        result = invoke(["compare", "--experiment", "e2e", "--format", "csv"])
        assert result.exit_code == 0, result.output
        tables[record] = result.output.split("\n", 1)[1]  # after the title line, which names the sweep's id
    assert tables["weights"] == tables["model"] == tables["none"] and "adam" in tables["model"]


def test_an_unknown_record_is_one_line_exit_2_and_nothing_written(experiment_file, store_uri):
    from tinytrain.tracking.location import sqlite_path

    result = invoke(["sweep", "--set", "record=weight"])
    assert result.exit_code == 2
    assert "record must be one of model, weights, none, got 'weight' (did you mean 'weights'?)" in result.output
    assert not sqlite_path(store_uri).exists()

"""What makes sweeps of thousands of runs cheap must not change what they record: the plain-SQL reads give
what MLflow's own search and get_metric_history give; each checkpoint is stored once, loads with MLflow and
reads back weights-only; stores written before still reproduce; an empty file is a new store."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import torch

from tests.conftest import children, client, runs_of
from tinytrain.cli import cli

GRID = {"name": "scale", "steps": 4, "grid": {"optimizer": ["sgd", "adam"], "lr": [0.01, 1000.0], "seed": [0, 1]}}


def comparable(record):
    """A SweepRecord as plain values, NaN losses included (NaN != NaN would fail any comparison), each run's
    metrics in name order (a dict's order is not part of what is read)."""
    import dataclasses

    runs = tuple(dataclasses.replace(run, metrics=dict(sorted(run.metrics.items()))) for run in record.runs)
    return repr(dataclasses.replace(record, runs=runs))


@pytest.fixture
def swept_twice(cli_runner, experiment_file, store_uri):
    """A sweep, a forced re-run of part of it (soft-deleted runs), and a second sweep of more cells."""
    path = experiment_file(GRID, "grid.toml")
    for args in ([], ["--force", "--set", "optimizer=adam"], ["--set", "seed=0,1,2"]):
        result = cli_runner.invoke(cli, ["sweep", path, "--quiet", *args])
        assert result.exit_code == 0, result.output
    return path


DIGITS = {
    "name": "scale-digits",
    "problem": "digits",
    "steps": 4,
    "batch_size": 8,
    "eval_every": 2,
    "grid": {"optimizer": ["adam"], "lr": [0.01, 1000.0], "seed": [0]},
}


def test_the_plain_sql_reads_give_what_mlflows_own_reads_give_on_digits(cli_runner, experiment_file, store_uri):
    """Test metrics and the test-accuracy curves that plot draws come back the same too."""
    from tinytrain.tracking import Store
    from tinytrain.tracking.sweep_records import _latest_sweep, sweep_record, sweep_record_sqlite

    result = cli_runner.invoke(cli, ["sweep", experiment_file(DIGITS, "digits.toml"), "--quiet"])
    assert result.exit_code == 0, result.output
    with Store(store_uri) as store:
        parent = _latest_sweep(store, "scale-digits")
        mlflows = sweep_record(store, parent, with_losses=True)
    assert any(run.curves.get("test_accuracy") for run in mlflows.runs)  # the comparison compares curves
    assert comparable(sweep_record_sqlite(store_uri, parent, with_losses=True)) == comparable(mlflows)


def test_the_plain_sql_reads_give_what_mlflows_own_reads_give(swept_twice, store_uri):
    from tinytrain.tracking import Store, read_sweep
    from tinytrain.tracking.sweep_records import _latest_sweep, _latest_sweep_sqlite, sweep_record, sweep_record_sqlite

    with Store(store_uri) as store:
        latest = _latest_sweep(store, "scale")
        assert _latest_sweep_sqlite(store_uri, "scale") == latest
        sweeps = [run.info.run_id for run in runs_of(store_uri, "scale") if run.data.tags["tinytrain.kind"] == "sweep"]
        assert len(sweeps) == 3
        for parent in sweeps:
            mlflows = sweep_record(store, parent, with_losses=True)
            assert comparable(sweep_record_sqlite(store_uri, parent, with_losses=True)) == comparable(mlflows)
            assert comparable(sweep_record_sqlite(store_uri, parent)) == comparable(sweep_record(store, parent))
            without = sweep_record_sqlite(store_uri, parent, with_losses=True, with_params=False)  # compare, plot
            emptied = [dataclasses.replace(run, params={}) for run in mlflows.runs]
            assert comparable(without) == comparable(dataclasses.replace(mlflows, runs=tuple(emptied)))
    record = read_sweep(store_uri, "scale", with_losses=True)
    assert record.parent_run_id == latest and len(record.runs) == 12 and not record.missing
    diverged = [run for run in record.runs if run.diverged]
    # diverged: non-finite (stored as NaN or the largest float), or past diverge_above x the initial loss
    assert len(diverged) == 6 and all(
        math.isnan(run.losses[-1]) or run.losses[-1] > 1e3 * run.losses[0] for run in diverged
    )
    assert all(len(run.losses) == 5 for run in record.runs if not run.diverged)


def test_a_checkpoint_is_stored_once_and_loads_both_ways(cli_runner, store_uri):
    import mlflow.pytorch

    from tinytrain.engines.sequential import evaluate

    result = cli_runner.invoke(cli, ["run", "--optimizer", "adam", "--lr", "0.01", "--steps", "6"])
    assert result.exit_code == 0, result.output
    (run,) = children(store_uri, "optimizer-grid")
    assert not client(store_uri).list_artifacts(run.info.run_id)  # no second copy beside the model
    (output,) = run.outputs.model_outputs
    model = client(store_uri).get_logged_model(output.model_id)
    folder = Path(model.artifact_location.removeprefix("file://"))
    weights = torch.load(folder / "data" / "model.pth", weights_only=True)  # plain tensors, nothing unpickled
    assert evaluate(weights, 0, 3) == run.data.metrics["final_loss"]
    net = mlflow.pytorch.load_model(f"models:/{output.model_id}")
    assert type(net).__name__ == "LeNet"
    assert all(torch.equal(net.state_dict()[name], tensor) for name, tensor in weights.items())
    artifacts = Path(store_uri.removeprefix("sqlite:///")).parent / "artifacts"
    assert sum(path.stat().st_size for path in artifacts.rglob("*") if path.is_file()) <= 270_000


def test_a_store_with_the_old_second_copy_still_reproduces_from_it(cli_runner, store_uri, tmp_path):
    """Stores written before kept the state dict as checkpoints/final.pt: reproduce checks that one."""
    result = cli_runner.invoke(cli, ["run", "--optimizer", "sgd", "--lr", "0.01", "--steps", "3"])
    assert result.exit_code == 0, result.output
    (run,) = children(store_uri, "optimizer-grid")
    model = client(store_uri).get_logged_model(run.outputs.model_outputs[0].model_id)
    weights = torch.load(Path(model.artifact_location.removeprefix("file://"), "data", "model.pth"), weights_only=True)
    weights["fc3.bias"][2] += 1.0  # the old copy differs: reproduce must be reading it, not the model's
    (tmp_path / "checkpoints").mkdir()
    torch.save(weights, tmp_path / "checkpoints" / "final.pt")
    client(store_uri).log_artifacts(run.info.run_id, str(tmp_path / "checkpoints"), "checkpoints")
    result = cli_runner.invoke(cli, ["reproduce", run.info.run_id])
    assert result.exit_code == 1
    assert result.output.startswith("differs at checkpoint at step 3, tensor fc3.bias[2]")


def test_an_empty_file_at_the_stores_path_is_a_new_store(cli_runner, experiment_file, store_uri):
    database = Path(store_uri.removeprefix("sqlite:///"))
    database.parent.mkdir(parents=True)
    database.touch()  # as `touch` or the sqlite3 shell leaves it
    path = experiment_file({**GRID, "grid": {**GRID["grid"], "lr": [0.01]}}, "grid.toml")
    dry = cli_runner.invoke(cli, ["sweep", path, "--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert dry.output.endswith("scale: 4 runs, 4 to run, 0 already done (dry run: nothing written)\n")
    assert database.stat().st_size == 0  # a dry run writes nothing
    result = cli_runner.invoke(cli, ["sweep", path, "--quiet"])
    assert result.exit_code == 0, result.output
    assert len(children(store_uri, "scale")) == 4
    compared = cli_runner.invoke(cli, ["compare", "--experiment", "scale", "--format", "csv"])
    assert compared.exit_code == 0 and compared.output.count("\n") == 5, compared.output


@pytest.mark.parametrize("command", [["sweep", "--dry-run"], ["sweep", "--quiet"], ["compare"], ["plot"]])
def test_a_file_that_is_not_sqlite_is_one_line_and_never_overwritten(cli_runner, store_uri, command):
    database = Path(store_uri.removeprefix("sqlite:///"))
    database.parent.mkdir(parents=True)
    database.write_text("my notes, not a database\n")
    result = cli_runner.invoke(cli, [*command])
    assert result.exit_code == 1
    assert result.output == f"Error: cannot read the store {database}: file is not a database\n"
    assert database.read_text() == "my notes, not a database\n"

"""A store written before diverge_above existed (outcome `converged`, no diverge_above param, the old run
keys) still reads, compares and reproduces. The store is written here as that version wrote it, through
MLflow's public client only."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from tests.conftest import invoke as invoke_cli
from tinytrain.engines.sequential import train
from tinytrain.spec import validate

OLD_GRID = {"name": "legacy", "steps": 100, "grid": {"optimizer": ["adam", "rmsprop"], "lr": [0.1], "seed": [0, 1]}}


def log_old_model(client, experiment_id: str, run_id: str, result) -> None:
    """The final weights as that version's LoggedModel: a pickled LeNet in data/model.pth, linked to the run at
    its final step."""
    from urllib.parse import urlparse

    from mlflow.entities import LoggedModelOutput, LoggedModelStatus

    from tinytrain.model import LeNet

    model = client.create_logged_model(experiment_id, name="model", source_run_id=run_id)
    folder = Path(urlparse(model.artifact_location).path) / "data"
    folder.mkdir(parents=True)
    net = LeNet()
    net.load_state_dict(result.final_weights)
    torch.save(net, folder / "model.pth")
    client.log_outputs(run_id, [LoggedModelOutput(model.model_id, len(result.losses) - 1)])
    client.finalize_logged_model(model.model_id, LoggedModelStatus.READY)


@pytest.fixture
def legacy_store(store_uri, tmp_path):
    import mlflow
    from mlflow.entities import Metric, Param

    experiment = validate(OLD_GRID)
    client = mlflow.MlflowClient(store_uri)
    experiment_id = client.create_experiment("legacy", artifact_location=(tmp_path / "artifacts").as_uri())
    parent = client.create_run(experiment_id, run_name="sweep-old", tags={"tinytrain.kind": "sweep"}).info.run_id
    old_file = "\n".join(line for line in experiment.to_toml().splitlines() if not line.startswith("diverge_above"))
    client.log_text(parent, old_file, "experiment.toml")
    runs = {}
    for spec in experiment.specs():
        old = replace(spec, diverge_above=None)  # what that version trained: only a non-finite loss stopped it
        result = train(old)
        outcome = "converged" if result.outcome == "finished" else result.outcome
        run = client.create_run(
            experiment_id,
            run_name=spec.run_name,
            tags={
                "tinytrain.kind": "run",
                "tinytrain.run_key": old.key,
                "tinytrain.outcome": outcome,
                "mlflow.parentRunId": parent,
            },
        ).info.run_id
        params = [Param(k, v) for k, v in spec.params().items() if k != "diverge_above"]
        metrics = [Metric("loss", v, 0, step) for step, v in enumerate(result.losses)]
        metrics += [
            Metric("initial_loss", result.initial_loss, 0, 0),
            Metric("final_loss", result.final_loss, 0, len(result.losses) - 1),
        ]
        client.log_batch(run, metrics=metrics, params=params)
        if result.final_weights is not None:  # as that version kept them: a state dict and a pickled net
            path = tmp_path / "final.pt"
            torch.save(result.final_weights, path)
            client.log_artifact(run, str(path), "checkpoints")
            log_old_model(client, experiment_id, run, result)
        client.set_terminated(run, "FINISHED")
        runs[spec.run_name] = (run, outcome, result)
    client.set_terminated(parent, "FINISHED")
    mlflow.set_tracking_uri(None)
    return {"uri": store_uri, "parent": parent, "runs": runs}


def invoke(*args: str):
    return invoke_cli(list(args))


def test_an_old_store_compares_and_reproduces(legacy_store):
    uri = legacy_store["uri"]
    runs = legacy_store["runs"]
    # rmsprop at lr 0.1 grew past 1e3 x its initial loss without a non-finite value: `converged` then
    run_id, outcome, result = runs["rmsprop-lr0.1-seed0"]
    assert outcome == "converged" and max(result.losses) > 1e3 * result.losses[0]
    compared = invoke("compare", "--experiment", "legacy", "--format", "json", "--tracking-uri", uri)
    assert compared.exit_code == 0, compared.output
    rows = {(row["optimizer"], row["lr"]): row for row in json.loads(compared.output)["rows"]}
    assert rows[("rmsprop", 0.1)]["seeds"] == 2 and rows[("rmsprop", 0.1)]["diverged"] == 0
    assert rows[("rmsprop", 0.1)]["median"] == pytest.approx(
        10 ** ((math.log10(result.final_loss) + math.log10(runs["rmsprop-lr0.1-seed1"][2].final_loss)) / 2)
    )
    reproduced = invoke("reproduce", run_id, "--tracking-uri", uri)
    assert reproduced.exit_code == 0, reproduced.output
    assert reproduced.output.startswith(f"identical: run {run_id} retrained from its record gives all 101 logged")
    assert "note" not in reproduced.output


def test_an_old_sweep_keeps_its_cells_and_a_new_one_trains_them_under_the_bound(legacy_store, experiment_file):
    uri = legacy_store["uri"]
    again = invoke("sweep", "--from-run", legacy_store["parent"], "--dry-run", "--tracking-uri", uri)
    assert again.exit_code == 0, again.output
    assert again.output.endswith("legacy: 4 runs, 0 to run, 4 already done (dry run: nothing written)\n")
    path = experiment_file(
        'name = "legacy"\nsteps = 100\n[grid]\noptimizer = ["adam", "rmsprop"]\nlr = [0.1]\nseed = [0, 1]\n'
    )
    new = invoke("sweep", path, "--dry-run", "--tracking-uri", uri)
    assert new.output.endswith("legacy: 4 runs, 4 to run, 0 already done (dry run: nothing written)\n")

"""reproduce checks everything a user reads of a run: each tampering with the record is named, exit 1.

Every record here is written by tinytrain itself and tampered with only through MLflow's client or by
deleting and rewriting files, then checked through the command line.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.conftest import client, invoke
from tinytrain.spec import load_experiment

GRID = """name = "repro"
steps = 6
checkpoint_every = 4
[grid]
optimizer = ["adam"]
lr = [0.01]
seed = [0]
"""


def log_run(uri: str, text: str = GRID, overrides: tuple[str, ...] = ()) -> str:
    """One run written the way a sweep writes it (the same Recorder), in this process; its run id."""
    from tinytrain.sweep import run_sweep

    experiment = load_experiment("test", list(overrides), text=text)
    outcome = run_sweep(experiment, uri, with_parent=False, progress=False, background=False)
    (run_id,) = outcome.counts.run_ids.values()
    return run_id


@pytest.fixture
def logged(store_uri) -> str:
    return log_run(store_uri)


def reproduce(run_id: str):
    result = invoke(["reproduce", run_id])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    return result


def run_folder(uri: str, run_id: str) -> Path:
    return Path(client(uri).get_run(run_id).info.artifact_uri.removeprefix("file://"))


def copy_run(uri: str, run_id: str, params: dict | None = None, metrics: dict | None = None) -> str:
    """A new run with the same tags and (changed) params and metrics: what MLflow cannot edit in place."""
    from mlflow.entities import Metric, Param

    mlflow_client = client(uri)
    source = mlflow_client.get_run(run_id)
    copy = mlflow_client.create_run(source.info.experiment_id, tags=source.data.tags)
    histories = {
        name: [(m.step, m.value) for m in mlflow_client.get_metric_history(run_id, name)]
        for name in source.data.metrics
    }
    histories.update(metrics or {})
    mlflow_client.log_batch(
        copy.info.run_id,
        params=[Param(k, v) for k, v in {**source.data.params, **(params or {})}.items()],
        metrics=[Metric(name, value, 0, step) for name, history in histories.items() for step, value in history],
    )
    mlflow_client.set_terminated(copy.info.run_id)
    return copy.info.run_id


def test_a_fresh_record_is_identical_in_every_value(logged):
    result = reproduce(logged)
    assert result.exit_code == 0, result.output
    assert result.output == (
        f"identical: run {logged} retrained from its record gives all 7 logged losses, "
        "2 other metric value(s), 2 LoggedModel(s) (20 tensors) bit for bit\n"
    )


def model_folder(uri: str, run_id: str, step: int) -> tuple[str, Path]:
    """The id and local artifact folder of the run's LoggedModel at a step: where its checkpoint is stored."""
    mlflow_client = client(uri)
    (output,) = [o for o in mlflow_client.get_run(run_id).outputs.model_outputs if o.step == step]
    location = mlflow_client.get_logged_model(output.model_id).artifact_location
    return output.model_id, Path(location.removeprefix("file://"))


def test_a_deleted_final_checkpoint_is_missing_not_diverged(logged, store_uri):
    model_id, folder = model_folder(store_uri, logged, 6)
    (folder / "data" / "model.pth").unlink()  # the checkpoint's only copy of the weights
    result = reproduce(logged)
    assert result.exit_code == 1
    assert result.output == (
        f"differs at LoggedModel at step 6: missing (LoggedModel {model_id}: it has no "
        "data/model.pth); the record says the run finished, so it keeps these weights\n"
    )


def test_a_deleted_intermediate_checkpoint_is_named(logged, store_uri):
    model_id, _folder = model_folder(store_uri, logged, 4)
    client(store_uri).delete_logged_model(model_id)
    result = reproduce(logged)
    assert result.exit_code == 1
    assert result.output.startswith(f"differs at LoggedModel at step 4: missing (LoggedModel {model_id}: ")


def test_a_rewritten_checkpoint_names_the_tensor_and_entry(logged, store_uri):
    _model_id, folder = model_folder(store_uri, logged, 6)
    path = folder / "data" / "model.pth"
    weights = torch.load(path, weights_only=True)
    weights["fc2.bias"][7] += 1e-3
    torch.save(weights, path)
    result = reproduce(logged)
    assert result.exit_code == 1
    assert result.output.startswith("differs at LoggedModel at step 6, tensor fc2.bias[7]: logged ")


def test_a_logged_model_of_another_kind_is_refused(logged, store_uri):
    model_id, folder = model_folder(store_uri, logged, 6)
    torch.save({"weights": [1, 2, 3]}, folder / "data" / "model.pth")
    result = reproduce(logged)
    assert result.exit_code == 1
    assert result.output.startswith(
        f"differs at LoggedModel at step 6: missing (LoggedModel {model_id}: "
        "data/model.pth holds a dict, not the LeNet's state dict)"
    )


def as_old_store(uri: str, run_id: str, folder: Path) -> None:
    """The run as stores written before checkpoints were kept once: each LoggedModel's data/model.pth a
    pickled LeNet, and the same weights as state dicts in the run's checkpoints/ (final.pt, step-NNNNNN.pt)."""
    from tinytrain.model import LeNet

    files = folder / "checkpoints"
    files.mkdir()
    for step in (4, 6):
        _model_id, model = model_folder(uri, run_id, step)
        weights = torch.load(model / "data" / "model.pth", weights_only=True)
        net = LeNet()
        net.load_state_dict(weights)
        torch.save(net, model / "data" / "model.pth")
        torch.save(weights, files / ("final.pt" if step == 6 else f"step-{step:06d}.pt"))
    client(uri).log_artifacts(run_id, str(files), "checkpoints")


def test_an_old_store_reproduces_from_its_checkpoint_files_and_pickled_nets(logged, store_uri, tmp_path):
    as_old_store(store_uri, logged, tmp_path)
    result = reproduce(logged)
    assert result.exit_code == 0, result.output
    assert result.output.endswith("2 checkpoint(s) and 2 LoggedModel(s) (40 tensors) bit for bit\n")


def test_an_old_stores_deleted_final_checkpoint_file_is_missing_not_diverged(logged, store_uri, tmp_path):
    as_old_store(store_uri, logged, tmp_path)
    (run_folder(store_uri, logged) / "checkpoints" / "final.pt").unlink()
    result = reproduce(logged)
    assert result.exit_code == 1
    assert result.output == (
        "differs at checkpoint at step 6: missing (not in the run's artifacts); the record "
        "says the run finished, so it keeps these weights\n"
    )


@pytest.mark.parametrize("metric", ["final_loss", "initial_loss"])
def test_a_changed_summary_loss_is_named(logged, store_uri, metric):
    mlflow_client = client(store_uri)
    step = 6 if metric == "final_loss" else 0
    mlflow_client.log_metric(logged, metric, 0.5, step=step)
    assert mlflow_client.get_run(logged).data.metrics[metric] == 0.5  # what compare and the UI now read
    result = reproduce(logged)
    assert result.exit_code == 1
    assert result.output.startswith(
        f"differs at metric {metric}: the record has 1 value(s) more than training logs, from "
    )


def test_a_changed_loss_value_names_its_step_and_both_values(logged, store_uri):
    history = sorted(client(store_uri).get_metric_history(logged, "loss"), key=lambda m: m.step)
    values = [(m.step, m.value) for m in history]
    values[4] = (4, values[4][1] * (1 + 1e-6))
    tampered = copy_run(store_uri, logged, metrics={"loss": values})
    result = reproduce(tampered)
    assert result.exit_code == 1
    difference = abs(values[4][1] - history[4].value)
    assert result.output.splitlines()[0].startswith(
        f"differs at metric loss at step 4: logged {values[4][1]!r}, retrained {history[4].value!r} "
        f"(difference {difference:.3g})"
    )


def test_a_truncated_history_is_named(logged, store_uri):
    history = sorted(client(store_uri).get_metric_history(logged, "loss"), key=lambda m: m.step)
    tampered = copy_run(store_uri, logged, metrics={"loss": [(m.step, m.value) for m in history[:5]]})
    result = reproduce(tampered)
    assert result.exit_code == 1
    assert result.output.startswith(
        "differs at metric loss: the record ends at step 4, training goes on to step 6 (2 value(s) missing: truncated)"
    )


def test_a_deleted_logged_model_is_named(logged, store_uri):
    mlflow_client = client(store_uri)
    (output,) = [o for o in mlflow_client.get_run(logged).outputs.model_outputs if o.step == 6]
    mlflow_client.delete_logged_model(output.model_id)
    result = reproduce(logged)
    assert result.exit_code == 1
    assert result.output.startswith(f"differs at LoggedModel at step 6: missing (LoggedModel {output.model_id}: ")


def test_a_logged_model_without_its_weights_file_is_named(logged, store_uri):
    mlflow_client = client(store_uri)
    (output,) = [o for o in mlflow_client.get_run(logged).outputs.model_outputs if o.step == 4]
    location = mlflow_client.get_logged_model(output.model_id).artifact_location
    (Path(location.removeprefix("file://")) / "data" / "model.pth").unlink()
    result = reproduce(logged)
    assert result.exit_code == 1
    assert result.output.startswith(
        f"differs at LoggedModel at step 4: missing (LoggedModel {output.model_id}: it has no data/model.pth)"
    )


def test_a_changed_param_no_longer_gives_the_run_key(logged, store_uri):
    tampered = copy_run(store_uri, logged, params={"lr": "0.02"})
    result = reproduce(tampered)
    assert result.exit_code == 1
    assert result.output.startswith("differs at params: they give run key ")


def test_a_changed_run_key_is_named(logged, store_uri):
    client(store_uri).set_tag(logged, "tinytrain.run_key", "0000000000000000")
    result = reproduce(logged)
    assert result.exit_code == 1
    assert result.output.startswith("differs at params: they give run key ")
    assert "the run's tag says 0000000000000000" in result.output


def test_a_metric_training_does_not_produce_is_named_but_wall_time_is_not(logged, store_uri):
    mlflow_client = client(store_uri)
    mlflow_client.log_metric(logged, "train_seconds", 1e9)  # wall time: never the same twice
    assert reproduce(logged).exit_code == 0
    mlflow_client.log_metric(logged, "test_accuracy", 1.0)
    result = reproduce(logged)
    assert result.exit_code == 1
    assert result.output == ("differs at metric test_accuracy: logged (1 value(s)), but training does not produce it\n")


DIVERGING = ("optimizer=sgd", "lr=100", "checkpoint_every=2")


def test_a_diverged_run_is_identical_without_checkpoints(store_uri):
    run_id = log_run(store_uri, overrides=DIVERGING)
    result = reproduce(run_id)
    assert result.exit_code == 0, result.output
    assert result.output.endswith("bit for bit; no checkpoint: its record says it diverged\n")
    assert "logged losses" in result.output


def test_a_diverged_run_said_finished_by_its_record_is_named(store_uri):
    run_id = log_run(store_uri, overrides=DIVERGING)
    client(store_uri).set_tag(run_id, "tinytrain.outcome", "finished")
    result = reproduce(run_id)
    assert result.exit_code == 1
    assert result.output.startswith("differs at outcome: logged finished, retrained diverged (and ")


def test_reproduce_of_an_unknown_run_is_one_line(store_uri, logged):
    result = invoke(["reproduce", "0123456789abcdef"])
    assert result.exit_code == 1 and result.output.count("\n") == 1
    assert result.output.startswith("Error: no run '0123456789abcdef' in sqlite:///")


def test_a_vmap_run_is_retrained_alone_bit_for_bit(store_uri):
    text = GRID.replace("seed = [0]", "seed = [0, 1, 2]").replace("checkpoint_every = 4", 'engine = "vmap"')
    from tinytrain.sweep import run_sweep

    outcome = run_sweep(
        load_experiment("test", text=text), store_uri, with_parent=False, progress=False, background=False
    )
    assert outcome.counts.finished == 3
    for run_id in outcome.counts.run_ids.values():
        result = reproduce(run_id)
        assert result.exit_code == 0 and result.output.startswith("identical: "), result.output


def test_a_schedule_free_record_from_before_exact_evaluation_reproduces_with_the_round_trip(store_uri):
    """A record with the `evaluation` tag was trained with its weights restored exactly after each checkpoint;
    one without it (every record made before) with optimizer.train()'s round trip, which reproduce then uses:
    the tag decides, so taking it away from a record of this code must make reproduce differ."""
    text = GRID.replace('["adam"]', '["schedulefree-adamw"]').replace("steps = 6", "steps = 20")
    run_id = log_run(store_uri, text=text, overrides=("checkpoint_every=5",))
    assert client(store_uri).get_run(run_id).data.tags["tinytrain.evaluation"] == "exact"
    result = reproduce(run_id)
    assert result.exit_code == 0 and result.output.startswith("identical: "), result.output
    client(store_uri).delete_tag(run_id, "tinytrain.evaluation")
    result = reproduce(run_id)
    assert result.exit_code == 1 and result.output.startswith("differs at "), result.output

"""Trust the numbers: resume after any interruption, reproduce from the record, check the gradients."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from tinytrain.cli import cli
from tinytrain.tracking import finished_keys_readonly

from .conftest import children, runs_of

GRID = """# tinytrain sweep grid.toml
name = "trust"
steps = 150
[grid]
optimizer = ["sgd", "adam"]
lr = [0.01, 0.001]
seed = [0, 1]
"""


def start_sweep(path, uri):
    """A sweep in its own process group (it has a writer process beside it)."""
    return subprocess.Popen([sys.executable, "-m", "tinytrain", "sweep", path, "--quiet"],
                            env={**os.environ, "MLFLOW_TRACKING_URI": uri}, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            # a shell's background jobs inherit SIGINT ignored (CI may run us so): restore it
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def wait_for_finished_runs(uri, count, process, timeout=120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, "the sweep ended before it could be interrupted"
        try:
            if len(finished_keys_readonly(uri, "trust")) >= count:
                return
        except Exception:  # the store is being created
            pass
        time.sleep(0.05)
    raise AssertionError("no runs finished in time")


def statuses(uri):
    return sorted(run.info.status for run in children(uri, "trust"))


@pytest.mark.slow
def test_sigkill_of_everything_then_rerun_gives_one_finished_run_per_cell(experiment_file, store_uri, cli_runner):
    """A lost machine: the sweep and its writer die at once and leave their runs RUNNING."""
    path = experiment_file(GRID.replace("steps = 150", "steps = 600"))  # runs long enough to be caught running
    process = start_sweep(path, store_uri)
    wait_for_finished_runs(store_uri, 2, process)
    # between one run's end and the next one's start the writer has no run open: kill while one is
    deadline = time.monotonic() + 60
    while "RUNNING" not in statuses(store_uri) and time.monotonic() < deadline:
        time.sleep(0.02)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    time.sleep(0.5)
    before = statuses(store_uri)
    assert "RUNNING" in before and before.count("FINISHED") >= 2
    again = cli_runner.invoke(cli, ["sweep", path, "--quiet"])
    assert again.exit_code == 0, again.output
    finished = before.count("FINISHED")
    assert f"8 runs: {8 - finished} trained" in again.output and f"{finished} already done" in again.output
    assert "Marked FAILED 2 run(s) left RUNNING by a killed sweep" in again.output  # the cell and its parent
    runs = children(store_uri, "trust")
    keys = [run.data.tags["tinytrain.run_key"] for run in runs if run.info.status == "FINISHED"]
    assert len(keys) == len(set(keys)) == 8
    assert all(run.info.status != "RUNNING" for run in runs_of(store_uri, "trust"))


@pytest.mark.slow
def test_sigint_marks_the_current_run_killed_and_exits_130(experiment_file, store_uri):
    process = start_sweep(experiment_file(GRID.replace("steps = 150", "steps = 1500")), store_uri)
    wait_for_finished_runs(store_uri, 1, process)
    process.send_signal(signal.SIGINT)
    _out, err = process.communicate(timeout=60)
    assert process.returncode == 130
    assert err.strip().splitlines()[-1].startswith("Interrupted: ")
    assert "Traceback" not in err
    cells = statuses(store_uri)
    assert cells.count("KILLED") == 1 and "RUNNING" not in cells
    parent = [run for run in runs_of(store_uri, "trust") if run.data.tags.get("tinytrain.kind") == "sweep"]
    assert [run.info.status for run in parent] == ["KILLED"]


@pytest.fixture
def one_run(cli_runner, store_uri):
    result = cli_runner.invoke(cli, ["run", "--optimizer", "adam", "--lr", "0.01", "--steps", "6"])
    assert result.exit_code == 0, result.output
    (run,) = children(store_uri, "optimizer-grid")
    return run


def test_reproduce_says_identical_on_a_fresh_record(one_run, cli_runner):
    result = cli_runner.invoke(cli, ["reproduce", one_run.info.run_id])
    assert result.exit_code == 0, result.output
    assert result.output == (f"identical: run {one_run.info.run_id} retrained from its record gives all 7 logged "
                             "losses and 10 checkpoint tensors bit for bit\n")


def test_reproduce_reports_the_first_step_that_differs(one_run, cli_runner, store_uri):
    import mlflow
    from mlflow.entities import Metric, Param, RunTag

    client = mlflow.MlflowClient(store_uri)
    source = client.get_run(one_run.info.run_id)
    history = sorted(client.get_metric_history(one_run.info.run_id, "loss"), key=lambda m: m.step)
    tampered = client.create_run(source.info.experiment_id, tags=source.data.tags)
    values = [m.value for m in history]
    values[4] = values[4] * (1 + 1e-6)
    client.log_batch(tampered.info.run_id,
                     params=[Param(k, v) for k, v in source.data.params.items()],
                     metrics=[Metric("loss", v, 0, step) for step, v in enumerate(values)],
                     tags=[RunTag("note", "logged by the test with one altered loss")])
    client.set_terminated(tampered.info.run_id)
    result = cli_runner.invoke(cli, ["reproduce", tampered.info.run_id])
    assert result.exit_code == 1
    difference = values[4] - history[4].value
    assert result.output == (f"differs at step 4: logged {values[4]!r}, retrained {history[4].value!r} "
                             f"(difference {abs(difference):.3g}); 5 values compared\n")


def test_reproduce_compares_the_checkpoint_weights(one_run, store_uri, tmp_path):
    from tinytrain.spec import RunSpec
    from tinytrain.tracking import read_logged_run
    from tinytrain.verify import reproduce

    record = read_logged_run(store_uri, one_run.info.run_id)
    assert sorted(record.checkpoints) == [6]
    weights = {name: tensor.clone() for name, tensor in record.checkpoints[6].items()}
    weights["fc2.bias"][7] += 1e-3
    verdict = reproduce(one_run.info.run_id, RunSpec.from_params(one_run.data.params), record.losses,
                        {6: weights}, record.tags)
    assert verdict.difference.where == "checkpoint step 6, tensor fc2.bias[7]"
    assert abs(verdict.difference.size - 1e-3) < 1e-6


def test_reproduce_of_an_unknown_run_is_one_line(cli_runner, one_run):
    result = cli_runner.invoke(cli, ["reproduce", "0123456789abcdef"])
    assert result.exit_code == 1 and result.output.count("\n") == 1
    assert result.output.startswith("Error: no run '0123456789abcdef' in sqlite:///")


def test_sweep_from_run_reruns_the_resolved_experiment(cli_runner, experiment_file, store_uri):
    first = cli_runner.invoke(cli, ["sweep", experiment_file(GRID), "--set", "steps=2", "--quiet"])
    assert first.exit_code == 0, first.output
    (parent,) = [r for r in runs_of(store_uri, "trust") if r.data.tags.get("tinytrain.kind") == "sweep"]
    again = cli_runner.invoke(cli, ["sweep", "--from-run", parent.info.run_id, "--dry-run"])
    assert again.exit_code == 0, again.output
    assert again.output.splitlines()[-1] == "trust: 8 runs, 0 to run, 8 already done (dry run: nothing written)"
    assert "steps=2 " in again.output


def test_gradcheck_passes_on_the_net(cli_runner):
    result = cli_runner.invoke(cli, ["gradcheck", "--entries", "20"])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[-1] == "gradcheck passed: every tensor within 0.0001"
    assert result.output.count(" ok ") == 10


class LeakyBackwardReLU(torch.autograd.Function):
    """A ReLU whose hand-written backward is wrong: it lets a tenth of the gradient through negative inputs."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x.clamp(min=0)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * torch.where(x > 0, 1.0, 0.1).to(grad.dtype)


def test_gradcheck_fails_on_a_wrong_backward():
    import torch.nn.functional as F

    from tinytrain.model import LeNet
    from tinytrain.verify import gradient_check

    class WrongNet(LeNet):
        def forward(self, x):
            x = F.max_pool2d(LeakyBackwardReLU.apply(self.conv1(x)), 2)
            x = F.max_pool2d(F.relu(self.conv2(x)), 2)
            x = torch.flatten(x, 1)
            return self.fc3(F.relu(self.fc2(F.relu(self.fc1(x)))))

    checks = {check.name: check for check in gradient_check(WrongNet, entries_per_tensor=20)}
    assert not checks["conv1.weight"].passed(1e-4) and not checks["conv1.bias"].passed(1e-4)
    assert checks["fc3.weight"].passed(1e-4)  # the layers after the wrong backward are still right


@pytest.mark.slow
def test_a_killed_sweep_process_has_its_open_runs_closed_by_the_writer(experiment_file, store_uri, cli_runner):
    """SIGKILL of the sweep alone: its writer process sees it gone and marks what it left open FAILED."""
    path = experiment_file(GRID)
    process = start_sweep(path, store_uri)
    wait_for_finished_runs(store_uri, 1, process)
    process.kill()
    process.wait()
    deadline = time.monotonic() + 60
    while "RUNNING" in [run.info.status for run in runs_of(store_uri, "trust")] and time.monotonic() < deadline:
        time.sleep(0.2)
    runs = runs_of(store_uri, "trust")
    assert "RUNNING" not in [run.info.status for run in runs]
    failed = [run for run in runs if run.info.status == "FAILED"]
    assert failed and all(run.data.tags["tinytrain.error"] == "the sweep's process ended while it ran"
                          for run in failed if run.data.tags.get("tinytrain.kind") == "run")
    again = cli_runner.invoke(cli, ["sweep", path, "--quiet"])
    assert again.exit_code == 0, again.output
    keys = [run.data.tags["tinytrain.run_key"] for run in children(store_uri, "trust") if run.info.status == "FINISHED"]
    assert len(keys) == len(set(keys)) == 8


def test_reproduce_retrains_a_vmap_run_bit_for_bit(cli_runner, experiment_file, store_uri):
    """A vmap cell's result does not depend on its batch (threads 1, oneDNN off): reproduce retrains it alone."""
    path = experiment_file(GRID.replace("steps = 150", "steps = 8"))
    result = cli_runner.invoke(cli, ["sweep", path, "--engine", "vmap", "--quiet"])
    assert result.exit_code == 0, result.output
    assert "Engine: vmap for 8 run(s)" in result.output.splitlines()
    runs = children(store_uri, "trust")
    assert len(runs) == 8 and {run.data.params["engine"] for run in runs} == {"vmap"}
    assert {run.data.tags["tinytrain.engine"] for run in runs} == {"vmap"}
    for run in runs[:2]:
        verdict = cli_runner.invoke(cli, ["reproduce", run.info.run_id])
        assert verdict.exit_code == 0 and verdict.output.startswith("identical: "), verdict.output


def test_a_vmap_sweep_too_small_to_batch_trains_sequentially_keeps_its_keys_and_reproduces(
        cli_runner, experiment_file, store_uri, monkeypatch):
    """Two cells asked for as vmap, fewer than the engine batches (3 here; 1 on this machine, where one cell
    already gains): the sequential engine trains them and the summary and tags say so; the engine param and
    the run key stay those of the vmap cells (a rerun skips them), and reproduce holds."""
    import tinytrain.batching as batching
    from tinytrain.spec import load_experiment

    monkeypatch.setattr(batching, "MIN_BATCH_CELLS", 3)
    path = experiment_file(GRID.replace("steps = 150", "steps = 8").replace('["sgd", "adam"]', '["adam"]')
                           .replace("[0, 1]", "[0]"))
    result = cli_runner.invoke(cli, ["sweep", path, "--engine", "vmap", "--quiet"])
    assert result.exit_code == 0, result.output
    reason = "2 cell(s) to batch, fewer than the 3 at which the vmap engine gains"
    assert f"Engine: sequential for 2 run(s) ({reason})" in result.output.splitlines()
    runs = children(store_uri, "trust")
    assert {run.data.params["engine"] for run in runs} == {"vmap"}
    assert {(run.data.tags["tinytrain.engine"], run.data.tags["tinytrain.engine_reason"]) for run in runs} == \
        {("sequential", reason)}
    keys = {spec.key for spec in load_experiment(path, ["engine=vmap"]).specs()}
    assert {run.data.tags["tinytrain.run_key"] for run in runs} == keys
    again = cli_runner.invoke(cli, ["sweep", path, "--engine", "vmap", "--quiet"])
    assert "2 runs: 0 trained" in again.output, again.output
    verdict = cli_runner.invoke(cli, ["reproduce", runs[0].info.run_id])
    assert verdict.exit_code == 0 and verdict.output.startswith("identical: "), verdict.output

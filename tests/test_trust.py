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

    from tinytrain.gradcheck import gradient_check
    from tinytrain.model import LeNet

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

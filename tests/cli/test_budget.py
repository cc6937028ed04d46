"""Compute spent where it decides, on a real store: runs that continue after a SIGKILL or when `steps` grows,
successive halving (--budget halving), and its bad input."""

from __future__ import annotations

import dataclasses
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import children, client, group_alive, invoke
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
    import os

    os.killpg(sweep.pid, signal.SIGKILL)
    sweep.wait(timeout=30)
    while group_alive(sweep.pid):  # its writer process too
        time.sleep(0.1)
    return saved_steps(folder, lineage)[-1]


@pytest.mark.parametrize(
    "extra",
    ['engine = "vmap"', "", 'problem = "digits"\neval_every = 50\nbatch_size = 16'],
    ids=["vmap", "sequential", "digits"],
)
def test_a_sweep_killed_mid_run_continues_from_its_last_saved_step_bit_for_bit(
    extra, experiment_file, store_uri, process_groups
):
    steps, every = (1000, 50) if "digits" in extra else (3000, 50)
    file = experiment_file(LONG.format(steps=steps, every=every, extra=extra))
    spec = load_experiment(file).specs()[0]
    killed_at = kill_when_a_state_is_saved(process_groups, file, store_uri, spec.lineage, 2 * every)
    assert killed_at < steps, "the run ended before it was killed"
    assert not [run for run in children(store_uri) if run.info.status == "FINISHED"]

    result = invoke(["sweep", file, "-q"])
    assert result.exit_code == 0, result.output
    (run,) = [run for run in children(store_uri) if run.info.status == "FINISHED"]
    assert int(run.data.tags["tinytrain.continued_from_step"]) >= killed_at
    straight = train(spec)  # the same cell trained straight to the end, without a state folder
    assert metric_history(store_uri, run.info.run_id, "loss") == straight.losses
    for name, series in straight.metrics.items():
        assert metric_history(store_uri, run.info.run_id, name) == [series[step] for step in sorted(series)]
    saved = Path(client(store_uri).download_artifacts(run.info.run_id, "checkpoints/state.pt"))
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
    assert "2 already done" in invoke(["sweep", short, "--set", "steps=70", "-q"]).output
    assert sqlite_path(store_uri).parent.joinpath("states").is_dir()

"""Trust the numbers: resume after any interruption, reproduce from the record, check the gradients."""

from __future__ import annotations

import contextlib
import os
import pty
import re
import signal
import subprocess
import sys
import threading
import time

import psutil
import pytest
import torch

from tests.conftest import children, runs_of
from tinytrain.cli import cli
from tinytrain.tracking import finished_keys_readonly

GRID = """# tinytrain sweep grid.toml
name = "trust"
steps = 150
[grid]
optimizer = ["sgd", "adam"]
lr = [0.01, 0.001]
seed = [0, 1]
"""


def start_sweep(process_groups, path, uri, *options):
    """A sweep in its own process group (it has a writer process beside it), killed after the test."""
    return process_groups(
        [sys.executable, "-m", "tinytrain", "sweep", path, "--quiet", *options],
        env={**os.environ, "MLFLOW_TRACKING_URI": uri},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # a shell's background jobs inherit SIGINT ignored (CI may run us so): restore it
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def writer_of(process) -> psutil.Process:
    """The sweep's writer process: the child that multiprocessing spawned to run tracking.background._serve."""
    return writers_of(process, 1)[0]


def writers_of(process, count: int) -> list[psutil.Process]:
    """The sweep's `count` writer processes, in the order they started: the sweep's writer, then its run
    writers (tracking/writers.py)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        found = []
        for child in psutil.Process(process.pid).children():
            with contextlib.suppress(psutil.Error):
                if "spawn_main" in " ".join(child.cmdline()):
                    found.append(child)
        if len(found) >= count:
            return sorted(found, key=lambda child: (child.create_time(), child.pid))
        time.sleep(0.05)
    raise AssertionError(f"the sweep started fewer than {count} writer processes")


def died_line(pid: int) -> str:
    return (
        f"Error: the tracking writer process (pid {pid}) died (killed by SIGKILL): the sweep "
        "stopped; run the same command again, it marks the runs left open FAILED and trains what is "
        "missing\n"
    )


def wait_for_open_cell(uri, process, timeout=60):
    """Until a cell's run is RUNNING: between one run's end and the next one's start no cell is open."""
    deadline = time.monotonic() + timeout
    while "RUNNING" not in statuses(uri):
        if process.poll() is not None:
            raise AssertionError(f"the sweep ended (exit {process.returncode}) first: {process.stderr.read()}")
        assert time.monotonic() < deadline, "no cell was ever seen running"
        time.sleep(0.02)


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


def statuses(uri, experiment="trust"):
    """The statuses of the cells' runs, read with plain SQL: polling through MLflow's client while the sweep
    creates the store would create it a second time, beside the sweep's writer."""
    from tinytrain.tracking.sqlite import query_sqlite

    try:
        rows = query_sqlite(
            uri,
            """
            SELECT runs.status FROM runs
            JOIN experiments ON experiments.experiment_id = runs.experiment_id
            JOIN tags ON tags.run_uuid = runs.run_uuid AND tags.key = 'tinytrain.kind' AND tags.value = 'run'
            WHERE experiments.name = ? AND runs.lifecycle_stage = 'active'""",
            (experiment,),
        )
    except Exception:  # noqa: BLE001 - the store is being created: no tables yet
        return []
    return sorted(status for (status,) in rows)


@pytest.mark.slow
@pytest.mark.parametrize(
    "options",
    [(), ("--jobs", "2"), ("--engine", "vmap"), ("--set", "writers=2")],
    ids=["inprocess", "pool", "vmap", "two-writers"],
)
def test_sigkill_of_everything_then_rerun_gives_one_finished_run_per_cell(
    experiment_file, store_uri, cli_runner, process_groups, options
):
    """A lost machine: the sweep, its writer (and its workers) die at once and leave their runs RUNNING."""
    steps = "steps = 3000" if "vmap" in options else "steps = 600"  # long enough to be caught running
    path = experiment_file(GRID.replace("steps = 150", steps))
    process = start_sweep(process_groups, path, store_uri, *options)
    if "vmap" not in options:  # a vmap batch finishes its cells together
        wait_for_finished_runs(store_uri, 2, process, timeout=180)
    wait_for_open_cell(store_uri, process, timeout=180)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    time.sleep(0.5)
    before = statuses(store_uri)
    left_running = [run.info.status for run in runs_of(store_uri, "trust")].count("RUNNING")  # cells and parent
    assert "RUNNING" in before and left_running == before.count("RUNNING") + 1
    again = cli_runner.invoke(cli, ["sweep", path, "--quiet", *options])
    assert again.exit_code == 0, again.output
    finished = before.count("FINISHED")
    assert f"8 runs: {8 - finished} trained" in again.output and f"{finished} already done" in again.output
    assert f"Marked FAILED {left_running} run(s) left RUNNING by a killed sweep" in again.output
    runs = children(store_uri, "trust")
    keys = [run.data.tags["tinytrain.run_key"] for run in runs if run.info.status == "FINISHED"]
    assert len(keys) == len(set(keys)) == 8  # exactly once each
    assert all(run.info.status != "RUNNING" for run in runs_of(store_uri, "trust"))


def parents(uri):
    return [run for run in runs_of(uri, "trust") if run.data.tags.get("tinytrain.kind") == "sweep"]


def artifacts_of(uri, run_id):
    from tests.conftest import client

    return sorted(item.path for item in client(uri).list_artifacts(run_id))


class Terminal:
    """A pseudo-terminal for a sweep's stderr, as a user's: the sweep shows its progress bar there, and the bar
    names the cell in training from the moment the sweep hands it to its engine or worker. Read by a thread."""

    def __init__(self):
        self.master, self.slave = pty.openpty()
        self.text = ""
        self.changed = threading.Condition()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        while True:
            try:
                data = os.read(self.master, 65536)
            except OSError:  # EIO: every process holding the other end has closed it
                data = b""
            with self.changed:
                if not data:
                    self.changed.notify_all()
                    return
                self.text += data.decode(errors="replace")
                self.changed.notify_all()

    def wait_for(self, pattern: str, process, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        with self.changed:
            while not re.search(pattern, self.plain()):
                assert process.poll() is None, f"the sweep ended (exit {process.returncode}) first: {self.plain()}"
                assert time.monotonic() < deadline, f"never saw {pattern!r}: {self.plain()}"
                self.changed.wait(0.5)

    def plain(self) -> str:
        """What was written, without the terminal's control sequences."""
        return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", self.text)

    def output(self, timeout: float = 60) -> str:
        """Everything written, once the sweep's processes (its writer may outlive it) have closed the terminal."""
        self.reader.join(timeout)
        assert not self.reader.is_alive(), f"the terminal was never closed: {self.plain()}"
        return self.plain()


@pytest.mark.slow
@pytest.mark.parametrize(
    "options",
    [(), ("--jobs", "2"), ("--engine", "vmap"), ("--set", "writers=2")],
    ids=["inprocess", "pool", "vmap", "two-writers"],
)
def test_ctrl_c_to_the_process_group_kills_the_open_runs_and_exits_130(
    experiment_file, store_uri, process_groups, options
):
    """What a terminal sends: SIGINT to every process of the group (the sweep, its writer, its workers), once
    the progress bar says a cell is training (a cell's run is RUNNING from its claim on, before it trains: a
    claim not yet trained is released, not killed; nothing in the store says when training begins)."""
    steps = "steps = 4000" if "vmap" in options else "steps = 1500"  # runs of seconds each
    terminal = Terminal()
    process = process_groups(
        [sys.executable, "-m", "tinytrain", "sweep", experiment_file(GRID.replace("steps = 150", steps)), *options],
        env={**os.environ, "MLFLOW_TRACKING_URI": store_uri},
        stdout=subprocess.PIPE,
        stderr=terminal.slave,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    os.close(terminal.slave)
    terminal.wait_for(r"training \S", process, timeout=300)
    os.killpg(process.pid, signal.SIGINT)
    process.communicate(timeout=120)
    err = terminal.output()
    assert process.returncode == 130, err[-2000:]  # the end of what the terminal showed, not every bar drawn
    assert err.strip().splitlines()[-1].startswith("Interrupted: "), err[-2000:]
    assert "Traceback" not in err, err
    cells = statuses(store_uri)
    assert "KILLED" in cells and "RUNNING" not in cells
    (parent,) = parents(store_uri)
    assert parent.info.status == "KILLED"
    assert artifacts_of(store_uri, parent.info.run_id) == ["experiment.toml"]  # no summary of a cut sweep


@pytest.mark.slow
def test_ctrl_c_before_the_first_run_is_one_line_and_130(experiment_file, store_uri, process_groups):
    process = start_sweep(process_groups, experiment_file(GRID), store_uri)
    writer_of(process)  # the writer has just been started: it is still importing MLflow, no run is logged yet
    os.killpg(process.pid, signal.SIGINT)
    _out, err = process.communicate(timeout=120)
    assert process.returncode == 130, err
    assert "Traceback" not in err and err.count("\n") == 1, err
    assert "RUNNING" not in [run.info.status for run in runs_of(store_uri, "trust")]


@pytest.mark.slow
def test_ctrl_c_in_tinytrain_run_marks_it_killed(store_uri, process_groups):
    process = process_groups(
        [sys.executable, "-m", "tinytrain", "run", "--steps", "20000"],
        env={**os.environ, "MLFLOW_TRACKING_URI": store_uri},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.monotonic() + 120
    while "RUNNING" not in statuses(store_uri, "optimizer-grid"):
        assert time.monotonic() < deadline and process.poll() is None, "the run never started"
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGINT)
    _out, err = process.communicate(timeout=120)
    assert process.returncode == 130, err
    assert "Traceback" not in err
    assert [run.info.status for run in children(store_uri, "optimizer-grid")] == ["KILLED"]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("writers", "killed"), [(1, 0), (2, 0), (2, 1)], ids=["one-writer", "sweeps-writer-of-two", "run-writer"]
)
def test_the_writer_dying_stops_the_sweep_at_once_and_a_rerun_trains_what_is_missing(
    experiment_file, store_uri, process_groups, cli_runner, writers, killed
):
    """Any writer killed (the sweep's writer, which holds the claims, or a run writer): the sweep stops at
    once with one line; what was open stays RUNNING, owned by the sweep's writer, now gone, and the next
    sweep marks it FAILED and trains what is missing."""
    path = experiment_file(GRID.replace("steps = 150", "steps = 1500").replace("lr = [0.01, 0.001]", "lr = [0.01]"))
    process = start_sweep(process_groups, path, store_uri, "--set", f"writers={writers}")
    writer = writers_of(process, writers)[killed]
    wait_for_open_cell(store_uri, process, timeout=120)
    writer.kill()
    killed_at = time.monotonic()
    _out, err = process.communicate(timeout=60)
    stopped_after = time.monotonic() - killed_at
    assert process.returncode == 1, err
    assert err == died_line(writer.pid)
    assert stopped_after < 3, f"the sweep took {stopped_after:.1f} s to notice"  # the sweep trains for longer
    finished = statuses(store_uri).count("FINISHED")
    assert statuses(store_uri).count("RUNNING") == 1 and finished < 4
    again = cli_runner.invoke(cli, ["sweep", path, "--quiet"])
    assert again.exit_code == 0, again.output
    assert f"4 runs: {4 - finished} trained" in again.output
    assert "Marked FAILED 2 run(s) left RUNNING by a killed sweep" in again.output  # the cell and the parent
    keys = [run.data.tags["tinytrain.run_key"] for run in children(store_uri, "trust") if run.info.status == "FINISHED"]
    assert len(keys) == len(set(keys)) == 4


def kill_a_busy_run_writer(uri, path, process_groups, cli_runner, name="trust", cells=80):
    """Short runs and two writers: the run writer, killed while it has results to write, stops the sweep;
    the rerun marks FAILED the runs it left RUNNING and trains each missing cell once (on SQLite or a
    server: the same path)."""
    process = start_sweep(process_groups, path, uri, "--set", "writers=2")
    _writer, run_writer = writers_of(process, 2)
    deadline = time.monotonic() + 180
    while len(finished_keys_readonly(uri, name)) < 3:
        assert process.poll() is None, process.stderr.read()
        assert time.monotonic() < deadline, "no run was written in time"
        time.sleep(0.05)
    run_writer.kill()
    _out, err = process.communicate(timeout=60)
    assert process.returncode == 1 and err == died_line(run_writer.pid), err
    before = [run.info.status for run in runs_of(uri, name) if run.data.tags.get("tinytrain.kind") == "run"]
    finished = before.count("FINISHED")
    assert finished < cells, "the sweep ended before its run writer was killed"
    again = cli_runner.invoke(cli, ["sweep", str(path), "--quiet", "--tracking-uri", uri, "--set", "writers=2"])
    assert again.exit_code == 0, again.output
    assert f"{cells} runs: {cells - finished} trained" in again.output
    # the parent, and the cells claimed and not written: their owner, the sweep's writer, is gone
    assert f"Marked FAILED {before.count('RUNNING') + 1} run(s) left RUNNING by a killed sweep" in again.output
    runs = runs_of(uri, name)
    keys = [
        run.data.tags["tinytrain.run_key"]
        for run in runs
        if run.info.status == "FINISHED" and run.data.tags.get("tinytrain.kind") == "run"
    ]
    assert len(keys) == len(set(keys)) == cells  # exactly once each
    assert "RUNNING" not in [run.info.status for run in runs]


SHORT_RUNS = (
    GRID.replace("steps = 150", "steps = 5")
    .replace("lr = [0.01, 0.001]", "lr = [0.01, 0.001, 0.003, 0.03]")
    .replace("seed = [0, 1]", "seed = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]")
)


@pytest.mark.slow
def test_a_run_writer_killed_while_it_writes_loses_nothing_and_doubles_nothing(
    experiment_file, store_uri, process_groups, cli_runner
):
    kill_a_busy_run_writer(store_uri, experiment_file(SHORT_RUNS), process_groups, cli_runner)


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
@pytest.mark.parametrize("writers", [1, 2])
def test_a_killed_sweep_process_has_its_open_runs_closed_by_the_writer(
    experiment_file, store_uri, cli_runner, process_groups, writers
):
    """SIGKILL of the sweep alone: its writer process sees it gone, marks what it left open FAILED, and exits
    (after its run writers have written what they were sent and exited)."""
    path = experiment_file(GRID.replace("steps = 150", "steps = 600"))
    process = start_sweep(process_groups, path, store_uri, "--set", f"writers={writers}")
    all_writers = writers_of(process, writers)
    writer = all_writers[0]
    wait_for_finished_runs(store_uri, 1, process)
    wait_for_open_cell(store_uri, process)
    process.kill()
    process.wait()
    writer.wait(timeout=60)  # the writer exits by itself once it has closed what was left open
    assert not any(other.is_running() and other.status() != psutil.STATUS_ZOMBIE for other in all_writers)
    runs = runs_of(store_uri, "trust")
    assert "RUNNING" not in [run.info.status for run in runs]
    failed_cells = [run for run in runs if run.info.status == "FAILED" and run.data.tags.get("tinytrain.kind") == "run"]
    assert len(failed_cells) == 1
    assert failed_cells[0].data.tags["tinytrain.error"] == "the sweep's process ended while it ran"
    assert [run.info.status for run in parents(store_uri)] == ["FAILED"]
    again = cli_runner.invoke(cli, ["sweep", path, "--quiet"])
    assert again.exit_code == 0, again.output
    keys = [run.data.tags["tinytrain.run_key"] for run in children(store_uri, "trust") if run.info.status == "FINISHED"]
    assert len(keys) == len(set(keys)) == 8


def test_a_vmap_sweep_too_small_to_batch_trains_sequentially_keeps_its_keys_and_reproduces(
    cli_runner, experiment_file, store_uri, monkeypatch
):
    """Two cells asked for as vmap, fewer than the engine batches (3 here; 1 on this machine, where one cell
    already gains): the sequential engine trains them and the summary and tags say so; the engine param and
    the run key stay those of the vmap cells (a rerun skips them), and reproduce holds."""
    import tinytrain.engines.planner as batching
    from tinytrain.spec import load_experiment

    monkeypatch.setattr(batching, "MIN_BATCH_CELLS", 3)
    path = experiment_file(
        GRID.replace("steps = 150", "steps = 8").replace('["sgd", "adam"]', '["adam"]').replace("[0, 1]", "[0]")
    )
    result = cli_runner.invoke(cli, ["sweep", path, "--engine", "vmap", "--quiet"])
    assert result.exit_code == 0, result.output
    reason = "2 cell(s) to batch, fewer than the 3 at which the vmap engine gains"
    assert f"Engine: sequential for 2 run(s) ({reason})" in result.output.splitlines()
    runs = children(store_uri, "trust")
    assert {run.data.params["engine"] for run in runs} == {"vmap"}
    assert {(run.data.tags["tinytrain.engine"], run.data.tags["tinytrain.engine_reason"]) for run in runs} == {
        ("sequential", reason)
    }
    keys = {spec.key for spec in load_experiment(path, ["engine=vmap"]).specs()}
    assert {run.data.tags["tinytrain.run_key"] for run in runs} == keys
    again = cli_runner.invoke(cli, ["sweep", path, "--engine", "vmap", "--quiet"])
    assert "every cell is done (2 runs" in again.output, again.output
    verdict = cli_runner.invoke(cli, ["reproduce", runs[0].info.run_id])
    assert verdict.exit_code == 0 and verdict.output.startswith("identical: "), verdict.output

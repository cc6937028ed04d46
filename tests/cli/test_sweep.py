"""End to end through the CLI on a real temporary SQLite store: what a sweep writes, and what it must not."""

from __future__ import annotations

import hashlib
import math
import os
import sys
from pathlib import Path

import pytest

from tests.conftest import children, client, runs_of
from tinytrain.cli import cli

GRID = """# tinytrain sweep grid.toml
name = "e2e"
steps = 4
[grid]
optimizer = ["sgd", "adam"]
lr = [0.01, 1000.0]
seed = [0, 1]
"""


def store_digest(uri: str) -> str | None:
    """A hash of the store's database with its write-ahead log and shared memory: all that a write changes."""
    path = Path(uri.removeprefix("sqlite:///"))
    if not path.exists():
        return None
    digest = hashlib.sha256()
    for part in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        digest.update(part.name.encode() + (part.read_bytes() if part.exists() else b"absent"))
    return digest.hexdigest()


def database_bytes(uri: str) -> bytes:
    """The store's database and its write-ahead log: every committed write changes one of them (a reader
    may change the shared-memory index beside them, which holds no data)."""
    path = Path(uri.removeprefix("sqlite:///"))
    wal = path.with_name(path.name + "-wal")
    return path.read_bytes() + b"|wal|" + (wal.read_bytes() if wal.exists() else b"")


@pytest.fixture
def swept(cli_runner, experiment_file, store_uri):
    result = cli_runner.invoke(cli, ["sweep", experiment_file(GRID, "grid.toml"), "--quiet"])
    assert result.exit_code == 0, result.output
    return result


def test_a_finished_sweep_leaves_its_writes_in_the_database_file_itself(swept, store_uri):
    """The writer ends without closing its connections; the sweep folds the WAL into the file and syncs it."""
    import sqlite3

    database = Path(store_uri.removeprefix("sqlite:///"))
    log = database.with_name(database.name + "-wal")
    assert not log.exists() or log.stat().st_size == 0
    connection = sqlite3.connect(f"file:{database}?mode=ro", uri=True)
    try:
        # 8 cells, the parent and its 4 cell summaries
        assert connection.execute("SELECT COUNT(*) FROM runs WHERE status = 'FINISHED'").fetchone()[0] == 8 + 1 + 4
    finally:
        connection.close()


def test_a_sweep_logs_one_parent_and_a_nested_run_per_cell(swept, store_uri):
    runs = runs_of(store_uri)
    parents = [run for run in runs if run.data.tags.get("tinytrain.kind") == "sweep"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    cells = children(store_uri)
    assert len(cells) == 8
    assert {run.data.tags["mlflow.parentRunId"] for run in cells} == {parents[0].info.run_id}
    assert sorted(
        (r.data.params["optimizer"], float(r.data.params["lr"]), int(r.data.params["seed"])) for r in cells
    ) == sorted((o, lr, s) for o in ("sgd", "adam") for lr in (0.01, 1000.0) for s in (0, 1))
    adam = next(r for r in cells if r.data.params["optimizer"] == "adam")
    assert {k: adam.data.params[k] for k in ("steps", "data_seed", "target_index", "betas", "eps")} == {
        "steps": "4",
        "data_seed": "0",
        "target_index": "3",
        "betas": "(0.9, 0.999)",
        "eps": "1e-08",
    }
    tags = adam.data.tags
    for name in (
        "tinytrain.python",
        "tinytrain.torch",
        "tinytrain.mlflow",
        "tinytrain.git_commit",
        "tinytrain.torch_threads",
        "tinytrain.mkldnn_enabled",
        "tinytrain.run_key",
    ):
        assert tags.get(name), name
    experiment_file_text = client(store_uri).download_artifacts(parents[0].info.run_id, "experiment.toml")
    assert 'name = "e2e"' in Path(experiment_file_text).read_text()
    assert "8 runs: 8 trained (4 finished, 4 diverged, 0 failed), 0 already done" in swept.output


def test_losses_and_the_checkpoint_follow_the_contract(swept, store_uri):
    import mlflow.pytorch

    from tinytrain.engines.sequential import evaluate

    converged = [r for r in children(store_uri) if r.data.tags["tinytrain.outcome"] == "finished"]
    assert len(converged) == 4
    for run in converged:
        history = sorted(client(store_uri).get_metric_history(run.info.run_id, "loss"), key=lambda m: m.step)
        assert [m.step for m in history] == list(range(5))  # steps + 1 points
        assert run.data.metrics["final_loss"] == history[-1].value
        assert run.data.metrics["initial_loss"] == history[0].value
    run = converged[0]
    outputs = run.outputs.model_outputs
    assert len(outputs) == 1 and outputs[0].step == 4
    logged = client(store_uri).get_logged_model(outputs[0].model_id)
    assert str(logged.status) == "READY" and logged.source_run_id == run.info.run_id
    assert logged.name == run.info.run_name.replace(".", "_")  # adam-lr0_01-seed0: MLflow forbids '.' there
    assert {m.key: m.value for m in logged.metrics if m.step == 4}["final_loss"] == run.data.metrics["final_loss"]
    model = mlflow.pytorch.load_model(f"models:/{outputs[0].model_id}")
    assert evaluate(model.state_dict(), 0, 3) == run.data.metrics["final_loss"]


def test_divergence_is_recorded_and_the_sweep_goes_on(swept, store_uri):
    diverged = [r for r in children(store_uri) if r.data.tags["tinytrain.outcome"] == "diverged"]
    assert sorted((r.data.params["optimizer"], r.data.params["lr"]) for r in diverged) == [
        ("adam", "1000.0"),
        ("adam", "1000.0"),
        ("sgd", "1000.0"),
        ("sgd", "1000.0"),
    ]
    for run in diverged:
        assert run.info.status == "FINISHED"
        assert not run.outputs.model_outputs  # no checkpoint of a diverged run
        history = sorted(client(store_uri).get_metric_history(run.info.run_id, "loss"), key=lambda m: m.step)
        first, last = history[0].value, history[-1].value
        assert run.data.params["diverge_above"] == "1000.0"
        # it ends at the first loss that is non-finite (MLflow stores inf as the largest float) or too large
        assert math.isnan(last) or last == sys.float_info.max or last > 1e3 * first
        assert all(math.isfinite(m.value) and m.value <= 1e3 * first for m in history[:-1])


def test_a_second_sweep_of_a_finished_grid_writes_nothing_and_points_to_the_sweep_that_made_it(
    swept, cli_runner, store_uri
):
    parent = swept.output.split("(sweep run ")[1].split(")")[0]
    before = database_bytes(store_uri)
    again = cli_runner.invoke(cli, ["sweep", "grid.toml", "--quiet"])
    assert again.exit_code == 0, again.output
    assert again.output.startswith("e2e: every cell is done (8 runs in ")
    assert "nothing trained, nothing written" in again.output
    assert f"Made by sweep run {parent}; browse: `tinytrain ui`, then open" in again.output
    assert f"viewStateShareKey=tinytrain-{parent}-charts" in again.output
    assert database_bytes(store_uri) == before  # no parent run, no cell summaries: not a byte
    assert len(children(store_uri)) == 8 and len(runs_of(store_uri)) == 8 + 1 + 4


def test_a_sweep_writes_its_prepared_views_and_prints_the_links_that_open_them(swept, store_uri):
    """Two experiment tags, MLflow's shared view state as plain JSON, named by the printed links' share keys."""
    import json

    parent = swept.output.split("(sweep run ")[1].split(")")[0]
    experiment = client(store_uri).get_experiment_by_name("e2e")
    views = {
        key.removeprefix("mlflow.sharedViewState."): json.loads(value)
        for key, value in experiment.tags.items()
        if key.startswith("mlflow.sharedViewState.")
    }
    assert set(views) == {f"tinytrain-{parent}-charts", f"tinytrain-{parent}-runs"}
    for key in views:
        assert f"viewStateShareKey={key}&" in swept.output
    charts = views[f"tinytrain-{parent}-charts"]
    shown = client(store_uri).search_runs([experiment.experiment_id], charts["searchFilter"])
    assert sorted(run.info.run_name for run in shown) == sorted(
        f"{optimizer}-lr0.01-seed{seed}" for optimizer in ("sgd", "adam") for seed in (0, 1)
    )  # the runs that finished (the others diverged); no cell summary, no parent
    listed = client(store_uri).search_runs(
        [experiment.experiment_id], views[f"tinytrain-{parent}-runs"]["searchFilter"]
    )
    assert len(listed) == 8 and {run.data.tags["tinytrain.kind"] for run in listed} == {"run"}
    assert charts["groupBy"]["groupByKeys"] == [
        {"mode": "param", "groupByData": "optimizer"},
        {"mode": "param", "groupByData": "lr"},
    ]
    lines = swept.output.splitlines()
    browse = lines.index("Browse: `tinytrain ui`, then open")  # the test's store is this folder's default
    assert [line.split(": ")[0].strip() for line in lines[browse + 1 : browse + 4]] == [
        "charts of its finished runs",
        "every run, grouped by cell",
        "cell summaries (median curves, ranks)",
    ]


def test_a_diverged_run_says_so_in_its_name_and_keeps_its_numbers(swept, store_uri):
    for run in children(store_uri):
        spec_name = f"{run.data.params['optimizer']}-lr{float(run.data.params['lr']):g}-seed{run.data.params['seed']}"
        diverged = run.data.tags["tinytrain.outcome"] == "diverged"
        assert run.info.run_name == (f"{spec_name} (diverged)" if diverged else spec_name)
        assert run.info.status == "FINISHED"  # still a finished cell: resume skips it
        if diverged:
            history = client(store_uri).get_metric_history(run.info.run_id, "loss")
            assert max(metric.value for metric in history) > 1e3 * run.data.metrics["initial_loss"]


def test_which_sweeps_made_the_runs_reads_the_same_in_plain_sql_as_through_mlflow(swept, cli_runner, store_uri):
    from tinytrain.tracking.sweep_records import sweeps_of_runs, sweeps_of_runs_mlflow

    cli_runner.invoke(cli, ["sweep", "grid.toml", "--quiet", "--force", "--set", "optimizer=adam"])  # 4 more
    run_ids = [run.info.run_id for run in children(store_uri)]
    assert len(run_ids) == 8  # the replaced ones are deleted
    made = sweeps_of_runs(store_uri, "e2e", run_ids)
    assert made == sweeps_of_runs_mlflow(store_uri, "e2e", run_ids)
    assert len(made.parents) == 2
    assert (
        sweeps_of_runs(store_uri, "e2e", run_ids[:1]).parents
        == sweeps_of_runs_mlflow(store_uri, "e2e", run_ids[:1]).parents
    )
    assert sweeps_of_runs(store_uri, "nothing", run_ids) == sweeps_of_runs_mlflow(store_uri, "nothing", run_ids)
    # a sweep logged before prepared views has none: the no-op sweep points to its runs page instead
    old, new = made.parents
    experiment_id = client(store_uri).get_experiment_by_name("e2e").experiment_id
    for view in ("charts", "runs"):
        client(store_uri).delete_experiment_tag(experiment_id, f"mlflow.sharedViewState.tinytrain-{old}-{view}")
    made = sweeps_of_runs(store_uri, "e2e", run_ids)
    assert made == sweeps_of_runs_mlflow(store_uri, "e2e", run_ids) and made.with_views == {new}
    again = cli_runner.invoke(cli, ["sweep", "grid.toml", "--quiet"])
    assert f"Made by sweep run {old}; browse: `tinytrain ui`, then open http://127.0.0.1:5000/#/" in again.output
    assert f"Made by sweep run {new}; browse: `tinytrain ui`, then open\n" in again.output


def test_dry_run_lists_runs_marks_done_ones_and_writes_nothing(cli_runner, experiment_file, store_uri):
    path = experiment_file(GRID, "grid.toml")
    result = cli_runner.invoke(cli, ["sweep", path, "--dry-run", "--set", "seed=0"])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[-1] == "e2e: 4 runs, 4 to run, 0 already done (dry run: nothing written)"
    assert store_digest(store_uri) is None
    cli_runner.invoke(cli, ["sweep", path, "--set", "seed=0", "--set", "optimizer=adam", "--quiet"])
    digest = store_digest(store_uri)
    result = cli_runner.invoke(cli, ["sweep", path, "--dry-run", "--set", "seed=0"])
    lines = result.output.splitlines()
    assert [line.split()[0] for line in lines[:-1]] == ["run", "run", "done", "done"]
    assert lines[-1] == "e2e: 4 runs, 2 to run, 2 already done (dry run: nothing written)"
    assert store_digest(store_uri) == digest


BAD = [
    (["--set", "optimizer=adamx"], "unknown optimizer 'adamx' in grid.optimizer"),
    (["--set", "lr=0"], "lr must be a finite number > 0, got 0 in grid.lr"),
    (["--set", "steps=0"], "steps must be an integer >= 1, got 0"),
    (["--set", "seed="], "has an empty value"),
    (["--set", "steps10"], "--set 'steps10' must look like KEY=V1,V2"),
    (["--set", "stepz=1"], "--set stepz: unknown key"),
    (["--set", "writers=0"], "writers must be an integer >= 1 or auto"),
]


@pytest.mark.parametrize("args, message", BAD)
def test_bad_input_is_one_line_exit_2_and_leaves_the_store_as_it_was(args, message, swept, cli_runner, store_uri):
    before = store_digest(store_uri)
    result = cli_runner.invoke(cli, ["sweep", "grid.toml", *args])
    assert result.exit_code == 2
    assert result.output.count("\n") == 1 and result.output.startswith("Error: ") and message in result.output
    assert store_digest(store_uri) == before


def test_bad_input_found_after_the_store_was_read_leaves_it_as_it_was(swept, cli_runner, store_uri):
    """--from-run reads the sweep's experiment file from the store (through MLflow) before the override fails."""
    (parent,) = [run for run in runs_of(store_uri) if run.data.tags.get("tinytrain.kind") == "sweep"]
    before = store_digest(store_uri)
    result = cli_runner.invoke(cli, ["sweep", "--from-run", parent.info.run_id, "--set", "lr=0"])
    assert result.exit_code == 2
    assert result.output == "Error: lr must be a finite number > 0, got 0 in grid.lr\n"
    assert store_digest(store_uri) == before


def test_the_digest_sees_a_write_that_is_still_in_the_log(swept, store_uri):
    """The writes of an open connection in WAL mode sit in mlflow.db-wal: the digest must change with them."""
    import sqlite3

    before = store_digest(store_uri)
    connection = sqlite3.connect(store_uri.removeprefix("sqlite:///"))
    try:
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("UPDATE experiments SET name = name")
        connection.commit()
        assert store_digest(store_uri) != before
    finally:
        connection.close()


def test_bad_files_are_one_line_errors(cli_runner, experiment_file, store_uri):
    for path, message in [
        ("missing.toml", "Error: experiment file 'missing.toml' does not exist"),
        (experiment_file("steps = [\n", "broken.toml"), "broken.toml is not valid TOML"),
        (experiment_file('name = "x"\nsteps = 0\n', "zero.toml"), "steps must be an integer"),
    ]:
        result = cli_runner.invoke(cli, ["sweep", path])
        assert result.exit_code == 2 and result.output.count("\n") == 1 and message in result.output, result.output
    assert store_digest(store_uri) is None


def blog_measurement() -> tuple[float, float]:
    """The blog's one Adam step, recomputed from DESIGN.md's description with plain torch (not tinytrain's code)."""
    import torch
    from torch import nn

    torch.set_num_threads(1)
    torch.backends.mkldnn.enabled = False
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(1, 6, 5),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(400, 120),
        nn.ReLU(),
        nn.Linear(120, 84),
        nn.ReLU(),
        nn.Linear(84, 10),
    )
    x = torch.randn((1, 1, 32, 32), generator=torch.Generator().manual_seed(0))
    target = torch.zeros(1, 10)
    target[0, 3] = 1.0
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    optimizer.zero_grad()
    loss = nn.MSELoss()(net(x), target)
    loss.backward()
    optimizer.step()
    with torch.no_grad():
        return loss.item(), nn.MSELoss()(net(x), target).item()


def test_run_logs_one_unnested_run_and_replaces_its_earlier_one(cli_runner, store_uri):
    args = ["run", "--optimizer", "adam", "--lr", "1e-3", "--seed", "0", "--steps", "1"]
    first = cli_runner.invoke(cli, args)
    assert first.exit_code == 0, first.output
    before, after = blog_measurement()
    assert first.output.startswith(
        f"adam-lr0.001-seed0: loss {before:.6g} -> {after:.6g} after 1 step(s), finished; run "
    )
    second = cli_runner.invoke(cli, args)
    assert second.exit_code == 0
    cells = children(store_uri, "optimizer-grid")
    assert len(cells) == 1 and "mlflow.parentRunId" not in cells[0].data.tags
    assert cells[0].info.run_id in second.output


def test_force_reruns_and_keeps_one_finished_run_per_cell(swept, cli_runner, store_uri):
    result = cli_runner.invoke(cli, ["sweep", "grid.toml", "--force", "--set", "optimizer=adam", "--quiet"])
    assert result.exit_code == 0, result.output
    assert "Replaced 4 earlier finished run(s)" in result.output
    keys = [r.data.tags["tinytrain.run_key"] for r in children(store_uri) if r.info.status == "FINISHED"]
    assert len(keys) == len(set(keys)) == 8


def test_unreachable_tracking_server_is_one_line_before_any_run(cli_runner, experiment_file):
    result = cli_runner.invoke(cli, ["sweep", experiment_file(GRID), "--tracking-uri", "http://127.0.0.1:9"])
    assert result.exit_code == 1 and result.output.count("\n") == 1
    assert result.output.startswith("Error: cannot reach the tracking server at http://127.0.0.1:9")


def test_help_and_dry_run_import_neither_torch_nor_mlflow(swept, store_uri):
    """`tinytrain --help`, `sweep --help` and `--dry-run` (which reads the store) stay instant."""
    import subprocess

    for args in (["--help"], ["sweep", "--help"], ["sweep", "grid.toml", "--dry-run"]):
        done = subprocess.run(
            [sys.executable, "-X", "importtime", "-m", "tinytrain", *args], capture_output=True, text=True, check=True
        )
        imported = {line.split("|")[-1].strip().split(".")[0] for line in done.stderr.splitlines() if "|" in line}
        assert not imported & {"torch", "mlflow", "numpy", "matplotlib"}, args
    assert "8 already done" in done.stdout


def test_vmap_engine_on_a_dask_cluster_is_bad_input(cli_runner, experiment_file, store_uri):
    result = cli_runner.invoke(cli, ["sweep", experiment_file(GRID), "--engine", "vmap", "--executor", "dask"])
    assert result.exit_code == 2 and result.output == (
        "Error: engine vmap trains its cells in batched nets on this machine (one per --jobs worker): drop "
        "--executor dask, or use engine sequential to spread runs over a cluster\n"
    )
    assert store_digest(store_uri) is None


def test_a_pool_whose_worker_dies_logs_failed_runs_and_goes_on():
    """A worker process killed under a pool: the runs it took are failed results, not a traceback."""
    import os
    import signal

    from tinytrain.executors import ProcessPool
    from tinytrain.spec import validate

    specs = validate({"steps": 2, "grid": {"optimizer": ["sgd"], "seed": [0, 1, 2]}}).specs()
    pool = ProcessPool(1)
    try:
        worker_pid = pool.pool.submit(os.getpid).result()
        os.kill(worker_pid, signal.SIGKILL)
        results = list(pool.run(specs, lambda spec: None))
    finally:
        pool.close()
    assert [r.outcome for r in results] == ["failed"] * 3
    assert all(r.error.startswith("BrokenProcessPool") for r in results)


def test_the_store_read_without_mlflow_equals_mlflows_own_search(swept, cli_runner, store_uri):
    """--dry-run and skipping read finished cells with plain SQL; they must agree with MLflow's search."""
    from tinytrain.tracking import Store, finished_keys_readonly

    before = {run.data.tags["tinytrain.run_key"]: run.info.run_id for run in children(store_uri)}
    forced = cli_runner.invoke(cli, ["sweep", "grid.toml", "--force", "--set", "seed=0", "--quiet"])
    assert forced.exit_code == 0, forced.output
    assert "Replaced 4 earlier finished run(s)" in forced.output
    mlflow_client = client(store_uri)
    deleted = [run_id for run_id in before.values() if mlflow_client.get_run(run_id).info.lifecycle_stage == "deleted"]
    assert len(deleted) == 4  # the seed-0 cells' earlier runs, soft-deleted
    add_runs_the_reader_must_skip(store_uri)
    with Store(store_uri) as store:
        for name in ("e2e", "other"):
            by_mlflow = {
                key: run.info.run_id for key, run in store.finished_runs_by_key(store.experiment_id(name)).items()
            }
            assert finished_keys_readonly(store_uri, name) == by_mlflow, name
        e2e = {key: run.info.run_id for key, run in store.finished_runs_by_key(store.experiment_id("e2e")).items()}
    assert len(e2e) == 9 and not set(deleted) & set(e2e.values())
    assert finished_keys_readonly(store_uri, "no-such-experiment") == {}


def add_runs_the_reader_must_skip(uri: str) -> None:
    """Runs of every status and outcome, a deleted one and another experiment's, each with its own key."""
    mlflow_client = client(uri)
    e2e = mlflow_client.get_experiment_by_name("e2e").experiment_id
    other = mlflow_client.create_experiment("other")

    def run(experiment_id, key, status, outcome="converged", delete=False):
        tags = {"tinytrain.kind": "run", "tinytrain.run_key": key}
        if outcome:
            tags["tinytrain.outcome"] = outcome
        run_id = mlflow_client.create_run(experiment_id, tags=tags).info.run_id
        if status != "RUNNING":
            mlflow_client.set_terminated(run_id, status)
        if delete:
            mlflow_client.delete_run(run_id)

    run(e2e, "running", "RUNNING")
    run(e2e, "failed", "FAILED")
    run(e2e, "killed", "KILLED")
    run(e2e, "deleted", "FINISHED", delete=True)
    run(e2e, "failed-outcome", "FINISHED", outcome="failed")
    run(e2e, "no-outcome", "FINISHED", outcome=None)
    run(e2e, "diverged", "FINISHED", outcome="diverged")  # finished: counted
    run(other, "other-experiment", "FINISHED")
    run(other, "other-killed", "KILLED")


@pytest.mark.parametrize(("code", "returncode", "stderr"), [(3, 3, ""), (None, 0, ""), ("boom", 1, "boom\n")])
def test_exit_now_keeps_what_sys_exit_promises(code, returncode, stderr):
    """The command skips the interpreter's teardown: exit handlers must still run and buffered output come out."""
    import subprocess

    program = (
        "import atexit, sys, threading, time\n"
        "atexit.register(lambda: print('handler ran'))\n"
        "from tinytrain.shutdown import exit_now\n"
        "threading.Thread(target=lambda: (time.sleep(0.3), print('thread done', end=' '))).start()\n"
        "print('buffered', end=' ')\n"
        f"exit_now({code!r})\n"
        "print('never')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, env={**os.environ, "PYTHONUNBUFFERED": ""}
    )
    assert (done.returncode, done.stdout, done.stderr) == (returncode, "buffered thread done handler ran\n", stderr)


def test_the_command_exits_with_its_code_and_whole_output(experiment_file):
    import subprocess

    bad = subprocess.run([sys.executable, "-m", "tinytrain", "sweep", "missing.toml"], capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stdout == "" and bad.stderr.count("\n") == 1 and "missing.toml" in bad.stderr
    listed = subprocess.run(
        [sys.executable, "-m", "tinytrain", "sweep", experiment_file(GRID), "--dry-run"], capture_output=True, text=True
    )
    assert listed.returncode == 0 and listed.stdout.count("\n") > 8 and listed.stdout.endswith("\n")


def test_two_writers_write_each_run_once_with_the_same_record_and_summary_as_one(
    cli_runner, experiment_file, tmp_path, monkeypatch
):
    """writers = 2: the sweep's writer and a run writer beside it share the runs (the run writer takes its
    share: each reports what it wrote); the store holds what one writer writes: every cell once, the same
    params, losses and outcomes, the parent's counts, the summary and the cell runs; the run keys are those
    of a sweep without the setting."""
    import json
    import time

    from tinytrain.tracking.background import USAGE_ENV

    path = experiment_file(GRID.replace("lr = [0.01, 1000.0]", "lr = [0.01, 0.003, 1000.0]"), "grid.toml")
    records = {}
    for writers in (1, 2):
        uri = f"sqlite:///{tmp_path / f'w{writers}' / 'mlflow.db'}"
        usage = tmp_path / f"usage-{writers}.jsonl"
        monkeypatch.setenv(USAGE_ENV, str(usage))
        result = cli_runner.invoke(
            cli, ["sweep", path, "--quiet", "--tracking-uri", uri, "--set", f"writers={writers}"]
        )
        assert result.exit_code == 0, result.output
        assert "12 runs: 12 trained (8 finished, 4 diverged, 0 failed)" in result.output
        deadline = time.monotonic() + 30
        while len(usage.read_text().splitlines() if usage.exists() else []) < writers:  # written as they exit
            assert time.monotonic() < deadline, "a writer did not report"
            time.sleep(0.1)
        written = [json.loads(line)["runs_written"] for line in usage.read_text().splitlines()]
        assert sum(written) == 12 and len(written) == writers and all(written)  # each wrote a share
        runs = runs_of(uri)
        (parent,) = [run for run in runs if run.data.tags.get("tinytrain.kind") == "sweep"]
        cells = [run for run in runs if run.data.tags.get("tinytrain.kind") == "run"]
        keys = [run.data.tags["tinytrain.run_key"] for run in cells]
        assert len(keys) == len(set(keys)) == 12 and {run.info.status for run in cells} == {"FINISHED"}
        records[writers] = {
            "parent": {k: v for k, v in parent.data.metrics.items() if k.startswith("runs_")},
            "summary": sorted(item.path for item in client(uri).list_artifacts(parent.info.run_id)),
            "cell_runs": len([run for run in runs if run.data.tags.get("tinytrain.kind") == "cell"]),
            "cells": sorted(
                (
                    run.data.tags["tinytrain.run_key"],
                    run.data.tags["tinytrain.outcome"],
                    run.data.metrics.get("final_loss"),
                    tuple(sorted(run.data.params.items())),
                )
                for run in cells
            ),
        }
    assert records[1] == records[2]
    assert records[2]["parent"]["runs_finished"] == 8 and records[2]["cell_runs"] > 0

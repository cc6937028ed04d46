"""The example plugin package (examples/plugin), installed as a user installs it, swept by import path and by
entry point in process, on a local pool and on Dask: the same numbers everywhere, reproduced bit for bit;
the store reads back in processes that lack the package; a Dask worker that lacks it fails its runs in one
line while the sweep goes on.

The package is installed with `pip install --no-deps --target` into a temporary folder that only the test's
own processes get on PYTHONPATH: the project's .venv is left as it was.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.system.test_distributed import cell_runs, dask_cluster  # noqa: F401 - dask_cluster is a fixture
from tinytrain.spec import PROJECT_ROOT

pytestmark = pytest.mark.slow

EXPERIMENT = "plugin-grid"
# Signum by entry point and, as a variant, by import path; Adam beside them; the Blobs problem (an entry
# point) with settings of its own. 3 optimizers x 1 lr x 2 seeds.
GRID = f"""
name = "{EXPERIMENT}"
steps = 4
problem = "blobs"
loss = "cross_entropy"
batch_size = 16
eval_every = 2
[problem_settings]
train_size = 64
test_size = 32
noise = 0.5
[grid]
optimizer = ["signum", "signum-slow", "adam"]
lr = [0.01]
seed = [0, 1]
[optimizers.signum-slow]
type = "tinytrain_example.optim:Signum"
momentum = 0.5
"""
CELLS = 6
TIMEOUT = 400


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """examples/plugin installed into a folder of its own (built from a copy: the checkout stays clean)."""
    root = tmp_path_factory.mktemp("plugin")
    source, target = root / "source", root / "site"
    shutil.copytree(PROJECT_ROOT / "examples" / "plugin", source)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "--target",
            str(target),
            str(source),
        ],
        check=True,
        capture_output=True,
        timeout=TIMEOUT,
    )
    assert (target / "tinytrain_example" / "optim.py").exists()
    return target


def environment(site: Path | None) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    if site is not None:
        env["PYTHONPATH"] = str(site)
    return env


def tinytrain(*args: str, site: Path | None, cwd: Path) -> subprocess.CompletedProcess:
    """The CLI in a process of its own, with the plugin package on its path (or not: site None)."""
    return subprocess.run(
        [sys.executable, "-m", "tinytrain", *args],
        cwd=cwd,
        env=environment(site),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )


def losses_by_key(uri: str) -> dict[str, list[str]]:
    import mlflow

    client = mlflow.MlflowClient(uri)
    losses = {}
    for run in cell_runs(uri, EXPERIMENT):
        assert run.data.tags["tinytrain.outcome"] == "finished", run.data.tags.get("tinytrain.error")
        history = sorted(client.get_metric_history(run.info.run_id, "loss"), key=lambda metric: metric.step)
        losses[run.data.tags["tinytrain.run_key"]] = [metric.value.hex() for metric in history]
    return losses


@pytest.fixture(scope="module")
def grid_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("grid") / "plugin-grid.toml"
    path.write_text(GRID)
    return path


@pytest.fixture(scope="module")
def in_process(site, grid_file, tmp_path_factory) -> tuple[str, dict[str, list[str]]]:
    """The reference sweep, in process: its store and its losses."""
    folder = tmp_path_factory.mktemp("in-process")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    done = tinytrain("sweep", str(grid_file), "--tracking-uri", uri, "--quiet", site=site, cwd=folder)
    assert done.returncode == 0, done.stdout + done.stderr
    losses = losses_by_key(uri)
    assert len(losses) == CELLS
    return uri, losses


@pytest.mark.parametrize("executor", [["--jobs", "2"], ["--executor", "dask", "--jobs", "2"]], ids=["pool", "dask"])
def test_the_plugins_sweep_on_the_pool_and_on_dask_as_in_process_and_reproduce(
    site, grid_file, in_process, tmp_path, executor
):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    done = tinytrain("sweep", str(grid_file), *executor, "--tracking-uri", uri, "--quiet", site=site, cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert losses_by_key(uri) == in_process[1]
    runs = cell_runs(uri, EXPERIMENT)
    by_name = {run.data.params["optimizer"]: run for run in runs if run.data.params["seed"] == "1"}
    tags = by_name["signum"].data.tags
    assert tags["tinytrain.plugin.optimizer.class"] == "tinytrain_example.optim:Signum"
    assert tags["tinytrain.plugin.optimizer.distribution"] == "tinytrain-example-plugin"
    assert tags["tinytrain.plugin.optimizer.version"] == "0.1.0"
    assert tags["tinytrain.plugin.problem.class"] == "tinytrain_example.problems:Blobs"
    assert by_name["signum-slow"].data.params["momentum"] == "0.5"
    assert by_name["signum-slow"].data.params["problem.train_size"] == "64"
    for name in ("signum", "signum-slow"):
        again = tinytrain("reproduce", by_name[name].info.run_id, "--tracking-uri", uri, site=site, cwd=tmp_path)
        assert again.returncode == 0, again.stdout + again.stderr
        assert again.stdout.startswith("identical: "), again.stdout
        assert again.stderr == ""  # no note: the same plugin version and source


READ_BACK = """
import sys
from tinytrain.tracking import read_sweep
record = read_sweep(sys.argv[1], "plugin-grid", with_losses=True)
assert not any(name.startswith("tinytrain_example") for name in sys.modules), "the plugin was imported"
print(len(record.runs), len(record.missing), sorted({run.optimizer for run in record.runs}))
"""


def test_the_store_reads_back_without_the_package_and_reproduce_says_it_is_missing(in_process, tmp_path):
    uri, _losses = in_process
    found = subprocess.run(
        [sys.executable, "-c", "import tinytrain_example"], env=environment(None), capture_output=True, timeout=60
    )
    assert found.returncode == 1  # this process really lacks the package
    compared = tinytrain("compare", "--experiment", EXPERIMENT, "--tracking-uri", uri, site=None, cwd=tmp_path)
    assert compared.returncode == 0, compared.stdout + compared.stderr
    assert all(name in compared.stdout for name in ("signum", "signum-slow", "adam"))
    plotted = tinytrain(
        "plot", "--experiment", EXPERIMENT, "--out", "curves.png", "--tracking-uri", uri, site=None, cwd=tmp_path
    )
    assert plotted.returncode == 0, plotted.stdout + plotted.stderr
    read = subprocess.run(
        [sys.executable, "-c", READ_BACK, uri], env=environment(None), capture_output=True, text=True, timeout=120
    )
    assert read.returncode == 0, read.stderr
    assert read.stdout.strip() == "6 0 ['adam', 'signum', 'signum-slow']"

    import mlflow

    run = next(r for r in cell_runs(uri, EXPERIMENT) if r.data.params["optimizer"] == "signum")
    missing = tinytrain("reproduce", run.info.run_id, "--tracking-uri", uri, site=None, cwd=tmp_path)
    assert missing.returncode == 2, missing.stdout + missing.stderr
    (line,) = missing.stderr.strip().splitlines()
    assert "needs a plugin this Python cannot use" in line
    assert "tinytrain_example.optim:Signum from tinytrain-example-plugin 0.1.0" in line
    assert mlflow.MlflowClient(uri).get_run(run.info.run_id).data.tags == run.data.tags  # nothing written


WORKER_GRID = """
name = "plugin-worker"
steps = 3
[grid]
optimizer = ["signum", "adam"]
lr = [0.01]
seed = [0, 1]
"""


def test_a_dask_worker_without_the_package_fails_those_runs_in_one_line_and_the_sweep_goes_on(
    site,
    dask_cluster,  # noqa: F811 - started without the package on its path
    tmp_path,
):
    address, _home = dask_cluster
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    (tmp_path / "worker.toml").write_text(WORKER_GRID)
    done = tinytrain(
        "sweep",
        "worker.toml",
        "--executor",
        "dask",
        "--scheduler",
        address,
        "--tracking-uri",
        uri,
        "--quiet",
        site=site,  # the driver has the package, the workers do not
        cwd=tmp_path,
    )
    assert done.returncode == 1, done.stdout + done.stderr  # runs failed; the sweep itself ran to its end
    runs = cell_runs(uri, "plugin-worker")
    outcomes = {(run.data.params["optimizer"], run.data.tags["tinytrain.outcome"]) for run in runs}
    assert len(runs) == 4 and outcomes == {("signum", "failed"), ("adam", "finished")}
    errors = {run.data.tags["tinytrain.error"] for run in runs if run.data.params["optimizer"] == "signum"}
    assert errors == {
        "PluginError: optimizer 'signum' is no entry point of tinytrain.optimizers here: install the package "
        "that provides it where the runs train"
    }

"""Every command on the digits problem, through the real CLI and a real store: sweep and resume, compare on
test accuracy, plot, reproduce (test metrics included), run, gradcheck; the vmap engine's refusal; the
process pool and Dask giving the in-process numbers."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import client, invoke

NAME = "digits-e2e"
GRID = f"""# tinytrain sweep digits.toml
name = "{NAME}"
problem = "digits"
steps = 4
batch_size = 8
eval_every = 2
[grid]
optimizer = ["adam", "schedulefree-adamw"]
lr = [1e-3, 1e-2]
seed = [0, 1]
"""
CELLS = 8


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    folder = tmp_path_factory.mktemp("digits")
    grid = folder / "digits.toml"
    grid.write_text(GRID)
    uri = f"sqlite:///{folder / 'store' / 'mlflow.db'}"
    result = invoke(["sweep", str(grid), "--quiet", "--tracking-uri", uri])
    assert result.exit_code == 0, result.output
    assert f"{CELLS} runs: {CELLS} trained ({CELLS} finished" in result.output
    return {"uri": uri, "grid": grid, "folder": folder}


def cell_runs(uri: str, name: str = NAME) -> list:
    found = client(uri).get_experiment_by_name(name)
    runs = client(uri).search_runs([found.experiment_id], max_results=1000)
    return [run for run in runs if run.data.tags.get("tinytrain.kind") == "run"]


def test_each_run_logs_test_metrics_and_the_new_settings(store):
    for run in cell_runs(store["uri"]):
        params, metrics = run.data.params, run.data.metrics
        assert {k: params[k] for k in ("problem", "loss", "batch_size", "eval_every")} == {
            "problem": "digits",
            "loss": "mse",
            "batch_size": "8",
            "eval_every": "2",
        }
        history = client(store["uri"]).get_metric_history(run.info.run_id, "test_accuracy")
        assert sorted(metric.step for metric in history) == [0, 2, 4]
        assert metrics["final_test_accuracy"] == max(history, key=lambda m: m.step).value
        assert 0 <= metrics["final_test_accuracy"] <= 1 and math.isfinite(metrics["final_test_loss"])
        assert len(client(store["uri"]).get_metric_history(run.info.run_id, "loss")) == 5


def test_a_second_sweep_resumes_every_cell(store):
    before = len(client(store["uri"]).search_runs([experiment_id(store)]))
    result = invoke(["sweep", str(store["grid"]), "--quiet", "--tracking-uri", store["uri"]])
    assert result.exit_code == 0, result.output
    assert result.output.startswith(f"{NAME}: every cell is done ({CELLS} runs in ")
    assert len(client(store["uri"]).search_runs([experiment_id(store)])) == before  # nothing added


def experiment_id(store) -> str:
    return client(store["uri"]).get_experiment_by_name(NAME).experiment_id


def test_the_prepared_views_chart_the_test_accuracy(store):
    tags = client(store["uri"]).get_experiment(experiment_id(store)).tags
    views = [json.loads(value) for key, value in tags.items() if key.startswith("mlflow.sharedViewState.")]
    assert len(views) == 2
    for view in views:
        (parallel,) = [chart for chart in view["compareRunCharts"] if chart["type"] == "PARALLEL"]
        assert parallel["selectedMetrics"] == ["final_test_accuracy"]
        assert "metrics.`final_test_accuracy`" in view["selectedColumns"]


def test_compare_on_test_accuracy_ranks_the_highest_mean_first(store):
    result = invoke(
        [
            "compare",
            "--experiment",
            NAME,
            "--metric",
            "test_accuracy",
            "--format",
            "json",
            "--tracking-uri",
            store["uri"],
        ]
    )
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)["rows"]
    expected: dict[tuple[str, float], list[float]] = {}
    for run in cell_runs(store["uri"]):
        cell = (run.data.params["optimizer"], float(run.data.params["lr"]))
        expected.setdefault(cell, []).append(run.data.metrics["final_test_accuracy"])
    # an accuracy is compared as its error, 1 - accuracy: lower is better, and it spans decades near 1
    assert {(row["optimizer"], row["lr"]): row["mean"] for row in rows} == pytest.approx(
        {cell: 1 - sum(values) / len(values) for cell, values in expected.items()}
    )
    ranked = sorted(rows, key=lambda row: row["rank"])
    assert [row["geomean"] for row in ranked] == sorted(row["geomean"] for row in rows)
    table = invoke(["compare", "--experiment", NAME, "--metric", "test_accuracy", "--tracking-uri", store["uri"]])
    assert "test error (1 - test accuracy)" in table.output and "geometric mean of test error" in table.output
    assert "test error median [95% CI]" in table.output and "geomean test error" in table.output


def test_compare_on_a_test_metric_of_a_one_sample_sweep_is_one_line(tmp_path):
    uri = f"sqlite:///{tmp_path / 'one' / 'mlflow.db'}"
    done = invoke(
        ["sweep", "--set", "steps=2", "--set", "optimizer=adam", "--set", "name=one", "--quiet", "--tracking-uri", uri]
    )
    assert done.exit_code == 0, done.output
    result = invoke(["compare", "--experiment", "one", "--metric", "test_accuracy", "--tracking-uri", uri])
    assert result.exit_code == 2
    finished = sum(run.data.tags["tinytrain.outcome"] == "finished" for run in cell_runs(uri, "one"))
    assert 0 < finished < 9  # adam at lr 0.1 passes diverge_above: a diverged run measures nothing
    assert result.output.endswith(
        f"has no test_accuracy for {finished} of its runs (the one-sample problem has "
        "no test set): compare --metric final_loss\n"
    )
    assert len(result.output.splitlines()) == 1


def test_plot_draws_a_loss_and_a_test_accuracy_panel_per_optimizer(store, tmp_path):
    out = tmp_path / "curves.png"
    result = invoke(["plot", "--experiment", NAME, "--out", str(out), "--tracking-uri", store["uri"]])
    assert result.exit_code == 0, result.output
    assert "4 panel(s), 8 line(s)" in result.output and out.read_bytes().startswith(b"\x89PNG")


def test_the_sweep_summary_compares_test_accuracy(store, tmp_path):
    found = client(store["uri"]).get_experiment_by_name(NAME)
    (parent, *_) = client(store["uri"]).search_runs(
        [found.experiment_id], "tags.`tinytrain.kind` = 'sweep'", order_by=["attributes.start_time ASC"]
    )
    path = client(store["uri"]).download_artifacts(parent.info.run_id, "compare.md", str(tmp_path))
    assert "test error (1 - test accuracy) after 4 steps" in Path(path).read_text()


def test_reproduce_checks_the_test_metrics_bit_for_bit(store):
    run = next(run for run in cell_runs(store["uri"]) if run.data.params["optimizer"] == "schedulefree-adamw")
    result = invoke(["reproduce", run.info.run_id, "--tracking-uri", store["uri"]])
    assert result.exit_code == 0, result.output
    # 5 losses; test_loss and test_accuracy at steps 0, 2, 4 and their final values: 10 other values
    assert result.output == (
        f"identical: run {run.info.run_id} retrained from its record gives all 5 logged "
        "losses, 10 other metric value(s), 1 LoggedModel(s) (10 tensors) "
        "bit for bit\n"
    )


def test_reproduce_finds_a_test_metric_that_the_record_changed(tmp_path):
    uri = f"sqlite:///{tmp_path / 'lies' / 'mlflow.db'}"  # a store of its own: the module's store stays true
    done = invoke(["run", "--problem", "digits", "--steps", "2", "--tracking-uri", uri])
    assert done.exit_code == 0, done.output
    run_id = done.output.split("; run ")[1].split()[0]
    client(uri).log_metric(run_id, "test_accuracy", 0.5, step=2)  # a record that lies about the final accuracy
    result = invoke(["reproduce", run_id, "--tracking-uri", uri])
    assert result.exit_code == 1
    assert result.output.startswith(
        "differs at metric test_accuracy: the record has 1 value(s) more than training logs, from "
    )


def test_run_on_digits_prints_the_test_accuracy(tmp_path):
    uri = f"sqlite:///{tmp_path / 'run' / 'mlflow.db'}"
    result = invoke(["run", "--problem", "digits", "--optimizer", "adam", "--steps", "2", "--tracking-uri", uri])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("adam-lr0.001-seed0: loss ") and ", test accuracy 0." in result.output


def test_gradcheck_on_a_digits_minibatch():
    result = invoke(
        ["gradcheck", "--problem", "digits", "--loss", "cross_entropy", "--batch-size", "2", "--entries", "5"]
    )
    assert result.exit_code == 0, result.output
    assert "data: digits, cross_entropy, a fixed batch of 2 training images" in result.output
    assert result.output.endswith("gradcheck passed: every tensor within 0.0001\n")


@pytest.mark.parametrize(
    "args, message",
    [
        (
            ["--set", "problem=digits", "--engine", "vmap"],
            "Error: engine vmap trains problem one-sample with loss mse only, not problem digits with loss mse: use "
            "engine sequential (--jobs N runs cells in parallel)\n",
        ),
        (
            ["--set", "optimizer=adam,lion", "--engine", "vmap"],
            "Error: engine vmap has no stacked update for lion (optimizer lion): use engine sequential, or one of sgd, "
            "adam, adamw, rmsprop, adagrad\n",
        ),
    ],
)
def test_the_vmap_engine_refuses_what_it_cannot_batch_and_writes_nothing(args, message, tmp_path):
    store = tmp_path / "refused"
    result = invoke(["sweep", *args, "--tracking-uri", f"sqlite:///{store / 'mlflow.db'}"])
    assert (result.exit_code, result.output) == (2, message)
    assert not store.exists()


def test_bad_digits_settings_are_one_line_and_write_nothing(tmp_path):
    store = tmp_path / "bad"
    result = invoke(
        [
            "sweep",
            "--set",
            "problem=digits",
            "--set",
            "batch_size=0",
            "--tracking-uri",
            f"sqlite:///{store / 'mlflow.db'}",
        ]
    )
    assert (result.exit_code, result.output) == (2, "Error: batch_size must be an integer >= 1, got 0\n")
    assert not store.exists()


def test_the_digits_experiment_file_is_valid_and_its_runs_are_digits_runs():
    from tinytrain.spec import load_experiment

    experiment = load_experiment(Path(__file__).resolve().parents[2] / "experiments" / "digits-grid.toml")
    specs = experiment.specs()
    assert {spec.problem for spec in specs} == {"digits"} and len({spec.key for spec in specs}) == len(specs)
    assert {"sgd", "adam", "lion", "muon"} <= {spec.kind for spec in specs}


def losses_and_accuracy(uri: str) -> dict[str, tuple]:
    """run key -> (every loss, every test accuracy) as float.hex, read back from the store."""
    found = {}
    for run in cell_runs(uri):
        histories = [
            sorted(client(uri).get_metric_history(run.info.run_id, name), key=lambda m: m.step)
            for name in ("loss", "test_accuracy")
        ]
        found[run.data.tags["tinytrain.run_key"]] = tuple(tuple(m.value.hex() for m in h) for h in histories)
    return found


@pytest.mark.slow
@pytest.mark.parametrize("executor", [["--jobs", "2"], ["--executor", "dask", "--jobs", "2"]])
def test_the_pool_and_dask_give_the_in_process_numbers_on_digits(store, executor, tmp_path):
    uri = f"sqlite:///{tmp_path / 'elsewhere' / 'mlflow.db'}"
    done = subprocess.run(
        [sys.executable, "-m", "tinytrain", "sweep", str(store["grid"]), *executor, "--tracking-uri", uri, "--quiet"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert losses_and_accuracy(uri) == losses_and_accuracy(store["uri"])

"""The Python API (`import tinytrain`) on a real SQLite store: its DataFrames against MLflow's own reads and
against what the command line prints, experiments loaded with overrides, and sweeps run from Python."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pandas as pd
import pytest

import tinytrain
from tests.conftest import invoke
from tinytrain.tracking import Store
from tinytrain.tracking.sweep_records import (
    curves_mlflow,
    curves_sqlite,
    experiments_mlflow,
    read_experiments,
    read_sweeps,
    sweeps_mlflow,
)

NAME = "api-e2e"
SETTINGS = {"name": NAME, "steps": 4, "optimizer": ["sgd", "adam"], "lr": [0.01, 1000.0], "seed": [0, 1, 2]}


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    """A store with two experiments swept from Python: NAME (12 runs, half of them diverging) twice (the second
    sweep, which finds every cell done, records itself), and a small second experiment."""
    uri = tinytrain.store_uri(tmp_path_factory.mktemp("api") / "store" / "mlflow.db")
    store = tinytrain.open_store(uri)
    first = store.run_sweep(tinytrain.load_experiment(overrides=SETTINGS))
    nothing = tinytrain.run_sweep(tinytrain.load_experiment(overrides=SETTINGS), uri)
    assert nothing.counts.parent_run_id is None and nothing.made_by.parents == [first.counts.parent_run_id]
    # a sweep that trains nothing writes nothing; one that records itself anyway (as --until-separated's
    # rounds do) is a second sweep of the same runs
    from tinytrain.sweep import run_sweep

    second = run_sweep(tinytrain.load_experiment(overrides=SETTINGS), uri, progress=False, record_when_done=True)
    other = tinytrain.load_experiment(overrides={"name": "api-other", "steps": 2, "optimizer": "adam", "seed": [0]})
    tinytrain.run_sweep(other, store)
    assert (first.counts.finished, first.counts.diverged, second.counts.skipped) == (6, 6, 12)
    return store, first.counts.parent_run_id, second.counts.parent_run_id


def test_import_tinytrain_loads_neither_torch_mlflow_nor_pandas():
    code = (
        "import sys, tinytrain\n"
        "assert callable(tinytrain.open_store) and 'open_store' in dir(tinytrain)\n"
        "print(sorted(m for m in ('torch', 'mlflow', 'pandas', 'scipy', 'matplotlib') if m in sys.modules))"
    )
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "[]"
    with pytest.raises(AttributeError):
        tinytrain.no_such_name  # noqa: B018


def test_the_compare_dataframe_holds_the_numbers_compare_json_prints(swept):
    store, _first, latest = swept
    for options, flags in [
        ({}, []),
        (
            {"by": "final_loss", "vs": "sgd@0.01", "target": 0.05},
            ["--by", "final_loss", "--vs", "sgd@0.01", "--target", "0.05"],
        ),
    ]:
        result = invoke(["compare", "--experiment", NAME, "--format", "json", "--tracking-uri", store.uri, *flags])
        assert result.exit_code == 0, result.output
        printed = json.loads(result.stdout)["rows"]
        frame = store.sweep(NAME).compare(**options)
        assert list(frame.columns) == list(tinytrain.COMPARE_COLUMNS)
        assert frame.to_dict("records") == printed  # the same numbers, bit for bit (json keeps a float's repr)
        assert len(printed) == 4 and any(row["p_value"] is not None for row in printed)


def test_the_runs_dataframe_is_what_mlflow_search_runs_gives(swept):
    store, _first, latest = swept
    sweep = store.sweep(NAME)
    assert (sweep.sweep_id, sweep.experiment, sweep.cells, sweep.missing) == (latest, NAME, 12, ())
    runs = sweep.runs()
    with Store(store.uri) as mlflow_store:
        experiment_id = mlflow_store.experiment_id(NAME, create=False)
        by_id = {run.info.run_id: run for run in mlflow_store.finished_runs_by_key(experiment_id).values()}
    assert sorted(runs["run_id"]) == sorted(by_id) and len(runs) == 12
    assert list(runs.columns[:6]) == ["run_id", "run_key", "optimizer", "lr", "seed", "outcome"]
    for row in runs.to_dict("records"):
        run = by_id[row["run_id"]]
        assert row["run_key"] == run.data.tags["tinytrain.run_key"]
        assert row["outcome"] == run.data.tags["tinytrain.outcome"]
        params = {key[7:]: value for key, value in row.items() if key.startswith("params.") and pd.notna(value)}
        assert params == run.data.params  # a param another optimizer has is missing (NaN) in this row
        metrics = {key[8:]: value for key, value in row.items() if key.startswith("metrics.")}
        absent = {name: value for name, value in metrics.items() if name not in run.data.metrics}
        assert all(math.isnan(value) for value in absent.values())  # one other runs have (log10_final_loss)
        metrics = {name: value for name, value in metrics.items() if name not in absent}
        assert metrics.keys() == run.data.metrics.keys()
        assert all(
            value == run.data.metrics[name] or (math.isnan(value) and math.isnan(run.data.metrics[name]))
            for name, value in metrics.items()
        )
        assert (row["optimizer"], row["lr"], str(row["seed"])) == (
            run.data.params["optimizer"],
            float(run.data.params["lr"]),
            run.data.params["seed"],
        )
    assert sorted(runs["outcome"].unique()) == ["diverged", "finished"]


def test_the_curves_are_what_get_metric_history_gives(swept):
    store, _first, _latest = swept
    sweep = store.sweep(NAME)
    curves = sweep.curves()
    assert list(curves.columns) == ["run_id", "step", "metric", "value"]
    finished = set(sweep.runs().query("outcome == 'finished'")["run_id"])
    assert all(
        list(group["step"]) == [0, 1, 2, 3, 4] for run_id, group in curves.groupby("run_id") if run_id in finished
    )
    metrics = ("loss", "final_loss", "initial_loss")
    with Store(store.uri) as mlflow_store:
        mlflows = curves_mlflow(mlflow_store, sweep.record, metrics)
    assert repr(curves_sqlite(store.uri, sweep.record, metrics)) == repr(mlflows)  # repr: NaN equals NaN
    assert repr(list(curves.itertuples(index=False, name=None))) == repr([row for row in mlflows if row[2] == "loss"])


def test_the_sweeps_and_experiments_are_what_mlflow_search_gives(swept):
    store, first, latest = swept
    with Store(store.uri) as mlflow_store:
        assert read_sweeps(store.uri) == sweeps_mlflow(mlflow_store)
        assert read_sweeps(store.uri, NAME) == sweeps_mlflow(mlflow_store, NAME)
        assert read_experiments(store.uri) == experiments_mlflow(mlflow_store)
    sweeps = store.sweeps(NAME)
    assert list(sweeps["sweep_id"]) == [latest, first] and set(sweeps["status"]) == {"FINISHED"}
    assert str(sweeps["start_time"].dt.tz) == "UTC"
    assert len(store.sweeps()) == 3
    assert sorted(store.experiments()["name"]) == ["api-e2e", "api-other"]
    assert store.sweep(sweep_id=first).runs()["run_id"].tolist() == store.sweep(NAME).runs()["run_id"].tolist()


def test_bad_options_are_config_errors_with_the_fix(swept):
    store, _first, _latest = swept
    sweep = store.sweep(NAME)
    with pytest.raises(tinytrain.ConfigError, match="adam@0.001"):
        sweep.compare(vs="adam")
    with pytest.raises(tinytrain.ConfigError, match="not a cell of this sweep"):
        sweep.compare(vs=("adam", 0.5))
    with pytest.raises(tinytrain.ConfigError, match="has no test_accuracy"):
        sweep.compare(metric="test_accuracy")
    with pytest.raises(tinytrain.TrackingError, match="no experiment 'nope'"):
        store.sweep("nope")


def test_an_experiment_loads_with_a_mapping_of_overrides_as_with_set_strings():
    mapping = tinytrain.load_experiment(overrides={"steps": 7, "lr": [0.1, 0.01], "optimizer": "adam", "mkldnn": True})
    strings = tinytrain.load_experiment(overrides=["steps=7", "lr=0.1,0.01", "optimizer=adam", "mkldnn=true"])
    assert [spec.key for spec in mapping.specs()] == [spec.key for spec in strings.specs()]
    assert mapping.settings["steps"] == 7 and mapping.grid["lr"] == [0.1, 0.01]
    drawn = tinytrain.load_experiment(overrides={"lr": {"log_uniform": [1e-4, 1e-1], "count": 3, "seed": 0}})
    assert len(drawn.grid["lr"]) == 3 and drawn.drawn
    with pytest.raises(tinytrain.ConfigError, match="unknown key"):
        tinytrain.load_experiment(overrides={"stpes": 7})
    without = tinytrain.without_lr_axis(strings)
    assert "lr" not in without.grid and "lr" in strings.grid  # a new record; the first is untouched


def test_a_sweep_run_from_python_reads_back_and_plots(store_uri, tmp_path):
    experiment = tinytrain.load_experiment(overrides={"name": "py", "steps": 3, "optimizer": ["adam"], "seed": [0, 1]})
    outcome = tinytrain.run_sweep(experiment)  # the default store: MLFLOW_TRACKING_URI, set by conftest
    assert outcome.counts.finished + outcome.counts.diverged == 6 and not outcome.failures
    sweep = tinytrain.open_store().sweep("py")
    assert sweep.sweep_id == outcome.counts.parent_run_id and len(sweep.runs()) == 6
    figure = sweep.plot(tmp_path / "figures" / "py.png")
    assert (tmp_path / "figures" / "py.png").read_bytes().startswith(b"\x89PNG") and figure.axes

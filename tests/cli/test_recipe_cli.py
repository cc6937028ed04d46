"""The training recipe through the real CLI and a real store: a grid over schedule and weight decay with each
optimizer's own lrs, swept on both engines; every axis a param, a compare column and part of the key; lr and
grad_norm histories; reproduce; bad recipes refused in one line, exit 2, nothing written."""

from __future__ import annotations

import json
import time

import pytest

from tests.cli.test_sweep import store_digest
from tests.conftest import children, client, invoke

GRID = """name = "e2e"
steps = 8
warmup = 2
clip_grad_norm = 1.0
[grid]
optimizer = ["adam", "sgd"]
schedule = ["constant", "warmup-cosine"]
weight_decay = [0.0, 0.01]
seed = [0, 1]
[grid.lr]
adam = [0.001, 0.01]
sgd = [0.1]
"""
CELLS = (2 + 1) * 2 * 2 * 2  # (adam's lrs + sgd's) x schedules x weight decays x seeds


@pytest.fixture(scope="module")
def recipe_store(tmp_path_factory):
    folder = tmp_path_factory.mktemp("recipe")
    path = folder / "recipe.toml"
    path.write_text(GRID)
    uri = f"sqlite:///{folder / 'store' / 'mlflow.db'}"
    result = invoke(["sweep", str(path), "--quiet", "--tracking-uri", uri])
    assert result.exit_code == 0, result.output
    assert f"{CELLS} runs: {CELLS} trained" in result.output
    return {"uri": uri, "path": str(path), "folder": folder}


def on(store, *args: str):
    return invoke([*args, "--tracking-uri", store["uri"]])


def test_each_axis_is_a_param_a_column_and_the_recipe_is_logged_per_step(recipe_store):
    uri = recipe_store["uri"]
    runs = children(uri)
    assert len(runs) == CELLS
    for run in runs:
        params = run.data.params
        assert params["schedule"] in ("constant", "warmup-cosine") and params["weight_decay"] in ("0.0", "0.01")
        assert params["clip_grad_norm"] == "1.0"
        norms = client(uri).get_metric_history(run.info.run_id, "grad_norm")
        assert sorted(metric.step for metric in norms) == list(range(8))
        lrs = client(uri).get_metric_history(run.info.run_id, "lr")
        if params["schedule"] == "constant":
            assert lrs == []
        else:
            assert params["warmup"] == "2" and sorted(m.step for m in lrs) == list(range(8))
            values = [m.value for m in sorted(lrs, key=lambda m: m.step)]
            assert values[0] == pytest.approx(float(params["lr"]) / 3) and values[-1] < values[2]
    compared = on(recipe_store, "compare", "--experiment", "e2e", "--format", "json")
    assert compared.exit_code == 0, compared.output
    rows = json.loads(compared.output)["rows"]
    assert len(rows) == CELLS // 2 and all(row["seeds"] == 2 for row in rows)
    assert list(rows[0])[:5] == ["rank", "optimizer", "lr", "schedule", "weight_decay"]
    cells = {(row["optimizer"], row["lr"], row["schedule"], row["weight_decay"]) for row in rows}
    assert ("sgd", 0.1, "warmup-cosine", 0.01) in cells and ("adam", 0.001, "constant", 0.0) in cells
    table = on(recipe_store, "compare", "--experiment", "e2e")
    assert "schedule" in table.output and "weight_decay" in table.output and "warmup-cosine" in table.output
    versus = on(
        recipe_store,
        "compare",
        "--experiment",
        "e2e",
        "--format",
        "json",
        "--vs",
        "sgd@0.1[schedule=constant,weight_decay=0.01]",
    )
    assert versus.exit_code == 0, versus.output
    baseline = [row for row in json.loads(versus.output)["rows"] if row["baseline"]]
    assert [(row["optimizer"], row["schedule"], row["weight_decay"]) for row in baseline] == [("sgd", "constant", 0.01)]
    resumed = on(recipe_store, "sweep", recipe_store["path"], "--dry-run")
    assert resumed.output.endswith(f"e2e: {CELLS} runs, 0 to run, {CELLS} already done (dry run: nothing written)\n")


def test_a_run_with_a_schedule_and_clipping_reproduces_bit_for_bit(recipe_store):
    run = next(
        run
        for run in children(recipe_store["uri"])
        if run.data.params["schedule"] == "warmup-cosine" and run.data.params["optimizer"] == "adam"
    )
    reproduced = on(recipe_store, "reproduce", run.info.run_id)
    assert reproduced.exit_code == 0, reproduced.output
    assert reproduced.output.startswith(f"identical: run {run.info.run_id}")


def test_the_batched_engine_trains_the_recipe_with_the_same_numbers(recipe_store, tmp_path):
    """The same grid on the vmap engine, into another store: every run's losses, lrs and norms equal."""
    other = f"sqlite:///{tmp_path / 'vmap' / 'mlflow.db'}"
    result = invoke(["sweep", recipe_store["path"], "--engine", "vmap", "--quiet", "--tracking-uri", other])
    assert result.exit_code == 0, result.output

    def histories(uri):
        found = {}
        for run in children(uri):
            key = run.data.tags["tinytrain.run_key"]
            found[key] = {
                name: [
                    (m.step, m.value)
                    for m in sorted(client(uri).get_metric_history(run.info.run_id, name), key=lambda m: m.step)
                ]
                for name in ("loss", "lr", "grad_norm")
            }
        return found

    batched = histories(other)
    assert {run.data.tags["tinytrain.engine"] for run in children(other)} == {"vmap"}
    sequential = histories(recipe_store["uri"])
    assert len(batched) == CELLS
    # the engine is part of the key: the cells are matched by their run names
    by_name = {run.info.run_name: run.data.tags["tinytrain.run_key"] for run in children(recipe_store["uri"])}
    for run in children(other):
        assert batched[run.data.tags["tinytrain.run_key"]] == sequential[by_name[run.info.run_name]], run.info.run_name


@pytest.mark.parametrize(
    "extra, message",
    [
        (
            'schedule = "cosin"',
            "Error: schedule must be one of constant, warmup, cosine, warmup-cosine, wsd, "
            "linear, step, got 'cosin' (did you mean 'cosine'?)",
        ),
        (
            'schedule = "warmup"\nwarmup = 50',
            "Error: warmup 50 (50 steps) is not shorter than the run's 8 steps: "
            "give fewer steps or a fraction below 1, e.g. warmup = 0.05",
        ),
        (
            "clip_grad_norm = -1",
            "Error: clip_grad_norm must be a finite number >= 0 (the largest gradient norm; 0: no clipping), got -1",
        ),
        ("wieght_decay = 0.1", "Error: unknown key 'wieght_decay' in"),
    ],
)
def test_a_bad_recipe_is_one_line_exit_2_and_writes_nothing(experiment_file, store_uri, extra, message):
    path = experiment_file(f'name = "e2e"\nsteps = 8\n{extra}\n[grid]\noptimizer = ["adam"]\n', "bad.toml")
    before = store_digest(store_uri)
    result = invoke(["sweep", path])
    assert result.exit_code == 2 and result.output.startswith(message), result.output
    assert result.output.count("\n") == 1
    assert store_digest(store_uri) == before


def test_a_huge_drawn_grid_is_refused_within_a_second_and_allow_huge_lets_it_through(experiment_file, store_uri):
    path = experiment_file(
        'name = "e2e"\n[grid]\nlr = { log_uniform = [0.001, 0.1], count = 100000000 }\n', "huge.toml"
    )
    started = time.perf_counter()
    result = invoke(["sweep", path, "--dry-run"])
    assert time.perf_counter() - started < 1
    assert result.exit_code == 2 and result.output == (
        "Error: the grid has 100,000,000 cells, more than 1,000,000: check the counts and lists of [grid] "
        "(or pass --allow-huge to sweep it anyway)\n"
    )
    assert store_digest(store_uri) is None
    fine = experiment_file('name = "e2e"\nsteps = 2\n[grid]\nlr = [0.1]\nseed = [0, 1]\n', "fine.toml")
    assert invoke(["sweep", fine, "--dry-run", "--allow-huge"]).exit_code == 0

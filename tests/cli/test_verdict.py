"""verdict and confirm on a real store: the setting chosen per arm, the confirmation runs and the verdict's
p-values against a recomputation from the raw MLflow records (MlflowClient, numpy, scipy); seeds disjoint; the
link to the tuning sweep; bad input as one line, exit 2, nothing written; the same numbers in another process."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest
from scipy import stats as scipy_stats

from tests.conftest import invoke
from tinytrain.tracking import resolve_tracking_uri

NAME = "verdict-e2e"
GRID = f"""name = "{NAME}"
steps = 5
[grid]
optimizer = ["sgd", "adam"]
lr = [0.01, 0.1, 1000.0]   # 1000: every seed diverges
seed = [0, 1]
"""
SEEDS = 6


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A tuning sweep of GRID, then its confirmation on 6 fresh seeds (json)."""
    folder = tmp_path_factory.mktemp("verdict")
    uri = resolve_tracking_uri(str(folder / "store" / "mlflow.db"))
    grid = folder / "grid.toml"
    grid.write_text(GRID)
    result = invoke(["sweep", str(grid), "--quiet", "--tracking-uri", uri])
    assert result.exit_code == 0, result.output
    tuning = result.output.split("(sweep run ")[1].split(")")[0]
    result = invoke(["confirm", "--seeds", str(SEEDS), "-q", "--format", "json", "--tracking-uri", uri])
    assert result.exit_code == 0, result.output
    return {"uri": uri, "tuning": tuning, "verdict": json.loads(result.output), "folder": folder}


def seed_runs(uri: str) -> list:
    import mlflow

    client = mlflow.MlflowClient(uri)
    experiment = client.get_experiment_by_name(NAME)
    return [
        run
        for run in client.search_runs([experiment.experiment_id], max_results=1000)
        if run.data.tags.get("tinytrain.kind") == "run" and run.info.status == "FINISHED"
    ]


def final(run) -> float:
    return math.inf if run.data.tags["tinytrain.outcome"] == "diverged" else run.data.metrics["final_loss"]


def confirmation_parent(store) -> str:
    import mlflow

    client = mlflow.MlflowClient(store["uri"])
    experiment = client.get_experiment_by_name(NAME)
    parents = client.search_runs(
        [experiment.experiment_id], f"tags.`tinytrain.confirms` = '{store['tuning']}'", max_results=10
    )
    assert len(parents) == 1 and parents[0].data.tags["tinytrain.kind"] == "sweep"
    return parents[0].info.run_id


def test_the_chosen_setting_per_arm_is_the_lowest_median_training_loss_of_the_tuning_runs(store):
    tuning = [run for run in seed_runs(store["uri"]) if run.data.params["seed"] in ("0", "1")]
    assert len(tuning) == 12
    medians: dict[str, dict[float, float]] = {}
    for run in tuning:
        cell = medians.setdefault(run.data.params["optimizer"], {})
        cell.setdefault(float(run.data.params["lr"]), [])
        cell[float(run.data.params["lr"])].append(final(run))
    chosen = {arm: min(lrs, key=lambda lr: np.median(lrs[lr])) for arm, lrs in medians.items()}
    rows = {row["arm"]: row for row in store["verdict"]["rows"]}
    assert {arm: row["setting"] for arm, row in rows.items()} == {arm: f"lr={lr:g}" for arm, lr in chosen.items()}
    assert all(1000.0 not in (lr,) for lr in chosen.values())  # the diverging lr is never chosen
    text = invoke(["verdict", "--sweep", store["tuning"], "--format", "json", "--tracking-uri", store["uri"]])
    assert text.exit_code == 0, text.output
    tuned = {row["arm"]: row for row in json.loads(text.output)["rows"]}
    assert {arm: row["lr"] for arm, row in tuned.items()} == chosen
    diverged = {arm: np.mean([math.isinf(np.median(v)) for v in lrs.values()]) for arm, lrs in medians.items()}
    assert {arm: row["diverged_share"] for arm, row in tuned.items()} == diverged
    assert all(share >= 1 / 3 for share in diverged.values())  # lr 1000 diverges for both


def test_the_confirmation_runs_each_chosen_cell_on_fresh_seeds_linked_to_the_tuning_sweep(store):
    parent = confirmation_parent(store)
    confirmation = [run for run in seed_runs(store["uri"]) if run.data.tags.get("mlflow.parentRunId") == parent]
    rows = {row["arm"]: row for row in store["verdict"]["rows"]}
    expected = {
        (arm, float(row["setting"].removeprefix("lr=")), seed) for arm, row in rows.items() for seed in range(2, 8)
    }
    found = {(r.data.params["optimizer"], float(r.data.params["lr"]), int(r.data.params["seed"])) for r in confirmation}
    assert found == expected  # seeds 2..7: one past the tuning seeds 0, 1, and disjoint from them
    assert {seed for *_cell, seed in found}.isdisjoint({0, 1})


def test_the_verdict_p_values_equal_a_recomputation_from_the_mlflow_records(store):
    parent = confirmation_parent(store)
    runs = [run for run in seed_runs(store["uri"]) if run.data.tags.get("mlflow.parentRunId") == parent]
    by_arm: dict[str, dict[int, float]] = {}
    for run in runs:
        value = final(run)
        log = math.log10(sys.float_info.max) if math.isinf(value) else math.log10(max(value, 1e-45))
        by_arm.setdefault(run.data.params["optimizer"], {})[int(run.data.params["seed"])] = log
    medians = {arm: float(np.median(list(seeds.values()))) for arm, seeds in by_arm.items()}
    best = min(medians, key=lambda arm: (medians[arm], arm))
    rows = store["verdict"]["rows"]
    assert rows[0]["arm"] == best and rows[0]["standing"] == "best" and rows[0]["seeds"] == SEEDS
    assert rows[0]["median"] == pytest.approx(10 ** medians[best])
    (other,) = [arm for arm in by_arm if arm != best]  # one other arm: Holm over one test is the test itself
    seeds = sorted(by_arm[best])
    differences = [by_arm[other][seed] - by_arm[best][seed] for seed in seeds]
    p = scipy_stats.wilcoxon(differences, zero_method="wilcox").pvalue if any(differences) else 1.0
    assert rows[1]["p_value"] == pytest.approx(p) and rows[1]["p_raw"] == pytest.approx(p)
    improvement = np.mean([1.0 if d > 0 else 0.5 if d == 0 else 0.0 for d in differences])
    assert rows[1]["p_improvement"] == pytest.approx(improvement)
    assert rows[1]["pi_low"] <= improvement <= rows[1]["pi_high"]
    standing = "tied" if p >= 0.05 else "worse"
    assert rows[1]["standing"] == standing
    words = "is better than" if standing == "worse" else "cannot be told apart"
    assert words in rows[1]["sentence"] and f"{SEEDS} seeds" in rows[1]["sentence"]


def test_verdict_on_the_confirmation_sweep_gives_the_same_numbers_in_another_process(store):
    again = invoke(["verdict", "--experiment", NAME, "--format", "json", "--tracking-uri", store["uri"]])
    assert again.exit_code == 0, again.output
    assert json.loads(again.output)["rows"] == store["verdict"]["rows"]
    other = subprocess.run(
        [sys.executable, "-m", "tinytrain", "verdict", "--format", "json", "--tracking-uri", store["uri"]],
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(other.stdout)["rows"] == store["verdict"]["rows"]


def test_the_verdict_table_fits_100_columns_and_ends_with_the_sentences(store, monkeypatch):
    monkeypatch.setenv("COLUMNS", "100")
    result = invoke(["verdict", "--tracking-uri", store["uri"]])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert max(map(len, lines)) <= 100
    assert "tuned on sweep" in result.output and "training loss median [95% CI]" in result.output
    sentence = store["verdict"]["rows"][1]["sentence"]
    assert " ".join(" ".join(lines[-3:]).split()).endswith(sentence + ".")
    for output_format in ("markdown", "latex", "csv"):
        text = invoke(["verdict", "--format", output_format, "--tracking-uri", store["uri"]]).output
        assert "Wilcoxon" in text  # the caption in every format
    latex = invoke(["verdict", "--format", "latex", "--tracking-uri", store["uri"]]).output
    assert "\\toprule" in latex and "\\bottomrule" in latex and "\\caption{" in latex


def store_state(uri: str) -> int:
    return len(seed_runs(uri))


@pytest.mark.parametrize(
    "args, message",
    [
        (
            ["--seeds", "3", "--first-seed", "1"],
            "Error: seed 1 was a tuning seed: confirm on fresh seeds (--first-seed 2",
        ),
        (["--arm", "lion"], "Error: unknown arm 'lion': the arms of sweep "),
        (["--max-seeds", "3"], "Error: --max-seeds bounds --until-separated"),
    ],
)
def test_bad_confirmations_are_one_line_exit_2_and_write_nothing(store, args, message):
    before = store_state(store["uri"])
    result = invoke(["confirm", "--sweep", store["tuning"], *args, "--tracking-uri", store["uri"]])
    assert result.exit_code == 2 and result.output.startswith(message) and result.output.count("\n") == 1
    assert store_state(store["uri"]) == before


def test_a_confirmation_sweep_given_as_the_tuning_sweep_is_refused(store):
    parent = confirmation_parent(store)
    result = invoke(["confirm", "--sweep", parent, "--tracking-uri", store["uri"]])
    assert (result.exit_code, result.output) == (
        2,
        f"Error: sweep {parent} is a confirmation sweep: give its tuning sweep (--sweep {store['tuning']})\n",
    )


def test_an_arm_without_a_finished_cell_cannot_be_confirmed(experiment_file, store_uri):
    path = experiment_file(
        GRID.replace("lr = [0.01, 0.1, 1000.0]", "lr = [1000.0]").replace("seed = [0, 1]", "seed = [0]")
    )
    assert invoke(["sweep", path, "--quiet"]).exit_code == 0
    before = store_state(store_uri)
    result = invoke(["confirm", "--seeds", "2"])
    assert result.exit_code == 2 and result.output.startswith("Error: arm sgd has no finished cell in sweep ")
    assert result.output.count("\n") == 1 and store_state(store_uri) == before


@pytest.mark.slow
def test_until_separated_adds_a_seed_to_every_arm_until_the_best_stands_apart(experiment_file, store_uri):
    grid = """name = "separate-arms"
steps = 5
[grid]
optimizer = ["sgd", "adam"]
lr = [0.01]
seed = [0]
"""
    assert invoke(["sweep", experiment_file(grid), "--quiet"]).exit_code == 0
    result = invoke(["confirm", "--seeds", "5", "--until-separated", "--max-seeds", "8", "-q"])
    assert result.exit_code == 0, result.output
    # five seeds: the smallest two-sided p is 2/2**5 = 0.0625; six: 0.03125
    assert "Separated after 2 round(s), 6 seeds per arm." in result.output
    assert "adam is better than sgd on the training loss, p = 0.031, 6 seeds." in " ".join(result.output.split())


# ---- compare at 100 columns, the plots' formats, profiles and curves, on the same store


def test_compare_without_experiment_takes_the_latest_sweep_and_fits_100_columns(store, monkeypatch):
    monkeypatch.setenv("COLUMNS", "100")
    latest = invoke(["compare", "--tracking-uri", store["uri"]])  # not optimizer-grid: the store's latest sweep
    assert latest.exit_code == 0, latest.output
    assert latest.output.startswith(f"{NAME}: sweep {confirmation_parent(store)},")
    result = invoke(["compare", "--sweep", store["tuning"], "--tracking-uri", store["uri"]])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert max(map(len, lines)) <= 100 and "Rank 1 reaches a training loss <= 0.001" in result.output
    diverged = [line for line in lines if " 1000 " in line]
    assert len(diverged) == 2 and all("diverged" in line and "tied" not in line for line in diverged)
    metric = invoke(["compare", "--sweep", store["tuning"], "--by", "final_loss", "--tracking-uri", store["uri"]])
    assert "geomean final loss" in metric.output and "Rank 1 has the lowest geometric mean" in metric.output
    monkeypatch.setenv("COLUMNS", "40")
    narrow = invoke(["compare", "--sweep", store["tuning"], "--tracking-uri", store["uri"]])
    assert max(map(len, narrow.output.splitlines())) <= 40  # stacked rows


def test_plot_writes_the_format_its_suffix_names_at_the_dpi_asked(store, tmp_path):
    def plot(*args: str):
        return invoke(["plot", "--sweep", store["tuning"], "--tracking-uri", store["uri"], *args])

    for kind in ("curves", "lr", "best-of-k"):
        assert plot("--kind", kind, "--out", str(tmp_path / f"{kind}.pdf")).exit_code == 0
        assert (tmp_path / f"{kind}.pdf").read_bytes().startswith(b"%PDF")
    assert plot("--out", str(tmp_path / "c.svg")).exit_code == 0
    assert b"<svg" in (tmp_path / "c.svg").read_bytes()[:500]
    widths = []
    for dpi in ("50", "100"):
        assert plot("--kind", "lr", "--out", str(tmp_path / f"lr{dpi}.png"), "--dpi", dpi).exit_code == 0
        header = (tmp_path / f"lr{dpi}.png").read_bytes()
        assert header.startswith(b"\x89PNG")
        widths.append(int.from_bytes(header[16:20], "big"))
    assert widths[1] == pytest.approx(2 * widths[0], abs=2)
    bad = plot("--out", str(tmp_path / "x.docx"))
    assert bad.exit_code == 2 and bad.output.startswith("Error: --out ") and not (tmp_path / "x.docx").exists()


def test_profile_scores_are_the_area_under_the_profile_from_the_steps_to_target(store):
    tuning = [run for run in seed_runs(store["uri"]) if run.data.params["seed"] in ("0", "1")]
    adam = [run for run in tuning if run.data.params["optimizer"] == "adam" and run.data.params["lr"] == "0.01"]
    low = max(final(run) for run in adam) * 1.001  # both adam@0.01 seeds get there: a target some arm reaches
    targets = (0.1, low)
    result = invoke(
        ["profile", "--sweep", store["tuning"], "--target", "0.1", "--target", repr(low), "--format", "json"]
        + ["--tracking-uri", store["uri"]]
    )
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)["rows"]
    # recomputed from the MLflow loss histories: per arm the fastest lr's median steps to each target
    import mlflow

    client = mlflow.MlflowClient(store["uri"])
    ratios: dict[str, list[float]] = {}
    for target in targets:
        cells: dict[tuple[str, float], list[float]] = {}
        for run in tuning:
            losses = [m.value for m in sorted(client.get_metric_history(run.info.run_id, "loss"), key=lambda m: m.step)]
            diverged = run.data.tags["tinytrain.outcome"] == "diverged"
            step = next((i for i, loss in enumerate(losses) if loss <= target), None)
            key = (run.data.params["optimizer"], float(run.data.params["lr"]))
            cells.setdefault(key, []).append(math.inf if diverged or step is None else step)
        times: dict[str, float] = {}
        for (arm, _lr), steps in cells.items():
            times[arm] = min(times.get(arm, math.inf), float(np.median(steps)))
        best = max(min(times.values()), 1.0)
        for arm, time in times.items():
            ratios.setdefault(arm, []).append(max(time, 1.0) / best)
    taus = np.linspace(1, 4, 30001)
    for row in rows:
        rho = (np.array(ratios[row["arm"]])[None, :] <= taus[:, None]).mean(axis=1)
        assert row["score"] == pytest.approx(np.trapezoid(rho, taus) / 3, abs=1e-3)
    no_target = invoke(["profile", "--sweep", store["tuning"], "--target", "1e-30", "--tracking-uri", store["uri"]])
    assert no_target.exit_code == 2 and no_target.output.startswith("Error: no shared target: no arm reaches")


def test_curves_export_every_loss_as_csv_and_parquet(store, tmp_path):
    import pandas as pd

    args = ["curves", "--sweep", store["tuning"], "--tracking-uri", store["uri"], "--out"]
    assert invoke([*args, str(tmp_path / "c.csv")]).exit_code == 0
    frame = pd.read_csv(tmp_path / "c.csv")
    assert list(frame.columns) == ["run_id", "optimizer", "lr", "seed", "outcome", "metric", "step", "value"]
    finished = [run for run in seed_runs(store["uri"]) if run.data.params["seed"] in ("0", "1")]
    import mlflow

    run = next(run for run in finished if run.data.tags["tinytrain.outcome"] == "finished")
    history = sorted(
        mlflow.MlflowClient(store["uri"]).get_metric_history(run.info.run_id, "loss"), key=lambda m: m.step
    )
    mine = frame[(frame.run_id == run.info.run_id) & (frame.metric == "loss")].sort_values("step")
    assert mine.value.tolist() == [m.value for m in history]
    pytest.importorskip("pyarrow")
    assert invoke([*args, str(tmp_path / "c.parquet")]).exit_code == 0
    assert pd.read_parquet(tmp_path / "c.parquet").equals(frame)
    bad = invoke([*args, str(tmp_path / "c.xlsx")])
    assert (bad.exit_code, bad.output) == (
        2,
        f"Error: --out {tmp_path / 'c.xlsx'}: curves are written as .csv or .parquet\n",
    )


def test_the_stores_latest_sweep_is_the_same_by_plain_sql_and_by_mlflows_search(store):
    from tinytrain.tracking import Store
    from tinytrain.tracking.sweep_records import _latest_sweep, _latest_sweep_sqlite

    with Store(store["uri"]) as opened:
        by_mlflow = _latest_sweep(opened, None)
    assert by_mlflow == _latest_sweep_sqlite(store["uri"], None) == confirmation_parent(store)


def test_a_confirmation_experiment_file_loads_back_to_its_cells_and_keeps_every_run_key():
    from dataclasses import replace

    from tinytrain.spec import ConfigError, load_experiment, validate

    grid = validate({"grid": {"optimizer": ["adam", "sgd"], "lr": [0.01, 0.1], "seed": [5, 6]}})
    narrowed = replace(grid, cells=(("adam", 0.01), ("sgd", 0.1)), confirms="abc")
    again = load_experiment("x", text=narrowed.to_toml(), recorded=True)
    assert (again.cells, again.confirms) == (narrowed.cells, "abc")
    assert [spec.run_name for spec in again.specs()] == [
        "adam-lr0.01-seed5",
        "adam-lr0.01-seed6",
        "sgd-lr0.1-seed5",
        "sgd-lr0.1-seed6",
    ]
    full = {spec.run_name: spec.key for spec in grid.specs()}
    assert all(full[spec.run_name] == spec.key for spec in again.specs())  # a filter: no run key changes
    assert "cells" not in grid.to_toml() and "confirms" not in grid.to_toml()  # other sweeps' files as before
    with pytest.raises(ConfigError, match="cells lists 'adam@1.0', which is not a cell of the grid"):
        validate({"cells": ["adam@1.0"], "grid": {"optimizer": ["adam"], "lr": [0.01]}})

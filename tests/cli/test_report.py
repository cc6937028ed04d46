"""compare and plot: their numbers against a recomputation from what MLflow holds, their formats, the
figure, and the summary a sweep logs to its parent run. One small real sweep (and a second one that skips
every cell) is shared by the module; the report functions are also checked on hand-made runs."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import experiment_toml, invoke
from tinytrain.reports import compare as report
from tinytrain.reports import plot as curves
from tinytrain.reports import stats, summary
from tinytrain.tracking import CellRun, Recorder, SweepRecord, read_sweep, resolve_tracking_uri

NAME = "compare-e2e"
# lr 1000: every seed diverges, for both optimizers
GRID = experiment_toml(
    {"name": NAME, "steps": 3, "grid": {"optimizer": ["sgd", "adam"], "lr": [0.001, 0.01, 1000.0], "seed": [0, 1]}}
)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A SQLite store with two sweeps of GRID: the first trains every cell, the second skips them all.

    The second is recorded as --until-separated records its rounds (`tinytrain sweep` of a finished grid
    writes nothing): a parent run and cell summaries over runs that another sweep made.
    """
    from tinytrain.spec import load_experiment
    from tinytrain.sweep import run_sweep

    folder = tmp_path_factory.mktemp("report")
    uri = resolve_tracking_uri(str(folder / "store" / "mlflow.db"))
    grid = folder / "grid.toml"
    grid.write_text(GRID)
    result = invoke(["sweep", str(grid), "--quiet", "--tracking-uri", uri])
    assert result.exit_code == 0, result.output
    first = result.output.split("(sweep run ")[1].split(")")[0]
    second = run_sweep(load_experiment(str(grid), []), uri, progress=False, record_when_done=True)
    assert second.counts.skipped == 12 and second.counts.parent_run_id not in (None, first)
    return {"uri": uri, "first": first, "second": second.counts.parent_run_id, "folder": folder}


def compare(store, *args: str, sweep: str | None = None) -> str:
    sweep_args = ["--sweep", sweep] if sweep else ["--experiment", NAME]
    result = invoke(["compare", *sweep_args, "--tracking-uri", store["uri"], *args])
    assert result.exit_code == 0, result.output
    return result.output


def compare_json(store, sweep: str | None = None) -> list[dict]:
    return json.loads(compare(store, "--format", "json", sweep=sweep))["rows"]


def recomputed(uri: str) -> dict[tuple[str, float], dict]:
    """The compare rows recomputed with numpy from the runs MlflowClient returns."""
    import mlflow

    client = mlflow.MlflowClient(uri)
    experiment = client.get_experiment_by_name(NAME)
    runs = [
        run
        for run in client.search_runs([experiment.experiment_id], max_results=1000)
        if run.data.tags.get("tinytrain.kind") == "run" and run.info.status == "FINISHED"
    ]
    cells: dict[tuple[str, float], list] = {}
    for run in runs:
        cells.setdefault((run.data.params["optimizer"], float(run.data.params["lr"])), []).append(run)
    expected = {}
    for cell, cell_runs in cells.items():
        finals = np.array(
            [run.data.metrics["final_loss"] for run in cell_runs if run.data.tags["tinytrain.outcome"] == "finished"]
        )
        logs = np.log10(finals)
        expected[cell] = {
            "seeds": len(cell_runs),
            "diverged": sum(run.data.tags["tinytrain.outcome"] == "diverged" for run in cell_runs),
            "mean": finals.mean() if finals.size else None,
            "std": finals.std(ddof=1) if finals.size > 1 else None,
            "geomean": 10 ** logs.mean() if finals.size else None,
            "log10_std": logs.std(ddof=1) if finals.size > 1 else None,
            "min": finals.min() if finals.size else None,
            "max": finals.max() if finals.size else None,
        }
    return expected


# ---------------------------------------------------------------------------------------------------------
# compare on a real sweep


def test_compare_equals_a_recomputation_from_mlflow(store):
    rows = compare_json(store)
    expected = recomputed(store["uri"])
    assert {(row["optimizer"], row["lr"]) for row in rows} == set(expected) and len(rows) == 6
    for row in rows:
        want = expected[(row["optimizer"], row["lr"])]
        for column, value in want.items():
            assert row[column] == (None if value is None else pytest.approx(value, rel=1e-12)), column
    diverged = {(row["optimizer"], row["lr"]): row["diverged"] for row in rows}
    assert diverged[("sgd", 1000.0)] == 2 and diverged[("adam", 1000.0)] == 2
    assert diverged[("sgd", 0.01)] == 0


def test_compare_ranks_by_geometric_mean_and_leaves_all_diverged_cells_unranked(store):
    rows = json.loads(compare(store, "--format", "json", "--by", "final_loss"))["rows"]
    ranked = [row for row in rows if row["rank"] is not None]
    assert [row["rank"] for row in rows] == [1, 2, 3, 4, None, None]
    assert [row["geomean"] for row in ranked] == sorted(row["geomean"] for row in ranked)
    assert all(row["lr"] == 1000.0 and row["mean"] is None for row in rows if row["rank"] is None)


def test_a_second_sweep_that_skips_every_cell_compares_to_the_same_rows(store):
    import mlflow

    client = mlflow.MlflowClient(store["uri"])
    second_children = client.search_runs(
        [client.get_experiment_by_name(NAME).experiment_id], f"tags.mlflow.parentRunId = '{store['second']}'"
    )
    # only its cell summaries: its cells' runs can only be found by their run keys
    assert {run.data.tags["tinytrain.kind"] for run in second_children} == {"cell"} and len(second_children) == 6
    assert compare_json(store, store["second"]) == compare_json(store, store["first"])
    # without --sweep: the latest sweep, which is the second
    title = f"{NAME}: sweep {store['second']}, final loss after 3 steps over 2 seeds"
    assert compare(store).splitlines()[0] == title


def test_compare_csv_parses_to_the_json_rows(store):
    text = compare(store, "--format", "csv")
    comments = [line for line in text.splitlines() if line.startswith("#")]
    document = json.loads(compare(store, "--format", "json"))
    assert comments == [f"# {document['title']}", f"# {document['caption']}"]  # the csv carries its caption
    rows = list(csv.DictReader(io.StringIO("".join(line + "\n" for line in text.splitlines()[2:]))))
    assert list(rows[0]) == list(report.COLUMNS)
    for parsed, row in zip(rows, compare_json(store), strict=True):
        for column, value in row.items():
            assert parsed[column] == ("" if value is None else str(value)), column


def test_compare_table_and_markdown_render(store):
    rows = compare_json(store)
    best = rows[0]
    table = compare(store).splitlines()
    assert table[0].startswith(f"{NAME}: sweep ")
    assert table[2].split() == [
        "rank",
        "optimizer",
        "lr",
        "steps",
        "to",
        "loss",
        "0.001",
        "final",
        "loss",
        "median",
        "[95%",
        "CI]",
        "IQM",
        "p_better",
        "p",
        "(Holm)",
        "vs",
        "baseline",
        "seeds",
        "diverged",
    ]
    first = table[4].split()
    assert first[:3] == ["1", best["optimizer"], f"{best['lr']:g}"]
    assert first[3:5] == ["not", "reached"]  # 3 steps: nothing gets to 1e-3
    assert first[6:9] == [f"{best['median']:.2g}", f"[{best['ci_low']:.2g},", f"{best['ci_high']:.2g}]"]
    assert first[-5:] == ["—", "—", "baseline", "2", "0"]
    assert table[-1].startswith("Rank 1 reaches a training loss <= 0.001 in the fewest steps")
    assert table[-1].endswith("with 2 seeds (Holm-corrected p >= 0.05); 2 cells diverged in every seed.")
    markdown = compare(store, "--format", "markdown").splitlines()
    assert markdown[2] == (
        "| rank | optimizer | lr | steps to loss 0.001 | final loss median [95% CI] | IQM | p_better "
        "| p (Holm) | vs baseline | seeds | diverged |"
    )
    assert markdown[4].startswith(f"| 1 | {best['optimizer']} | {best['lr']:g} | not reached (2/2) | ")
    assert markdown[-4:-2] == [
        "| — | sgd | 1000 | not reached (2/2) | — | — | 0.00 | 1 | diverged | 2 | 2 |",
        "| — | adam | 1000 | not reached (2/2) | — | — | 0.00 | 1 | diverged | 2 | 2 |",
    ]


def test_compare_sorts_by_any_column(store):
    rows = json.loads(compare(store, "--format", "json", "--sort", "lr"))["rows"]
    assert [row["lr"] for row in rows] == sorted(row["lr"] for row in rows)
    rows = json.loads(compare(store, "--format", "json", "--sort", "max"))["rows"]
    maxima = [row["max"] for row in rows]
    assert maxima[:4] == sorted(maxima[:4]) and maxima[4:] == [None, None]


def test_before_after_lists_each_seed_and_the_mean(store):
    output = compare(store, "--before-after", "--format", "csv")
    rows = list(csv.DictReader(io.StringIO(output)))
    adam = [row for row in rows if row["optimizer"] == "adam" and row["lr"] == "0.01"]
    assert [row["seed"] for row in adam] == ["0", "1", "mean"]
    initial = [float(row["initial_loss"]) for row in adam]
    final = [float(row["final_loss"]) for row in adam]
    assert initial[2] == pytest.approx((initial[0] + initial[1]) / 2)
    assert final[2] == pytest.approx((final[0] + final[1]) / 2)
    diverged = [row for row in rows if row["lr"] == "1000.0"]
    assert {row["outcome"] for row in diverged} == {"diverged"}
    assert {row["final_loss"] for row in diverged} == {""}
    table = compare(store, "--before-after").splitlines()
    assert table[0] == f"{NAME}: sweep {store['second']}, loss before -> after 3 steps"
    mean_line = next(line for line in table if line.split()[:3] == ["adam", "0.01", "mean"])
    assert mean_line.split()[3:6] == [f"{initial[2]:.4g}", "->", f"{final[2]:.4g}"]


def test_compare_errors_are_one_line(store):
    result = invoke(["compare", "--experiment", "nope", "--tracking-uri", store["uri"]])
    assert result.exit_code == 1
    assert result.output == (
        f"Error: no experiment 'nope' in {store['uri']}: run `tinytrain sweep` first, "
        "or check --experiment and --tracking-uri\n"
    )
    import mlflow

    client = mlflow.MlflowClient(store["uri"])
    child = client.search_runs(
        [client.get_experiment_by_name(NAME).experiment_id], "tags.`tinytrain.kind` = 'run'", max_results=1
    )[0].info.run_id
    result = invoke(["compare", "--sweep", child, "--tracking-uri", store["uri"]])
    assert result.exit_code == 1
    assert result.output == (
        f"Error: run {child} is not a sweep's parent run (tag tinytrain.kind=sweep): "
        "give the id of a sweep, or leave --sweep out for the latest one\n"
    )
    result = invoke(["compare", "--sweep", store["first"], "--experiment", "other", "--tracking-uri", store["uri"]])
    assert result.exit_code == 1 and "is a sweep of experiment 'compare-e2e', not 'other'" in result.output
    result = invoke(["compare", "--before-after", "--sort", "lr", "--tracking-uri", store["uri"]])
    assert result.exit_code == 2
    assert result.output.endswith(
        "Error: --sort and --vs are for the compare table; --before-after lists the runs in grid order\n"
    )
    for args, message in [
        (
            ["--vs", "adam@0.5"],
            "Error: --vs adam@0.5 is not a cell of this sweep: use one of sgd@0.001, sgd@0.01, "
            "sgd@1000, adam@0.001, adam@0.01, adam@1000\n",
        ),
        (
            ["--vs", "adam"],
            "Error: --vs 'adam' must name a cell as OPTIMIZER@LR, for example adam@0.001 (with other axes: "
            "adam@0.001[schedule=cosine])\n",
        ),
        (["--target", "0"], "Error: --target must be a finite loss > 0, got 0.0\n"),
    ]:
        result = invoke(["compare", "--experiment", NAME, "--tracking-uri", store["uri"], *args])
        assert (result.exit_code, result.output) == (2, message)


def test_time_to_target_and_the_paired_numbers_equal_a_recomputation_from_mlflow(store):
    """--target 0.09 --vs sgd@0.001 against numpy on the `loss` histories MlflowClient returns."""
    import mlflow
    from scipy.stats import wilcoxon

    rows = json.loads(compare(store, "--format", "json", "--target", "0.09", "--vs", "sgd@0.001"))["rows"]
    client = mlflow.MlflowClient(store["uri"])
    experiment = client.get_experiment_by_name(NAME)
    cells: dict[tuple[str, float], dict[int, tuple[str, list[float]]]] = {}
    for run in client.search_runs([experiment.experiment_id], "tags.`tinytrain.kind` = 'run'", max_results=1000):
        history = sorted(client.get_metric_history(run.info.run_id, "loss"), key=lambda m: m.step)
        cell = cells.setdefault((run.data.params["optimizer"], float(run.data.params["lr"])), {})
        cell[int(run.data.params["seed"])] = (run.data.tags["tinytrain.outcome"], [m.value for m in history])
    worst = math.log10(1.7976931348623157e308)

    def final_log(outcome_losses):
        outcome, losses = outcome_losses
        return worst if outcome == "diverged" else math.log10(losses[-1])

    base = cells[("sgd", 0.001)]
    raw_p = {}
    for row in rows:
        cell = cells[(row["optimizer"], row["lr"])]
        reached = [
            None if outcome == "diverged" else next((i for i, v in enumerate(losses) if v <= 0.09), None)
            for outcome, losses in cell.values()
        ]
        steps = np.median([math.inf if r is None else r for r in reached])
        assert row["steps_to_target"] == (None if math.isinf(steps) else steps)
        assert row["not_reached"] == sum(r is None for r in reached)
        finished = [math.log10(losses[-1]) for outcome, losses in cell.values() if outcome != "diverged"]
        assert row["median"] == (pytest.approx(10 ** np.median(finished), rel=1e-12) if finished else None)
        if row["baseline"]:
            assert (row["optimizer"], row["lr"], row["p_value"]) == ("sgd", 0.001, None)
            continue
        d = [final_log(cell[seed]) - final_log(base[seed]) for seed in sorted(base)]
        assert row["p_better"] == pytest.approx(sum(1 if x < 0 else 0.5 if x == 0 else 0 for x in d) / len(d))
        raw_p[(row["optimizer"], row["lr"])] = 1.0 if not any(d) else wilcoxon(d).pvalue
    order = sorted(raw_p, key=raw_p.get)
    running, holm = 0.0, {}
    for k, cell in enumerate(order):
        running = max(running, min(1.0, (len(order) - k) * raw_p[cell]))
        holm[cell] = running
    for row in rows:
        if not row["baseline"]:
            assert row["p_value"] == pytest.approx(holm[(row["optimizer"], row["lr"])])
            assert row["tied_with_best"] is (holm[(row["optimizer"], row["lr"])] >= 0.05)


# ---------------------------------------------------------------------------------------------------------
# plot


def test_plot_writes_a_png(store, tmp_path):
    out = tmp_path / "curves" / "loss.png"
    result = invoke(["plot", "--experiment", NAME, "--out", str(out), "--tracking-uri", store["uri"]])
    assert result.exit_code == 0, result.output
    assert result.output == f"Wrote {out}: 2 panel(s), 4 line(s), sweep {store['second']} of {NAME}\n"
    assert out.read_bytes()[:8] == PNG_SIGNATURE
    import matplotlib.image

    height, width, _ = matplotlib.image.imread(out).shape
    assert width > 800 and height > 400


def test_the_figure_has_a_log_panel_per_optimizer_and_a_line_per_converged_lr(store):
    sweep = read_sweep(store["uri"], NAME, with_losses=True)
    figure = curves.plot_loss_curves(sweep)
    assert [ax.get_title() for ax in figure.axes] == ["sgd", "adam"]
    for ax in figure.axes:
        assert ax.get_yscale() == "log"
        assert [line.get_label() for line in ax.lines] == ["0.001", "0.01"]  # lr 1000 diverged at every seed
        (bands,) = ax.collections  # the min-max bands, one collection a panel
        assert len(bands.get_paths()) == 2
        assert all(len(line.get_xdata()) == 4 for line in ax.lines)  # steps 0..3
        assert "diverged at every seed: lr 1000" in [text.get_text() for text in ax.texts]
    sgd = [run for run in sweep.runs if run.optimizer == "sgd" and run.lr == 0.01]
    median = np.median([run.losses for run in sgd], axis=0)
    assert list(figure.axes[0].lines[1].get_ydata()) == pytest.approx(list(median), rel=1e-12)


# ---------------------------------------------------------------------------------------------------------
# the summary a sweep logs to its parent run


def test_each_sweep_logs_its_table_and_curves_to_its_parent_run(store, tmp_path):
    import mlflow

    client = mlflow.MlflowClient(store["uri"])
    for sweep in (store["first"], store["second"]):
        names = {item.path for item in client.list_artifacts(sweep)}
        assert names == {"experiment.toml", *summary.SUMMARY_FILES}
    folder = Path(client.download_artifacts(store["second"], "", str(tmp_path)))
    assert (folder / "compare.csv").read_text() == compare(store, "--format", "csv")
    assert (folder / "loss-curves.png").read_bytes()[:8] == PNG_SIGNATURE
    markdown = (folder / "compare.md").read_text()
    assert markdown.splitlines()[2:] == compare(store, "--format", "markdown").splitlines()[2:]


def test_each_sweep_has_a_summary_run_per_cell_that_equals_compare_and_the_seeds_curves(store):
    """The runs the UI shows per cell: their numbers are compare's, their `loss` the median over seeds, and
    they never count as cells (resume, compare and --dry-run see the 12 runs of the grid's cells only)."""
    import mlflow

    from tinytrain.tracking import finished_keys_readonly

    client = mlflow.MlflowClient(store["uri"])
    experiment_id = client.get_experiment_by_name(NAME).experiment_id
    summaries = client.search_runs(
        [experiment_id], f"tags.`mlflow.parentRunId` = '{store['first']}' and tags.`tinytrain.kind` = 'cell'"
    )
    rows = {(row["optimizer"], row["lr"]): row for row in compare_json(store, store["first"])}
    assert len(summaries) == len(rows) == 6
    for run in summaries:
        row = rows[(run.data.params["optimizer"], float(run.data.params["lr"]))]
        assert run.info.run_name == f"{row['optimizer']}-lr{row['lr']:g}-median" and run.info.status == "FINISHED"
        metrics = run.data.metrics
        for column in ("median", "ci_low", "ci_high", "iqm"):
            value = row[column]
            assert metrics.get(f"log10_final_loss_{column}") == (
                None if value is None else pytest.approx(math.log10(value))
            ), column
        for metric, column in [
            ("p_value", "p_value"),
            ("p_better", "p_better"),
            ("rank", "rank"),
            ("seeds_diverged", "diverged"),
            ("steps_to_target", "steps_to_target"),
        ]:
            assert metrics.get(metric) == (None if row[column] is None else pytest.approx(row[column])), metric
        cell = [
            r
            for r in client.search_runs([experiment_id], "tags.`tinytrain.kind` = 'run'")
            if (r.data.params["optimizer"], float(r.data.params["lr"])) == (row["optimizer"], row["lr"])
            and r.data.tags["tinytrain.outcome"] != "diverged"
        ]
        median = sorted(client.get_metric_history(run.info.run_id, "loss"), key=lambda m: m.step)
        if not cell:
            assert median == []  # every seed diverged: no curve
            continue
        histories = [
            [m.value for m in sorted(client.get_metric_history(r.info.run_id, "loss"), key=lambda m: m.step)]
            for r in cell
        ]
        assert [m.value for m in median] == pytest.approx(list(np.median(histories, axis=0)), rel=1e-6)
    assert len(finished_keys_readonly(store["uri"], NAME)) == 12
    assert invoke(
        ["sweep", str(store["folder"] / "grid.toml"), "--dry-run", "--tracking-uri", store["uri"]]
    ).output.endswith("12 runs, 0 to run, 12 already done (dry run: nothing written)\n")


@pytest.mark.store  # writes a store of its own (no fixture of conftest's marks it)
def test_no_summary_for_an_interrupted_sweep_or_one_without_finished_cells(tmp_path):
    import mlflow

    from tinytrain.engines.sequential import train
    from tinytrain.spec import load_experiment

    uri = resolve_tracking_uri(str(tmp_path / "store" / "mlflow.db"))
    experiment = load_experiment(text=GRID)
    result = train(experiment.specs()[0])
    parents = {}
    # with a finished cell: only the status decides; without one: no summary even for a finished sweep
    for case, status, results in (
        ("interrupted", "KILLED", [result]),
        ("failed", "FAILED", [result]),
        ("empty", "FINISHED", []),
        ("finished", "FINISHED", [result]),
    ):
        recorder = Recorder(uri, summary.SweepSummaryMaker())
        recorder.open(experiment, experiment.specs(), finished={}, force=True)
        for each in results:
            recorder.run_started(each.spec)
            recorder.run_finished(each)
        recorder.close(status)
        parents[case] = recorder.parent_run_id
    client = mlflow.MlflowClient(uri)
    for case in ("interrupted", "failed", "empty"):
        assert [item.path for item in client.list_artifacts(parents[case])] == ["experiment.toml"], case
        assert "tinytrain.error" not in client.get_run(parents[case]).data.tags
    assert [item.path for item in client.list_artifacts(parents["finished"])] == [
        "compare.csv",
        "compare.md",
        "experiment.toml",
        "loss-curves.png",
    ]


@pytest.mark.store
def test_the_writer_logs_the_summary_the_sweeps_process_made_or_tags_why_it_could_not(tmp_path):
    """Behind a BackgroundRecorder the summary is made in this process (from the record the writer read) and
    logged by the writer: the same files as a Recorder in this process makes. A summary that raises while it
    is made leaves the runs as they are, tags the parent with the reason, and the sweep's counts stand."""
    import mlflow

    from tinytrain.engines.sequential import train
    from tinytrain.spec import load_experiment
    from tinytrain.tracking.background import BackgroundRecorder

    class Broken(summary.SweepSummaryMaker):
        def write(self, sweep, folder):
            raise RuntimeError("no room for the picture")

    experiment = load_experiment(text=GRID)
    results = [train(spec) for spec in experiment.specs()[:2]]
    uri = resolve_tracking_uri(str(tmp_path / "store" / "mlflow.db"))
    parents, counts = {}, {}
    for case, made_by in (
        ("in process", Recorder(uri, summary.SweepSummaryMaker())),
        ("background", BackgroundRecorder(uri, summary.SweepSummaryMaker())),
        ("broken", BackgroundRecorder(uri, Broken())),
    ):
        made_by.open(experiment, experiment.specs()[:2], finished={}, force=True)
        for result in results:
            made_by.run_started(result.spec)
            made_by.run_finished(result)
        counts[case] = made_by.close("FINISHED")
        parents[case] = counts[case].parent_run_id
    client = mlflow.MlflowClient(uri)

    def files(case: str) -> dict[str, bytes]:
        folder = client.download_artifacts(parents[case], "", str(tmp_path / case))
        return {
            path.name: path.read_bytes().replace(parents[case].encode(), b"PARENT")  # the title names it
            for path in Path(folder).iterdir()
            if path.suffix in (".md", ".csv")
        }

    assert files("background") == files("in process") and set(files("background")) == {"compare.md", "compare.csv"}
    cells = [
        run
        for run in client.search_runs([counts["background"].experiment_id])
        if run.data.tags.get("mlflow.parentRunId") == parents["background"]
        and run.data.tags.get("tinytrain.kind") == "cell"
    ]
    assert len(cells) == len({(result.spec.optimizer, result.spec.lr) for result in results}) == 1  # two seeds
    broken = client.get_run(parents["broken"])
    assert broken.data.tags["tinytrain.error"] == "summary: RuntimeError: no room for the picture"
    assert broken.info.status == "FINISHED" and counts["broken"].finished + counts["broken"].diverged == 2
    assert [item.path for item in client.list_artifacts(parents["broken"])] == ["experiment.toml"]


# ---------------------------------------------------------------------------------------------------------
# the report functions on hand-made runs


def cell_run(
    optimizer: str, lr: float, seed: int, final: float, outcome: str = "finished", initial: float = 0.1
) -> CellRun:
    return CellRun(f"{optimizer}{lr}{seed}", "key", optimizer, lr, seed, outcome, initial, final, (initial, final))


def test_summarize_uses_log10_for_the_geometric_mean_and_spread():
    rows = report.summarize(
        [
            cell_run("adam", 0.1, 0, 1e-16),
            cell_run("adam", 0.1, 1, 1e-2),
            cell_run("adam", 0.1, 2, math.nan, "diverged"),
            cell_run("sgd", 0.1, 0, 0.5),
            cell_run("sgd", 0.1, 1, math.nan, "diverged"),
        ]
    )
    adam, sgd = rows
    assert adam.geomean == pytest.approx(1e-9) and adam.log10_std == pytest.approx(math.sqrt(98))
    assert adam.mean == pytest.approx(0.005) and adam.min == 1e-16 and adam.max == 1e-2
    assert (adam.seeds, adam.diverged, adam.rank) == (3, 1, 1)
    assert (sgd.mean, sgd.std, sgd.log10_std, sgd.seeds, sgd.diverged, sgd.rank) == (0.5, None, None, 2, 1, 2)


def test_a_zero_final_loss_counts_as_the_floor_in_log10():
    (row,) = report.summarize([cell_run("adam", 0.1, 0, 0.0), cell_run("adam", 0.1, 1, 1e-5)])
    assert row.geomean == pytest.approx(math.sqrt(stats.LOSS_FLOOR * 1e-5))


def test_markdown_of_hand_made_rows_is_exact():
    rows = report.summarize([cell_run("sgd", 0.01, 0, 0.25), cell_run("sgd", 0.01, 1, 0.0625)])
    assert report.render_compare(rows, "markdown", "title", "caption") == (
        "**title**\n\n"
        "| rank | optimizer | lr | steps to loss 0.001 | final loss median [95% CI] | IQM | p_better | p (Holm) "
        "| vs baseline | seeds | diverged |\n"
        "|---:|---|---:|---:|---:|---:|---:|---:|---|---:|---:|\n"
        "| 1 | sgd | 0.01 | not reached (2/2) | 0.12 [0.062, 0.25] | 0.12 | — | — | baseline | 2 | 0 |\n"
        "\ncaption\n"
    )


def test_the_one_step_table_puts_the_mean_at_the_bottom():
    runs = [
        cell_run("adam", 0.001, seed, final, initial=initial)
        for seed, (initial, final) in enumerate([(0.1, 0.07), (0.09, 0.06)])
    ]
    sweep = SweepRecord("one-step-adam", "1", "abc", 1, 2, tuple(runs), ())
    rows = report.before_after(sweep.runs)
    text = report.render_before_after(rows, "table", report.before_after_title(sweep)).splitlines()
    assert text[0] == "one-step-adam: sweep abc, loss before -> after 1 step"
    assert [line.split() for line in text[4:6]] == [
        ["adam", "0.001", "0", "0.1", "->", "0.07", "-30.0%", "finished"],
        ["adam", "0.001", "1", "0.09", "->", "0.06", "-33.3%", "finished"],
    ]
    assert text[-1].split() == ["adam", "0.001", "mean", "0.095", "->", "0.065", "-31.6%"]

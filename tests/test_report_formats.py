"""The report's formats on hand-made runs, without a store (fast, so make mutation uses them): every format of
the compare table and of the before -> after rows, the values worked out by hand from the runs."""

from __future__ import annotations

import csv
import io
import json
import math

import pytest

from tinytrain import report
from tinytrain.tracking import CellRun, SweepRecord


def cell_run(optimizer: str, lr: float, seed: int, initial: float, final: float,
             outcome: str = "converged") -> CellRun:
    return CellRun(f"{optimizer}{lr}{seed}", "key", optimizer, lr, seed, outcome, initial, final, (initial, final))


# adam 0.01: 0.5 -> 0.25 and 0.25 -> 0.125 (both -50 %); sgd 0.1: 0.5 -> 0.375 (-25 %) and a diverged seed
RUNS = [cell_run("adam", 0.01, 0, 0.5, 0.25), cell_run("adam", 0.01, 1, 0.25, 0.125),
        cell_run("sgd", 0.1, 0, 0.5, 0.375), cell_run("sgd", 0.1, 1, 0.5, math.inf, "diverged")]
EXPECTED = [  # (optimizer, lr, seed, initial_loss, final_loss, change, outcome) as csv and json give them
    ("adam", 0.01, 0, 0.5, 0.25, -0.5, "converged"),
    ("adam", 0.01, 1, 0.25, 0.125, -0.5, "converged"),
    ("adam", 0.01, "mean", 0.375, 0.1875, -0.5, "mean"),
    ("sgd", 0.1, 0, 0.5, 0.375, -0.25, "converged"),
    ("sgd", 0.1, 1, 0.5, None, None, "diverged"),
    ("sgd", 0.1, "mean", 0.5, 0.375, -0.25, "mean"),
]
COLUMNS = ["optimizer", "lr", "seed", "initial_loss", "final_loss", "change", "outcome"]


def test_before_after_rows_close_each_cell_with_the_mean_of_its_converged_seeds():
    rows = report.before_after(RUNS)
    assert [(row.optimizer, row.lr, row.seed, row.initial_loss, row.outcome) for row in rows] == [
        (optimizer, lr, None if seed == "mean" else seed, initial, outcome)
        for optimizer, lr, seed, initial, _final, _change, outcome in EXPECTED]
    assert rows[4].diverged and not rows[3].diverged and math.isnan(report.BeforeAfter("a", 1, 0, 0, 1, "x").change)


def test_before_after_json_and_csv_hold_the_raw_numbers():
    rows = report.before_after(RUNS)
    parsed = json.loads(report.render_before_after(rows, "json", "the title"))
    assert parsed == {"title": "the title", "rows": [dict(zip(COLUMNS, row, strict=True)) for row in EXPECTED]}
    lines = list(csv.reader(io.StringIO(report.render_before_after(rows, "csv"))))
    assert lines[0] == COLUMNS
    assert lines[1:] == [["" if value is None else repr(value) if isinstance(value, float) else str(value)
                          for value in row] for row in EXPECTED]


def test_before_after_markdown_and_table():
    rows = report.before_after(RUNS)
    markdown = report.render_before_after(rows, "markdown", "t").splitlines()
    assert markdown[:4] == ["**t**", "", "| optimizer | lr | seed | initial loss |  | final loss | change | outcome |",
                            "|---|---:|---:|---:|---|---:|---:|---|"]
    assert markdown[4] == "| adam | 0.01 | 0 | 0.5 | -> | 0.25 | -50.0% | converged |"
    assert markdown[6] == "| adam | 0.01 | mean | 0.375 | -> | 0.1875 | -50.0% |  |"
    assert markdown[8] == "| sgd | 0.1 | 1 | 0.5 | -> | — | — | diverged |"
    assert len(markdown) == 10
    table = report.render_before_after(rows, "table", "title").splitlines()
    assert table[:2] == ["title", ""] and set(table[3].strip()) == {"─"}
    # a blank line between the cells and above each mean row
    assert [index for index, line in enumerate(table) if index > 1 and not line.strip()] == [6, 8, 11]
    assert table[4].split() == ["adam", "0.01", "0", "0.5", "->", "0.25", "-50.0%", "converged"]
    assert table[7].split() == ["adam", "0.01", "mean", "0.375", "->", "0.1875", "-50.0%"]
    assert table[10].split() == ["sgd", "0.1", "1", "0.5", "->", "—", "—", "diverged"]
    assert len(table) == 13
    with pytest.raises(ValueError, match="unknown format 'xml': use one of table, csv, json, markdown"):
        report.render_before_after(rows, "xml")


def test_before_after_title_counts_steps():
    sweep = SweepRecord("e", "1", "abc", 1, 4, tuple(RUNS), ())
    assert report.before_after_title(sweep) == "e: sweep abc, loss before -> after 1 step"
    assert report.before_after_title(SweepRecord("e", "1", "abc", 3, 4, (), ())).endswith("after 3 steps")


def summary_rows():
    return report.summarize(RUNS)


def test_compare_json_and_csv_hold_the_raw_numbers():
    adam, sgd = summary_rows()
    assert (adam.rank, sgd.rank) == (1, 2)  # geometric means 0.177 and 0.375
    assert (sgd.mean, sgd.std, sgd.seeds, sgd.diverged) == (0.375, None, 2, 1)
    parsed = json.loads(report.render_compare([adam, sgd], "json", "t"))
    assert parsed["title"] == "t" and [row["optimizer"] for row in parsed["rows"]] == ["adam", "sgd"]
    old = {"rank": 2, "optimizer": "sgd", "lr": 0.1, "mean": 0.375, "std": None, "geomean": 0.375,
           "log10_std": None, "min": 0.375, "max": 0.375, "seeds": 2, "diverged": 1}
    assert {key: parsed["rows"][1][key] for key in old} == old
    assert set(parsed["rows"][1]) == set(report.COLUMNS)  # every column, the statistics' keys included
    lines = list(csv.reader(io.StringIO(report.render_compare([adam, sgd], "csv"))))
    assert lines[0] == list(report.COLUMNS)
    sgd_csv = dict(zip(lines[0], lines[2], strict=True))
    assert {key: sgd_csv[key] for key in old} == {key: "" if value is None else str(value)
                                                  for key, value in old.items()}


def test_compare_table_and_its_errors():
    adam, sgd = summary_rows()
    text = report.render_compare([adam, sgd], "table", "the title", "the caption").splitlines()
    assert text[:2] == ["the title", ""] and text[-2:] == ["", "the caption"] and len(text) == 8
    assert text[2].split()[:3] == ["rank", "optimizer", "lr"]
    assert text[4].split()[:3] == ["1", "adam", "0.01"] and text[5].split()[:3] == ["2", "sgd", "0.1"]
    untitled = report.render_compare([adam], "table").splitlines()
    assert len(untitled) == 4 and untitled[1].split()[0] == "rank" and untitled[-1].split()[1] == "adam"
    with pytest.raises(ValueError, match="unknown format 'xml'"):
        report.render_compare([adam], "xml")


def test_markdown_escapes_pipes_and_leaves_out_an_empty_title():
    (adam, _sgd) = summary_rows()
    text = report.render_compare([adam], "markdown")
    assert text.startswith("| rank | optimizer |") and text.endswith(" | 2 | 0 |\n")
    other = report.summarize([cell_run("a|b", 0.01, 0, 0.5, 0.25)])
    assert "| a\\|b |" in report.render_compare(other, "markdown")


# ---------------------------------------------------------------------------------------------------------
# The metrics compare can rank by, and how --vs names a cell


def test_a_runs_value_of_each_metric_and_nan_where_it_was_not_measured():
    measured = CellRun("r", "key", "adam", 0.01, 0, "finished", 2.0, 0.5, (2.0, 0.5),
                       metrics={"final_test_loss": 0.75, "final_test_accuracy": 0.875, "final_loss": 99.0})
    assert report.metric_value(measured) == 0.5  # final_loss by default, the run's own (not a metric's)
    assert report.metric_value(measured, "final_loss") == 0.5
    assert report.metric_value(measured, "test_loss") == 0.75
    assert report.metric_value(measured, "test_accuracy") == 0.875
    assert math.isnan(report.metric_value(RUNS[0], "test_accuracy"))


def test_as_metric_puts_the_metric_in_place_of_the_final_loss_and_an_accuracy_as_its_error():
    runs = [CellRun("r", "key", "adam", 0.01, seed, "finished", 2.0, 0.5, (2.0, 0.5),
                    metrics={"final_test_loss": 0.25 * (seed + 1), "final_test_accuracy": 0.75 + seed / 8})
            for seed in range(2)]
    assert report.as_metric(runs, "final_loss") == runs
    assert [run.final_loss for run in report.as_metric(runs, "test_loss")] == [0.25, 0.5]
    assert [run.final_loss for run in report.as_metric(runs, "test_accuracy")] == [0.25, 0.125]
    assert [run.losses for run in report.as_metric(runs, "test_accuracy")] == [run.losses for run in runs]


@pytest.mark.parametrize("text, cell", [("adam@0.001", ("adam", 0.001)), ("sgd-momentum@1e-2", ("sgd-momentum", 0.01))])
def test_parse_cell(text, cell):
    assert report.parse_cell(text) == cell
    assert report.parse_cell(report.cell_name(*cell)) == cell


@pytest.mark.parametrize("text", ["adam", "@0.1", "adam@", "adam@fast", "adam@inf", "adam@nan", "a@b@0.1"])
def test_parse_cell_refuses_what_is_not_optimizer_at_lr(text):
    with pytest.raises(ValueError) as error:
        report.parse_cell(text)
    assert str(error.value) == f"--vs {text!r} must name a cell as OPTIMIZER@LR, for example adam@0.001"

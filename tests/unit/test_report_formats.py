"""The report's formats on hand-made runs, without a store (fast, so make mutation uses them): every format of
the compare table and of the before -> after rows, the values worked out by hand from the runs."""

from __future__ import annotations

import csv
import io
import json
import math

import pytest

from tinytrain.reports import compare as report
from tinytrain.tracking import CellRun, SweepRecord


def cell_run(optimizer: str, lr: float, seed: int, initial: float, final: float, outcome: str = "converged") -> CellRun:
    return CellRun(f"{optimizer}{lr}{seed}", "key", optimizer, lr, seed, outcome, initial, final, (initial, final))


# adam 0.01: 0.5 -> 0.25 and 0.25 -> 0.125 (both -50 %); sgd 0.1: 0.5 -> 0.375 (-25 %) and a diverged seed
RUNS = [
    cell_run("adam", 0.01, 0, 0.5, 0.25),
    cell_run("adam", 0.01, 1, 0.25, 0.125),
    cell_run("sgd", 0.1, 0, 0.5, 0.375),
    cell_run("sgd", 0.1, 1, 0.5, math.inf, "diverged"),
]
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
        for optimizer, lr, seed, initial, _final, _change, outcome in EXPECTED
    ]
    assert rows[4].diverged and not rows[3].diverged and math.isnan(report.BeforeAfter("a", 1, 0, 0, 1, "x").change)


def test_before_after_json_and_csv_hold_the_raw_numbers():
    rows = report.before_after(RUNS)
    parsed = json.loads(report.render_before_after(rows, "json", "the title"))
    assert parsed == {"title": "the title", "rows": [dict(zip(COLUMNS, row, strict=True)) for row in EXPECTED]}
    lines = list(csv.reader(io.StringIO(report.render_before_after(rows, "csv"))))
    assert lines[0] == COLUMNS
    assert lines[1:] == [
        ["" if value is None else repr(value) if isinstance(value, float) else str(value) for value in row]
        for row in EXPECTED
    ]


def test_before_after_markdown_and_table():
    rows = report.before_after(RUNS)
    markdown = report.render_before_after(rows, "markdown", "t").splitlines()
    assert markdown[:4] == [
        "**t**",
        "",
        "| optimizer | lr | seed | initial loss |  | final loss | change | outcome |",
        "|---|---:|---:|---:|---|---:|---:|---|",
    ]
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
    old = {
        "rank": 2,
        "optimizer": "sgd",
        "lr": 0.1,
        "mean": 0.375,
        "std": None,
        "geomean": 0.375,
        "log10_std": None,
        "min": 0.375,
        "max": 0.375,
        "seeds": 2,
        "diverged": 1,
    }
    assert {key: parsed["rows"][1][key] for key in old} == old
    assert set(parsed["rows"][1]) == set(report.COLUMNS)  # every column, the statistics' keys included
    lines = list(csv.reader(io.StringIO(report.render_compare([adam, sgd], "csv"))))
    assert lines[0] == list(report.COLUMNS)
    sgd_csv = dict(zip(lines[0], lines[2], strict=True))
    assert {key: sgd_csv[key] for key in old} == {
        key: "" if value is None else str(value) for key, value in old.items()
    }


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
    measured = CellRun(
        "r",
        "key",
        "adam",
        0.01,
        0,
        "finished",
        2.0,
        0.5,
        (2.0, 0.5),
        metrics={"final_test_loss": 0.75, "final_test_accuracy": 0.875, "final_loss": 99.0},
    )
    assert report.metric_value(measured) == 0.5  # final_loss by default, the run's own (not a metric's)
    assert report.metric_value(measured, "final_loss") == 0.5
    assert report.metric_value(measured, "test_loss") == 0.75
    assert report.metric_value(measured, "test_accuracy") == 0.875
    assert math.isnan(report.metric_value(RUNS[0], "test_accuracy"))


def test_as_metric_puts_the_metric_in_place_of_the_final_loss_and_an_accuracy_as_its_error():
    runs = [
        CellRun(
            "r",
            "key",
            "adam",
            0.01,
            seed,
            "finished",
            2.0,
            0.5,
            (2.0, 0.5),
            metrics={"final_test_loss": 0.25 * (seed + 1), "final_test_accuracy": 0.75 + seed / 8},
        )
        for seed in range(2)
    ]
    assert report.as_metric(runs, "final_loss") == runs
    assert [run.final_loss for run in report.as_metric(runs, "test_loss")] == [0.25, 0.5]
    assert [run.final_loss for run in report.as_metric(runs, "test_accuracy")] == [0.25, 0.125]
    assert [run.losses for run in report.as_metric(runs, "test_accuracy")] == [run.losses for run in runs]


@pytest.mark.parametrize(
    "text, cell",
    [
        ("adam@0.001", ("adam", 0.001)),
        ("sgd-momentum@1e-2", ("sgd-momentum", 0.01)),
        ("a@b@0.1", ("a@b", 0.1)),  # a variant's name may hold an @: the lr is after the last one
        (
            "adam@0.01[schedule=cosine,weight_decay=0.01]",
            ("adam", 0.01, ("schedule", "cosine"), ("weight_decay", 0.01)),
        ),
    ],
)
def test_parse_cell(text, cell):
    assert report.parse_cell(text) == cell
    assert report.parse_cell(report.cell_name(*cell)) == cell


@pytest.mark.parametrize(
    "text", ["adam", "@0.1", "adam@", "adam@fast", "adam@inf", "adam@nan", "adam@0.1[schedule]", "adam@0.1[=x]"]
)
def test_parse_cell_refuses_what_is_not_optimizer_at_lr(text):
    with pytest.raises(ValueError) as error:
        report.parse_cell(text)
    assert str(error.value) == (
        f"--vs {text!r} must name a cell as OPTIMIZER@LR, for example adam@0.001 (with other axes: "
        "adam@0.001[schedule=cosine])"
    )


# ---------------------------------------------------------------------------------------------------------
# Rows by hand: the verdict, the cells of a row, sorting, the title and the caption


def row(optimizer: str = "adam", lr: float = 0.01, **fields) -> report.CellSummary:
    values = {
        "rank": 1,
        "mean": 0.5,
        "std": None,
        "geomean": 0.5,
        "log10_std": None,
        "min": 0.5,
        "max": 0.5,
        "seeds": 3,
        "diverged": 0,
        **fields,
    }
    return report.CellSummary(optimizer=optimizer, lr=lr, **values)


@pytest.mark.parametrize(
    "fields, verdict",
    [
        ({"baseline": True}, "baseline"),
        ({"tied_with_best": None, "p_better": 0.9}, "—"),  # no shared seeds
        ({"tied_with_best": True, "p_better": 0.9}, "tied"),
        ({"tied_with_best": False, "p_better": 0.75}, "better"),
        ({"tied_with_best": False, "p_better": 0.5}, "worse"),  # half the seeds: not better
        ({"tied_with_best": False, "p_better": None}, "worse"),
    ],
)
def test_verdict_against_the_baseline(fields, verdict):
    assert report.verdict(row(**fields)) == verdict


def test_the_cells_of_a_row_as_the_table_shows_them():
    full = row(
        rank=2,
        median=0.0123,
        ci_low=0.00456,
        ci_high=0.0789,
        iqm=0.0111,
        steps_to_target=40.0,
        not_reached=1,
        p_better=0.25,
        p_value=0.0312,
        tied_with_best=False,
        diverged=1,
    )
    assert report._cells(full) == (
        "2",
        "adam",
        "0.01",
        "40 (1/3 not)",
        "0.012 [0.0046, 0.079]",
        "0.011",
        "0.25",
        "0.031",
        "worse",
        "3",
        "1",
    )
    bare = row(rank=None, median=None, steps_to_target=None, not_reached=3)
    assert report._cells(bare)[0] == "—" and report._cells(bare)[3:5] == ("not reached (3/3)", "—")
    assert report._cells(row(median=1.5e-07, steps_to_target=7.0))[3:5] == ("7", "1.5e-07")  # no interval: one seed
    assert report._cells(row(seeds=0, steps_to_target=None))[3] == "—"
    tiny = row(rank=3, median=2.5e-11, ci_low=1.5e-12, ci_high=3.5e-10, iqm=4.5e-11, p_better=1.0, p_value=1.5e-06)
    assert report._cells(tiny)[4:8] == ("2.5e-11 [1.5e-12, 3.5e-10]", "4.5e-11", "1.00", "1.5e-06")  # e, not E
    assert report._cells(row(rank=3, median=2.5e-11))[0] == "3" and report._cells(row(median=2.5e-11))[4] == "2.5e-11"


def test_sort_rows_by_any_column_puts_empty_values_last_and_keeps_rank_order_in_ties():
    first, second, third = row("a", rank=1, median=0.5), row("b", rank=2, median=None), row("c", rank=3, median=0.1)
    unranked = row("d", rank=None, median=0.3)
    rows = [unranked, third, second, first]
    assert [r.optimizer for r in report.sort_rows(rows)] == ["a", "b", "c", "d"]
    assert [r.optimizer for r in report.sort_rows(rows, "median")] == ["c", "d", "a", "b"]
    tied = [row("x", rank=2, seeds=5), row("y", rank=1, seeds=5), row("z", rank=None, seeds=5)]
    assert [r.optimizer for r in report.sort_rows(tied, "seeds")] == ["y", "x", "z"]
    with pytest.raises(ValueError) as error:
        report.sort_rows(rows, "speed")
    assert str(error.value) == f"unknown column 'speed': use one of {', '.join(report.COLUMNS)}"


def test_compare_title_names_the_sweep_its_metric_steps_and_seeds():
    def sweep(seeds):
        runs = tuple(cell_run("adam", 0.01, seed, 0.5, 0.25) for seed in seeds)
        return SweepRecord("grid", "1", "abc123", 40, 1, runs, ())

    assert report.compare_title(sweep([0, 1, 1])) == "grid: sweep abc123, final loss after 40 steps over 2 seeds"
    assert (
        report.compare_title(sweep([4]), "test_accuracy")
        == "grid: sweep abc123, test error (1 - test accuracy) after 40 steps over 1 seed"
    )


def test_compare_caption_says_how_the_table_is_ranked_and_read():
    common = (
        "Median, 95% bootstrap CI and IQM (interquartile mean) are those of log10(final_loss) over the "
        "finished seeds; p_better: share of shared seeds where the cell ends lower than the baseline; p: "
        "two-sided Wilcoxon signed-rank on paired log10(final_loss), Holm-corrected. "
    )
    rows = [row("adam", baseline=True, seeds=6), row("sgd", rank=2, p_value=0.5, tied_with_best=True, seeds=6)]
    assert report.compare_caption(rows) == (
        "Rank 1 reaches a training loss <= 0.001 in the fewest steps (median over seeds; a seed that never gets "
        "there, or diverges, counts as not reached). " + common + "1 cell cannot be told apart from the best "
        "(adam@0.01) with 6 seeds (Holm-corrected p >= 0.05)."
    )
    assert report.compare_caption(rows, by="final_loss", target=0.1) == (
        "Rank 1 has the lowest geometric mean of final loss over seeds. " + common + "1 cell cannot be told apart "
        "from the best (adam@0.01) with 6 seeds (Holm-corrected p >= 0.05)."
    )
    assert report.compare_caption([row("adam")]).endswith("Holm-corrected. ")  # no baseline: no sentence
    accuracy = report.compare_caption(rows, by="final_loss", metric="test_accuracy")
    assert accuracy.startswith("Rank 1 has the lowest geometric mean of test error over seeds. ")
    assert "log10(1 - final_test_accuracy)" in accuracy and "final_loss" not in accuracy


def test_the_terminal_table_aligns_numbers_right_and_names_left_without_padding_or_wrapping():
    long_name = "a-variant-with-a-long-name-" * 2
    rows = [row("sgd", 0.1, rank=2, seeds=12, median=0.25), row(long_name, 0.001, rank=10, seeds=3, median=0.5)]
    text = report.render_compare(rows, "table").splitlines()
    assert len(text) == 5 and text[0] == "" and set(text[2].strip()) == {"─"}  # rich's blank top, header, rule
    header, body = text[1], text[3:]
    assert header.startswith(" rank   optimizer")  # one space of edge, no padding beside it
    assert [line[: len(" rank")] for line in body] == ["    2", "   10"]  # right-aligned under its header
    start = header.index("optimizer")
    assert [line[start : start + len(long_name)].rstrip() for line in body] == ["sgd", long_name]  # left-aligned
    seeds_end = header.index("seeds") + len("seeds")
    assert [line[:seeds_end].split()[-1] for line in body] == ["12", "3"]  # right-aligned: ends under it
    assert all(line == line.rstrip() for line in text)
    # wider than the 250 columns it is laid out in: each row stays on one line, cut short rather than wrapped
    wide = report.render_compare([row("x" * 300, 0.1)], "table").splitlines()
    assert len(wide) == 4 and "xxx…" in wide[3]


def test_compare_json_has_its_target_and_caption_indented_by_two():
    text = report.render_compare([row()], "json", "t", "the caption", target=0.25)
    parsed = json.loads(text)
    assert (parsed["title"], parsed["target"], parsed["caption"]) == ("t", 0.25, "the caption")
    assert text.startswith('{\n  "title": "t",\n') and text.endswith("}\n")
    assert report.render_compare([row()]) == report.render_compare([row()], "table")  # the default format


def test_before_after_defaults_and_json_indented_by_two():
    rows = report.before_after(RUNS)
    assert report.render_before_after(rows) == report.render_before_after(rows, "table", "")
    assert not report.render_before_after(rows).startswith("\n\n")  # no empty title line
    assert report.render_before_after(rows, "json").startswith('{\n  "title": "",\n  "rows": [\n')
    bounded = [cell_run("sgd", 0.1, 0, 0.5, 600.0, "diverged")]  # stopped by the bound on a finite loss
    record = json.loads(report.render_before_after(report.before_after(bounded), "json"))["rows"][0]
    assert (record["final_loss"], record["change"]) == (None, None)


@pytest.mark.parametrize(
    "rows, sentence",
    [
        (
            [row("adam", baseline=True, seeds=3), row("sgd", rank=2, p_value=0.01, tied_with_best=False, seeds=5)],
            "Every other cell differs from the best (adam@0.01) at Holm-corrected p < 0.05 with 3-5 seeds.",
        ),
        (
            [
                row("adam", rank=2, baseline=True),
                row("sgd", rank=1, p_value=0.5, tied_with_best=True),
                row("rmsprop", rank=3, p_value=0.2, tied_with_best=True),
            ],
            "2 cells cannot be told apart from adam@0.01 with 3 seeds (Holm-corrected p >= 0.05).",
        ),
        (
            [row("adam", baseline=True), row("sgd", rank=2)],
            "No cell shares a seed with the best (adam@0.01): nothing to compare.",
        ),
        ([row("adam"), row("sgd", rank=2)], ""),
        (  # a cell whose every seed diverged has p = 1 and is not tied: it does not "differ at p < 0.05"
            [row("sgd", baseline=True), row("adam", rank=None, p_value=1.0, tied_with_best=False, diverged=3)],
            "Every other cell diverged in every seed.",
        ),
        (
            [
                row("sgd", baseline=True),
                row("adam", rank=2, p_value=0.01, tied_with_best=False),
                row("rmsprop", rank=None, p_value=1.0, tied_with_best=False, diverged=3),
                row("adamw", rank=None, p_value=1.0, tied_with_best=False, diverged=3),
            ],
            "Every other cell that trained differs from the best (sgd@0.01) at Holm-corrected p < 0.05 with 3 "
            "seeds; 2 cells diverged in every seed.",
        ),
        (
            [
                row("sgd", baseline=True),
                row("adam", rank=2, p_value=0.4, tied_with_best=True),
                row("rmsprop", rank=None, p_value=1.0, tied_with_best=False, diverged=3),
            ],
            "1 cell cannot be told apart from the best (sgd@0.01) with 3 seeds (Holm-corrected p >= 0.05); 1 cell "
            "diverged in every seed.",
        ),
    ],
)
def test_ties_sentence(rows, sentence):
    assert report.ties_sentence(rows) == sentence


def test_summarize_refuses_an_unknown_ranking():
    with pytest.raises(ValueError) as error:
        report.summarize(RUNS, by="speed")
    assert str(error.value) == f"unknown ranking 'speed': use one of {', '.join(report.RANKINGS)}"


# ---------------------------------------------------------------------------------------------------------
# summarize on hand-made runs: the two rankings, a target of the caller's, no ranked cell, no shared seed


def curve_run(optimizer: str, seed: int, losses: tuple[float, ...], outcome: str = "finished") -> CellRun:
    return CellRun(f"{optimizer}{seed}", "key", optimizer, 0.01, seed, outcome, losses[0], losses[-1], losses)


def test_summarize_ranks_by_time_to_target_or_by_final_loss():
    # fast gets below 1e-3 at step 1 and ends at 5e-4; slow gets there at step 2 and ends far lower
    runs = [curve_run("fast", seed, (1.0, 1e-4, 5e-4)) for seed in range(2)] + [
        curve_run("slow", seed, (1.0, 0.1, 1e-6)) for seed in range(2)
    ]
    assert {row.optimizer: row.rank for row in report.summarize(runs)} == {"fast": 1, "slow": 2}
    assert {row.optimizer: row.rank for row in report.summarize(runs, by="final_loss")} == {"slow": 1, "fast": 2}
    loose = {row.optimizer: row.steps_to_target for row in report.summarize(runs, target=0.2)}
    assert loose == {"fast": 1.0, "slow": 1.0}  # the caller's target: both reach 0.2 at step 1
    fast = report.summarize(runs)[0]
    assert fast.std == pytest.approx(0.0) and report.summarize(runs[:1])[0].std is None  # two seeds: a std


def test_summarize_without_a_ranked_cell_or_a_shared_seed():
    diverged = [curve_run("wild", seed, (1.0, math.inf), "diverged") for seed in range(2)]
    (row,) = report.summarize(diverged)
    assert row.rank is None and not row.baseline and row.tied_with_best is None
    apart = [curve_run("a", 0, (1.0, 1e-4)), curve_run("b", 5, (1.0, 1e-2))]  # no seed in common
    rows = report.summarize(apart)
    assert [r.baseline for r in rows] == [True, False] and rows[1].tied_with_best is None
    assert rows[1].p_value is None and report.verdict(rows[1]) == "—"
    with pytest.raises(ValueError) as error:
        report.summarize(apart, vs=("c", 0.01))
    assert str(error.value) == "--vs c@0.01 is not a cell of this sweep: use one of a@0.01, b@0.01"


def test_the_smaller_corners_of_the_formats():
    assert "\r" not in report.render_compare([row()], "csv")  # lines end in \n, not csv's default \r\n
    assert report._cells(row(rank=1234))[0] == "1234"
    assert report._cells(row(median=0.0123))[4] == "0.012"  # two digits, with or without an interval
    text = report.render_compare([row("emoji:smile:")], "table")
    assert "emoji:smile:" in text  # names are shown as written, never as emoji
    with pytest.raises(ValueError) as error:
        report.render_compare([row()], "xml")
    assert str(error.value) == "unknown format 'xml': use one of table, csv, json, markdown, latex"
    three = [
        row("a", baseline=True, seeds=3),
        row("b", rank=2, p_value=0.01, tied_with_best=False, seeds=4),
        row("c", rank=3, p_value=0.01, tied_with_best=False, seeds=5),
    ]
    assert report.ties_sentence(three).endswith("with 3-5 seeds.")


def test_the_columns_that_fit_are_those_of_the_whole_table_laid_out():
    """fit_columns measures a table by one row of each column's widest cell: the columns it keeps are those that
    laying out every row finds, at every width (cells of unequal widths in different rows, wide characters)."""
    import random

    from tinytrain.reports import tables

    def by_every_row(header, rows, width, keep):
        shown = list(range(len(header)))
        while True:
            lines = tables.rich_lines([header[i] for i in shown], [[row[i] for i in shown] for row in rows], ())
            if max(map(len, lines)) <= width:
                return shown
            droppable = [index for index in shown if index not in keep]
            if not droppable:
                return None
            shown.remove(max(droppable, key=lambda index: (tables._width(header, rows, index), index)))

    generator = random.Random(4)
    header = ["rank", "optimizer", "lr", "steps", "median [95% CI]", "p", "vs"]
    rows = [
        [generator.choice(["1", "12", "—", "a" * generator.randint(1, 12), "日本"]) for _ in header] for _ in range(40)
    ]
    for width in range(10, 120, 7):
        assert tables.fit_columns(header, rows, width, keep=(0, 1)) == by_every_row(header, rows, width, {0, 1})

"""`tinytrain sweep --until-separated`: seeds added to the cells tied with the best until the paired test
tells them apart, or --max-seeds; the extra seeds as the experiment file keeps them."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from tests.conftest import invoke
from tinytrain.spec import ConfigError, load_experiment, validate
from tinytrain.sweep import next_seeds

pytestmark = pytest.mark.slow

GRID = """name = "separate"
steps = 5
[grid]
optimizer = ["sgd", "adam"]
lr = [0.01]
seed = [0, 1, 2, 3, 4]
"""


def test_a_sixth_seed_separates_two_cells_that_five_cannot(experiment_file, store_uri):
    path = experiment_file(GRID)
    result = invoke(["sweep", path, "--quiet", "--until-separated", "--max-seeds", "8", "--prune-p", "0"])
    assert result.exit_code == 0, result.output
    # five seeds: the smallest two-sided p is 2/2**5 = 0.0625; six: 0.03125 (one other cell, so Holm = p)
    assert (
        "Separated: every other cell differs from the best (adam@0.01) at Holm-corrected p < 0.05 with up to "
        "6 seeds (1 more round(s), 2 runs added" in result.output
    )
    rows = json.loads(invoke(["compare", "--experiment", "separate", "--format", "json"]).output)["rows"]
    assert [(row["optimizer"], row["seeds"], row["baseline"], row["tied_with_best"]) for row in rows] == [
        ("adam", 6, True, None),
        ("sgd", 6, False, False),
    ]  # in rank order
    assert rows[1]["p_value"] == pytest.approx(0.03125)
    again = invoke(["sweep", path, "--quiet", "--until-separated", "--max-seeds", "8", "--prune-p", "0"])
    assert "12 runs: 0 trained" in again.output and "(1 more round(s), 0 runs added" in again.output  # resumed


def test_max_seeds_stops_it_and_says_so(experiment_file, store_uri):
    args = ["--quiet", "--until-separated", "--max-seeds", "5", "--prune-p", "0"]
    result = invoke(["sweep", experiment_file(GRID), *args])
    assert result.exit_code == 0, result.output
    assert (
        "Not separated: 1 cell(s) still cannot be told apart from the best (adam@0.01) with up to 5 seeds "
        "(--max-seeds 5; no seeds added" in result.output
    )
    assert result.output.rstrip().endswith("sgd@0.01")


def test_a_cell_a_one_sided_paired_test_shows_worse_gets_no_more_seeds_and_is_named(experiment_file, store_uri):
    """Paired pruning: five seeds where sgd ends above adam on every one: the two-sided Holm test cannot tell
    them apart (p = 0.0625), the one-sided test shows sgd worse (p = 1/32), so sgd gets no sixth seed."""
    result = invoke(["sweep", experiment_file(GRID), "--quiet", "--until-separated", "--max-seeds", "8"])
    assert result.exit_code == 0, result.output
    assert (
        "Dropped sgd@0.01: no more seeds, worse than the best (adam@0.01) by a one-sided paired Wilcoxon test "
        "over 5 seeds, p = 0.0312 < 0.1." in result.output
    )
    assert "Separated: every other cell differs from the best (adam@0.01) at Holm-corrected p < 0.05 or was " in (
        result.output
    )
    assert "no seeds added" in result.output and "10 runs: 10 trained" in result.output


@pytest.mark.parametrize(
    "args, message",
    [
        (
            ["--max-seeds", "4"],
            "Error: --max-seeds bounds --until-separated: add --until-separated, or drop --max-seeds\n",
        ),
        (
            ["--prune-p", "0.2"],
            "Error: --prune-p prunes the seeds of --until-separated: add --until-separated, or drop --prune-p\n",
        ),
        (
            ["--until-separated", "--dry-run"],
            "Error: --until-separated picks its seeds from the results: drop --dry-run and --force\n",
        ),
    ],
)
def test_bad_options_are_one_line_and_write_nothing(args, message, experiment_file, tmp_path):
    result = invoke(["sweep", experiment_file(GRID), *args])
    assert (result.exit_code, result.output) == (2, message)
    assert not (tmp_path / "store").exists()


def test_extra_seeds_load_back_from_the_experiment_file_and_name_cells_of_the_grid():
    experiment = validate({"grid": {"optimizer": ["adam", "sgd"], "lr": [0.01, 0.1], "seed": [0, 1]}})
    from types import SimpleNamespace

    rows = [
        SimpleNamespace(optimizer=o, lr=lr, baseline=(o, lr) == ("adam", 0.1), tied_with_best=(o, lr) == ("sgd", 0.1))
        for o in ("adam", "sgd")
        for lr in (0.01, 0.1)
    ]
    extra = next_seeds(experiment, rows, max_seeds=5)
    assert extra == {("adam", 0.1): (2,), ("sgd", 0.1): (2,)}
    grown = replace(experiment, extra_seeds=extra)
    assert [(s.optimizer, s.lr, s.seed) for s in grown.specs()[-2:]] == [("adam", 0.1, 2), ("sgd", 0.1, 2)]
    again = load_experiment(text=grown.to_toml(), recorded=True)
    assert again.specs() == grown.specs()
    assert next_seeds(grown, rows, max_seeds=3) == {}  # both have 3 seeds: nothing more to add
    with pytest.raises(ConfigError, match='extra_seeds.adam@0.5 must name a cell of the grid as "OPTIMIZER@LR"'):
        validate({"grid": {"optimizer": ["adam"], "lr": [0.01]}, "extra_seeds": {"adam@0.5": [3]}})


def test_a_cell_whose_every_seed_diverged_is_named_apart_from_those_a_test_separates(capsys):
    """A diverged cell has no finite loss to pair: 'differs at p < 0.05' is not said of it."""
    from tinytrain.cli.training import show_separation
    from tinytrain.sweep import Separation

    separation = Separation([], True, "adam@0.01", [], 6, 1.5, diverged=["adam@10", "sgd@10"])
    show_separation(separation, max_seeds=8)
    assert capsys.readouterr().out == (
        "Separated: every other cell that trained differs from the best (adam@0.01) at Holm-corrected p < 0.05 "
        "with up to 6 seeds (no seeds added, 1.5 s); 2 cell(s) diverged in every seed.\n"
    )

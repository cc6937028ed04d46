"""The statistics of compare, each held against a recomputation from raw losses that does not go through
tinytrain (numpy, and an exact Wilcoxon test by enumerating every sign pattern), on hand-made runs: ties,
runs that never reach the target, diverged runs, one-seed cells and a baseline missing some seeds."""

from __future__ import annotations

import itertools
import json
import math
import subprocess
import sys

import numpy as np
import pytest

from tinytrain.reports import compare as report
from tinytrain.reports import stats
from tinytrain.tracking import CellRun


def run(optimizer: str, lr: float, seed: int, losses: list[float], outcome: str = "finished") -> CellRun:
    return CellRun(
        f"{optimizer}-{lr}-{seed}", "key", optimizer, lr, seed, outcome, losses[0], losses[-1], tuple(losses)
    )


def exact_wilcoxon(differences: list[float]) -> float:
    """Two-sided exact signed-rank p by enumerating all 2**n sign patterns (no ties among |d| assumed)."""
    d = np.array([x for x in differences if x != 0])
    ranks = np.argsort(np.argsort(np.abs(d))) + 1.0
    observed = ranks[d > 0].sum()
    totals = [
        sum(r for r, sign in zip(ranks, signs, strict=True) if sign)
        for signs in itertools.product([0, 1], repeat=len(d))
    ]
    low = np.mean([t <= observed for t in totals])
    high = np.mean([t >= observed for t in totals])
    return min(1.0, 2 * min(low, high))


def holm_by_hand(p: list[float]) -> list[float]:
    order = sorted(range(len(p)), key=lambda i: p[i])
    out, running = [0.0] * len(p), 0.0
    for k, i in enumerate(order):
        running = max(running, min(1.0, (len(p) - k) * p[i]))
        out[i] = running
    return out


def test_median_iqm_and_interval_equal_numpy_and_scipy_on_log10():
    finals = [1e-12, 3e-9, 2e-6, 5e-4, 1e-2, 0.3, 0.0]  # 0.0 counts as the floor
    runs = [run("adam", 0.01, seed, [0.1, final]) for seed, final in enumerate(finals)]
    runs.append(run("adam", 0.01, 7, [0.1, math.inf], "diverged"))  # left out of the loss statistics
    logs = np.log10(np.maximum(finals, stats.LOSS_FLOOR))
    numbers = stats.cell_stats(runs)
    assert numbers.median == pytest.approx(10 ** np.median(logs), rel=1e-12)
    quartiles = np.sort(logs)[1:-1]  # a quarter of 7, rounded down, cut from each end
    assert numbers.iqm == pytest.approx(10 ** quartiles.mean(), rel=1e-12)
    from scipy.stats import bootstrap

    interval = bootstrap((logs,), np.median, method="percentile", rng=np.random.default_rng(0)).confidence_interval
    assert (numbers.ci_low, numbers.ci_high) == pytest.approx((10**interval.low, 10**interval.high), rel=1e-12)
    assert numbers.ci_low <= numbers.median <= numbers.ci_high
    assert 10 ** logs.min() <= numbers.ci_low and numbers.ci_high <= 10 ** logs.max()
    assert stats.cell_stats(runs) == numbers  # the same generator every time


def test_one_seed_has_a_median_and_no_interval_and_identical_seeds_a_point_interval():
    (one,) = [stats.cell_stats([run("sgd", 0.1, 0, [0.1, 0.02])])]
    assert (one.median, one.iqm, one.ci_low, one.ci_high) == (pytest.approx(0.02), pytest.approx(0.02), None, None)
    same = stats.cell_stats([run("sgd", 0.1, seed, [0.1, 0.02]) for seed in range(3)])
    assert same.ci_low == same.ci_high == pytest.approx(0.02)
    none = stats.cell_stats([run("sgd", 0.1, 0, [0.1, math.nan], "diverged")])
    assert (none.median, none.ci_low, none.steps_to_target, none.not_reached) == (None, None, None, 1)


def test_time_to_target_is_the_first_step_at_or_below_it_and_not_reached_is_never_a_number():
    curves = [[1.0, 0.5, 1e-3, 1e-4], [1.0, 0.1, 0.01, 1e-3], [1.0, 0.9, 0.8, 0.7]]
    runs = [run("adam", 0.1, seed, curve) for seed, curve in enumerate(curves)]
    assert [stats.steps_to_target(curve, 1e-3) for curve in curves] == [2, 3, None]
    numbers = stats.cell_stats(runs, target=1e-3)
    assert (numbers.steps_to_target, numbers.not_reached) == (3, 1)  # median of 2, 3, never
    runs.append(run("adam", 0.1, 3, [1.0, 1e-4, math.inf], "diverged"))  # got there, then diverged: not reached
    numbers = stats.cell_stats(runs, target=1e-3)
    assert (numbers.steps_to_target, numbers.not_reached) == (None, 2)  # median of 2, 3, never, never


def test_paired_numbers_over_shared_seeds_equal_a_recomputation():
    base = [0.3, 2e-3, 4e-5, 1e-6, 2e-7, 1e-8, 5e-9, 1e-3]  # seeds 0..7
    cell = {0: 0.2, 1: 1e-3, 2: 1e-5, 3: 2e-7, 4: 1e-8, 5: 1e-9, 7: 3e-3, 9: 1e-10}  # no seed 6; seed 9 alone
    baseline = [run("adam", 0.001, seed, [1.0, loss]) for seed, loss in enumerate(base)]
    other = [run("sgd", 0.1, seed, [1.0, loss]) for seed, loss in cell.items()]
    result = stats.paired(other, baseline)
    shared = [0, 1, 2, 3, 4, 5, 7]
    differences = [math.log10(cell[s]) - math.log10(base[s]) for s in shared]
    assert result.seeds == 7
    assert result.p_better == pytest.approx(sum(d < 0 for d in differences) / 7)
    assert result.p_value == pytest.approx(exact_wilcoxon(differences), rel=1e-9)


def test_ties_count_half_diverged_is_worst_and_all_zero_differences_give_one():
    baseline = [run("adam", 0.001, s, [1.0, loss]) for s, loss in enumerate([0.1, 0.2, 0.3])]
    same = [run("sgd", 0.1, s, [1.0, loss]) for s, loss in enumerate([0.1, 0.2, 0.3])]
    assert stats.paired(same, baseline) == stats.Paired(3, 0.5, 1.0)
    mixed = [
        run("sgd", 0.1, 0, [1.0, 0.1]),
        run("sgd", 0.1, 1, [1.0, 0.01]),
        run("sgd", 0.1, 2, [1.0, math.inf], "diverged"),
    ]
    result = stats.paired(mixed, baseline)
    assert result.p_better == pytest.approx((0.5 + 1 + 0) / 3)
    # zeros dropped: two differences left; 2 / 2**2 is the smallest p they can give
    assert result.p_value == pytest.approx(exact_wilcoxon([0.0, -1.3, 1.0]))
    assert stats.paired([run("sgd", 0.1, 5, [1.0, 0.1])], baseline) == stats.Paired(0, None, None)


def test_a_diverged_run_is_the_worst_whatever_its_last_loss():
    """A run stopped by the bound ends on a finite loss, here below the baseline's: it still counts as the worst."""
    baseline = [run("adam", 0.001, s, [1.0, 10.0]) for s in range(2)]
    bounded = [run("sgd", 0.1, 0, [1e-3, 5.0], "diverged"), run("sgd", 0.1, 1, [1.0, 20.0])]
    assert stats.paired(bounded, baseline).p_better == 0.0


def test_fewer_than_six_seeds_can_never_be_significant():
    for n in range(1, 6):
        baseline = [run("adam", 0.001, s, [1.0, 0.1]) for s in range(n)]
        better = [run("sgd", 0.1, s, [1.0, 10.0 ** -(s + 2)]) for s in range(n)]
        assert stats.paired(better, baseline).p_value == pytest.approx(2 / 2**n)
    assert stats.ALPHA > 2 / 2**6


def test_holm_equals_the_step_down_by_hand_and_skips_untested():
    p = [0.01, 0.04, 0.03, 0.005, 0.5]
    assert stats.holm(p) == pytest.approx(holm_by_hand(p))
    assert stats.holm([0.02, None, 0.01]) == [pytest.approx(0.02), None, pytest.approx(0.02)]
    assert stats.holm([]) == []


def grid_runs() -> list[CellRun]:
    """Three cells over six seeds: fast reaches 1e-3 at step 1, slow at step 3, never does not."""
    runs = []
    for seed in range(6):
        runs.append(run("fast", 0.1, seed, [1.0, 1e-4, 10 ** -(5 + seed)]))
        runs.append(run("slow", 0.1, seed, [1.0, 0.1, 0.01, 1e-3, 10 ** -(4 + seed * 1.1)]))
        runs.append(run("never", 0.1, seed, [1.0, 0.5, 0.2 + seed / 100]))
    runs.append(run("gone", 1.0, 0, [1.0, math.nan], "diverged"))
    return runs


def test_rows_rank_by_time_to_target_and_compare_with_the_best():
    rows = {row.optimizer: row for row in report.summarize(grid_runs())}
    assert [rows[name].rank for name in ("fast", "slow", "never", "gone")] == [1, 2, 3, None]
    assert rows["fast"].baseline and rows["fast"].p_value is None and rows["fast"].tied_with_best is None
    raw = {
        name: exact_wilcoxon(
            [
                math.log10(r.final_loss) - math.log10(b.final_loss)
                for r, b in zip(
                    [x for x in grid_runs() if x.optimizer == name],
                    [x for x in grid_runs() if x.optimizer == "fast"],
                    strict=False,
                )
            ]
        )
        for name in ("slow", "never")
    }
    # "gone" shares seed 0 with fast: diverged there, worse, one difference: p = 1
    expected = holm_by_hand([raw["slow"], raw["never"], 1.0])
    assert [rows[name].p_value for name in ("slow", "never", "gone")] == pytest.approx(expected)
    assert rows["never"].p_better == 0.0 and rows["never"].tied_with_best is bool(expected[1] >= 0.05)
    assert rows["never"].steps_to_target is None and rows["never"].not_reached == 6
    by_loss = {row.optimizer: row.rank for row in report.summarize(grid_runs(), by="final_loss")}
    assert by_loss == {"fast": 1, "slow": 2, "never": 3, "gone": None}


def test_a_baseline_by_name_and_the_sentence_that_reads_the_ties():
    rows = report.summarize(grid_runs(), vs=("slow", 0.1))
    slow = next(row for row in rows if row.optimizer == "slow")
    assert slow.baseline and slow.rank == 2
    sentence = report.ties_sentence(rows)
    tied = sum(report.verdict(row) == "tied" for row in rows)  # "gone" diverged at every seed: not tied
    assert [report.verdict(row) for row in rows if row.optimizer == "gone"] == ["diverged"]
    assert sentence.startswith(f"{tied} cell") and "slow@0.1" in sentence and "with 1-6 seeds" in sentence
    with pytest.raises(ValueError, match="--vs adam@0.5 is not a cell of this sweep: use one of fast@0.1"):
        report.summarize(grid_runs(), vs=("adam", 0.5))
    three = [r for r in grid_runs() if r.seed < 3 and r.optimizer != "gone"]
    assert report.ties_sentence(report.summarize(three)) == (
        "2 cells cannot be told apart from the best (fast@0.1) with 3 seeds (Holm-corrected p >= 0.05)."
    )


def test_json_carries_the_new_keys_and_is_the_same_in_another_process():
    rows = report.summarize(grid_runs())
    document = json.loads(report.render_compare(rows, "json"))
    keys = {
        "median",
        "iqm",
        "ci_low",
        "ci_high",
        "steps_to_target",
        "not_reached",
        "p_better",
        "p_value",
        "tied_with_best",
    }
    assert all(keys <= set(row) for row in document["rows"])
    code = (
        "import json; from tests.unit.test_stats import grid_runs; "
        "from tinytrain.reports import compare as report; "
        "print(report.render_compare(report.summarize(grid_runs()), 'json'), end='')"
    )
    other = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=str(__import__("pathlib").Path(__file__).resolve().parents[2]),
    ).stdout
    assert json.loads(other) == document


def test_the_interval_is_scipys_percentile_bootstrap_with_its_fixed_generator():
    """Forty distinct seeds, so that the method shows in the interval (with a few seeds the median's percentile
    and BCa intervals fall on the same data points; the generator hardly ever shows: a median's bootstrap
    distribution is discrete)."""
    from scipy.stats import bootstrap

    finals = 10.0 ** -np.random.default_rng(7).uniform(1, 9, 40)
    runs = [run("adam", 0.01, seed, [0.1, final]) for seed, final in enumerate(finals)]
    logs = np.log10(finals)
    expected = bootstrap(
        (logs,),
        np.median,
        method="percentile",
        rng=np.random.default_rng(stats.BOOTSTRAP_SEED),
        n_resamples=stats.BOOTSTRAP_RESAMPLES,
        confidence_level=stats.CONFIDENCE,
    ).confidence_interval
    bca = bootstrap((logs,), np.median, rng=np.random.default_rng(stats.BOOTSTRAP_SEED)).confidence_interval
    numbers = stats.cell_stats(runs)
    assert (numbers.ci_low, numbers.ci_high) == (10**expected.low, 10**expected.high)
    assert (bca.low, bca.high) != (expected.low, expected.high)  # scipy's default method (BCa) would show


def test_holm_caps_a_corrected_p_value_at_one():
    assert stats.holm([0.6, 0.7, 0.2]) == [1.0, 1.0, pytest.approx(0.6)]


@pytest.mark.filterwarnings("ignore:The BCa confidence interval cannot be calculated")  # the NaN cell's, alone too
def test_cells_bootstrapped_together_get_each_the_interval_of_a_call_of_their_own(monkeypatch):
    """The cells of a sweep are bootstrapped in shared scipy calls, a chunk of equal-sized cells at a time, with
    their medians taken by sorting: each cell's numbers equal, to the last bit, those of scipy.stats.bootstrap
    with np.median on that cell alone (odd and even sizes, ties, a NaN, chunks that split a size's cells)."""
    from scipy.stats import bootstrap

    monkeypatch.setattr(stats, "BOOTSTRAP_VALUES", 3 * stats.BOOTSTRAP_RESAMPLES * 20)  # 3 cells of 20 a call
    generator = np.random.default_rng(3)
    cells = []
    for index, size in enumerate([20] * 8 + [19] * 3 + [7, 2, 1, 0, 5, 20]):
        finals = 10.0 ** -generator.uniform(1, 9, size)
        if index == 3:
            finals[:6] = finals[6]  # ties
        if index == 4:
            finals[5] = math.nan  # a run that ended on NaN without being marked diverged
        cells.append([run("adam", 0.01 * (index + 1), seed, [0.1, final]) for seed, final in enumerate(finals)])
    cells.append([run("sgd", 0.1, seed, [0.1, 0.02]) for seed in range(4)])  # every seed the same
    cells[-2].append(run("adam", 0.5, 99, [0.1, math.inf], "diverged"))
    together = stats.cells_stats(cells)
    assert repr(together) == repr([stats.cell_stats(cell) for cell in cells])  # repr: NaN equals NaN
    for cell, numbers in zip(cells, together, strict=True):
        logs = np.array([stats.log10_loss(r.final_loss) for r in cell if not r.diverged])
        if logs.size < 2 or np.all(logs == logs[0]):
            continue
        alone = bootstrap(
            (logs,),
            np.median,
            n_resamples=stats.BOOTSTRAP_RESAMPLES,
            confidence_level=stats.CONFIDENCE,
            method="percentile",
            rng=np.random.default_rng(stats.BOOTSTRAP_SEED),
        ).confidence_interval
        expected = (10 ** float(alone.low), 10 ** float(alone.high), 10 ** float(np.median(logs)))
        assert repr((numbers.ci_low, numbers.ci_high, numbers.median)) == repr(expected)


def test_sorted_median_is_numpys_median_bit_for_bit():
    generator = np.random.default_rng(11)
    for size in (2, 3, 19, 20, 21):
        values = generator.normal(-5, 3, (50, 40, size))
        values[0, :, : size // 2] = values[0, :, :1]  # ties
        values[1] = np.round(values[1])
        assert np.array_equal(stats._sorted_median(values, axis=-1), np.median(values, axis=-1))
        assert np.array_equal(stats._sorted_median(values, axis=1), np.median(values, axis=1))


def test_paired_tests_made_together_equal_a_call_of_their_own():
    """paired_each makes the Wilcoxon tests of many cells in shared scipy calls: each p equals, to the last bit,
    scipy.stats.wilcoxon on that cell's differences alone (exact and approximate methods, zero differences, tied
    magnitudes, few and many pairs, seeds missing from a cell, a diverged run)."""
    from scipy.stats import wilcoxon

    generator = np.random.default_rng(9)
    baseline = [run("adam", 0.001, seed, [1.0, 10.0 ** -generator.uniform(1, 9)]) for seed in range(60)]
    finals = {seed: b.final_loss for seed, b in enumerate(baseline)}
    cells = []
    for index, seeds in enumerate([20] * 6 + [60, 55, 3, 5, 12, 13, 14, 20, 2, 1]):
        losses = {seed: 10.0 ** -generator.uniform(1, 9) for seed in range(seeds)}
        if index % 3 == 1:
            for seed in range(0, seeds, 4):
                losses[seed] = finals[seed]  # zero differences
        if index % 3 == 2 and seeds > 2:
            losses[1] = finals[1] * 10
            losses[2] = finals[2] * 10  # tied magnitudes
        cell = [run("sgd", 0.01 * (index + 1), seed, [1.0, loss]) for seed, loss in losses.items()]
        if index == 4:
            cell[3] = run("sgd", 0.05, 3, [1.0, math.inf], "diverged")
        cells.append(cell[::2] if index == 5 else cell)
    together = stats.paired_each(cells, baseline)
    for cell, result in zip(cells, together, strict=True):
        theirs = {r.seed: stats.LOG10_DIVERGED if r.diverged else stats.log10_loss(r.final_loss) for r in baseline}
        ours = {r.seed: stats.LOG10_DIVERGED if r.diverged else stats.log10_loss(r.final_loss) for r in cell}
        differences = [ours[seed] - theirs[seed] for seed in sorted(set(ours) & set(theirs))]
        alone = float(wilcoxon(differences, zero_method="wilcox", alternative="two-sided").pvalue)
        assert (result.seeds, repr(result.p_value)) == (len(differences), repr(alone))

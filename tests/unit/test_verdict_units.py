"""The verdict's parts on runs made by hand: the expected best of k against brute force, the tuning choice,
divergence never tied, the profile score against a numeric integral, fresh seeds, and tables that fit."""

from __future__ import annotations

import itertools
import math
import statistics

import numpy as np
import pytest

from tinytrain.reports import profiles, tables
from tinytrain.reports import verdict as report
from tinytrain.tracking import CellRun, SweepRecord


def run(optimizer: str, lr: float, seed: int, final: float, metrics: dict | None = None, **extra) -> CellRun:
    diverged = math.isinf(final)
    return CellRun(
        f"{optimizer}-{lr}-{seed}",
        "key",
        optimizer,
        lr,
        seed,
        "diverged" if diverged else "finished",
        1.0,
        final,
        metrics=metrics or {},
        **extra,
    )


def sweep(runs, confirms=None) -> SweepRecord:
    return SweepRecord("grid", "1", "parent", 10, len(runs), tuple(runs), (), confirms)


@pytest.mark.parametrize("values", [[3.0], [1.0, 2.0], [5.0, 1.0, 4.0, 1.0, 9.0], [0.1, 0.3, 0.2, 0.7, 0.5, 0.6]])
def test_expected_best_of_k_is_the_mean_best_over_every_subset_of_k(values):
    curve = report.expected_best_of_k(values)
    assert len(curve) == len(values)
    for k, expected in enumerate(curve, start=1):
        brute = statistics.fmean(min(subset) for subset in itertools.combinations(values, k))
        assert expected == pytest.approx(brute)
    assert curve[-1] == min(values) and list(curve) == sorted(curve, reverse=True)


def test_each_arm_is_tuned_on_its_lowest_median_with_divergence_worst():
    runs = [
        *(run("adam", 0.001, seed, 0.3 + seed / 100) for seed in range(3)),
        *(run("adam", 0.01, seed, 0.1 + seed / 100) for seed in range(3)),
        run("adam", 0.1, 0, 0.001),  # the lowest value, but two of three seeds diverged: the median diverged
        run("adam", 0.1, 1, math.inf),
        run("adam", 0.1, 2, math.inf),
        *(run("sgd", 0.1, seed, 0.5) for seed in range(3)),
    ]
    result = report.tune(sweep(runs))
    assert result.metric.name == "final_loss" and result.metric.label == "training loss"
    adam, sgd = result.arms
    assert (adam.arm, adam.chosen, adam.median) == ("adam", (("lr", 0.01),), pytest.approx(0.11))
    assert adam.diverged_share == pytest.approx(1 / 3) and sgd.diverged_share == 0
    worst = 0.5  # the study's largest finite value caps the diverged setting
    decades = [math.log10(0.31) - math.log10(0.11), 0.0, math.log10(worst) - math.log10(0.11)]
    assert adam.sensitivity == pytest.approx(statistics.fmean(decades))
    assert sgd.sensitivity == 0 and adam.seeds == (0, 1, 2)
    assert adam.expected_best == pytest.approx(
        report.expected_best_of_k([min(r.final_loss, worst) for r in runs if r.optimizer == "adam"])
    )


def test_validation_chooses_and_test_reports_when_the_runs_measured_them():
    metrics = {"final_val_loss": 0.2, "final_val_accuracy": 0.9, "final_test_accuracy": 0.8}
    runs = [run("adam", 0.01, 0, 0.1, metrics)]
    assert report.pick_metric(runs, report.TUNING_METRICS).name == "final_val_loss"
    reporting = report.pick_metric(runs, report.REPORTING_METRICS)
    assert (reporting.name, reporting.label, reporting.value(runs[0])) == (
        "final_test_accuracy",
        "test error",
        pytest.approx(0.2),
    )
    assert report.pick_metric(runs, report.TUNING_METRICS, "val_accuracy").name == "final_val_accuracy"
    with pytest.raises(report.VerdictError, match="the runs have no final_val_error"):
        report.pick_metric(runs, report.TUNING_METRICS, "val_error")


def test_arms_take_further_axes_by_name_and_leave_the_tuned_ones_out():
    class Recipe(CellRun):
        pass

    plain = run("sgd", 0.1, 0, 0.5)
    assert report.arm_of(plain) == "sgd" and report.setting_of(plain) == (("lr", 0.1),)

    def axes(cell):  # a run whose cell has a schedule axis (as the recipe's grid axes give)
        return {**report.run_axes(cell), "schedule": "cosine", "weight_decay": 0.1}

    assert report.arm_of(plain, axes=axes) == "sgd[schedule=cosine,weight_decay=0.1]"
    assert report.arm_of(plain, tuned=("lr", "weight_decay"), axes=axes) == "sgd[schedule=cosine]"
    assert report.setting_of(plain, ("lr", "weight_decay"), axes) == (("lr", 0.1), ("weight_decay", 0.1))


def test_an_arm_whose_every_seed_diverged_is_diverged_never_tied():
    runs = [run("adam", 0.01, seed, 0.1 + seed / 100) for seed in range(3)]
    runs += [run("lion", 0.1, seed, math.inf) for seed in range(3)]
    runs += [run("sgd", 0.1, seed, 0.2 + seed / 100) for seed in range(3)]
    result = report.judge(sweep(runs, confirms="tuning"))
    best, *others = result.arms
    assert best.arm == "adam" and best.standing == "best" and result.tuning_sweep == "tuning"
    standings = {arm.arm: arm.standing for arm in others}
    assert standings == {"sgd": "tied", "lion": "diverged"}  # three seeds: p >= 0.25 for both
    assert all(arm.p_value == pytest.approx(0.5) for arm in others)  # 2/2**3, Holm over two arms
    lion = next(arm for arm in others if arm.arm == "lion")
    assert math.isinf(lion.median) and lion.diverged == 3 and lion.p_improvement == 1.0
    sentences = dict(zip([arm.arm for arm in others], result.sentences, strict=True))
    assert sentences["sgd"] == "adam and sgd cannot be told apart on the training loss with 3 seeds (p = 0.5)"
    assert sentences["lion"].endswith("(lion diverged at every seed)")
    assert not result.separated
    frame = report.verdict(sweep(runs))
    assert list(frame["arm"]) == ["adam", "sgd", "lion"] and "sentence" in frame.columns


def test_the_verdict_is_the_same_numbers_every_time():
    runs = [
        run(o, 0.01, seed, base * (1 + (seed * 7 % 5) / 10)) for o, base in (("a", 1), ("b", 2)) for seed in range(8)
    ]
    first, second = report.judge(sweep(runs)), report.judge(sweep(runs))
    assert first == second
    (b,) = first.arms[1:]
    assert b.standing == "worse" and b.p_value == pytest.approx(2 / 2**8)
    assert (
        report.sentence(first.best, b, first.metric) == "a is better than b on the training loss, p = 0.0078, 8 seeds"
    )


def test_fresh_seeds_follow_the_tuning_seeds_and_refuse_overlap():
    assert report.fresh_seeds(3, [0, 1, 2]) == (3, 4, 5)
    assert report.fresh_seeds(2, [0, 4], first=10) == (10, 11)
    with pytest.raises(report.VerdictError) as error:
        report.fresh_seeds(3, [0, 1, 2], first=2)
    assert str(error.value) == "seed 2 was a tuning seed: confirm on fresh seeds (--first-seed 3 or above)"
    with pytest.raises(report.VerdictError, match="seeds 0, 1 were tuning seeds"):
        report.check_fresh([0, 1, 9], [0, 1])


def test_unknown_and_unfinished_arms_are_refused():
    runs = [run("adam", 0.01, 0, 0.1), run("sgd", 1.0, 0, math.inf)]
    tuning = report.tune(sweep(runs))
    with pytest.raises(report.VerdictError, match="unknown arm 'lion': the arms of sweep parent are adam, sgd"):
        report.confirmation_cells(tuning, ["lion"])
    assert [arm.arm for arm in report.confirmation_cells(tuning, ["adam"])] == ["adam"]
    with pytest.raises(report.VerdictError, match="arm sgd has no finished cell in sweep parent"):
        report.check_armed(sweep(runs), ["adam", "sgd"])


def test_the_profile_score_is_the_exact_area_under_the_step_function():
    for ratios in ([1.0], [1.0, 2.0, math.inf], [1.5, 3.9, 4.0, 7.0], [math.inf]):
        taus = np.linspace(1, 4, 300001)
        rho = (np.array(ratios)[None, :] <= taus[:, None]).mean(axis=1)
        assert profiles.score(ratios) == pytest.approx(np.trapezoid(rho, taus) / 3, abs=1e-4)


def test_profiles_need_a_shared_arm_and_a_reached_target():
    def losses(*values):
        return {"losses": tuple(values)}

    a = sweep([run("adam", 0.01, 0, 0.01, **losses(1.0, 0.5, 0.01)), run("sgd", 0.1, 0, 0.4, **losses(1.0, 0.4))])
    b = SweepRecord("other", "2", "p2", 10, 1, (run("adam", 0.01, 0, 0.5, **losses(1.0, 0.5)),), ())
    result = profiles.profiles([a, b], [0.5])
    scores = {arm.arm: (arm.times, arm.ratios, arm.score) for arm in result.arms}
    assert scores["adam"] == ((1.0, 1.0), (1.0, 1.0), 1.0)
    assert scores["sgd"] == ((1.0, math.inf), (1.0, math.inf), 0.5)  # a missed problem: infinite time
    with pytest.raises(profiles.VerdictError, match="no shared target: no arm reaches a loss <= 0.001 on grid"):
        profiles.profiles([a, b], [0.001])
    c = SweepRecord("third", "3", "p3", 10, 1, (run("lion", 0.01, 0, 0.5, **losses(1.0, 0.5)),), ())
    with pytest.raises(profiles.VerdictError, match="the sweeps share no arm"):
        profiles.profiles([a, c], [0.5])


def test_a_terminal_table_drops_its_widest_columns_then_stacks_within_the_width():
    header = ("name", "short", "a rather wide column", "value")
    rows = [("adam", "1", "x" * 40, "0.5"), ("sgd", "2", "y" * 40, "0.25")]
    full = tables.terminal_table(header, rows, {1, 3}, "title", "caption", None)
    assert "x" * 40 in full
    fitted = tables.terminal_table(header, rows, {1, 3}, "a title " * 10, "a caption " * 20, 40, keep=(0, 3))
    assert max(map(len, fitted.splitlines())) <= 40 and "x" * 40 not in fitted
    assert "Not shown at 40 columns: a rather wide column." in " ".join(fitted.split())
    stacked = tables.terminal_table(header, rows, {1, 3}, "", "", 12, keep=(0, 2))
    assert max(map(len, stacked.splitlines())) <= 12 and "adam" in stacked


def test_latex_is_booktabs_with_its_caption_and_escapes():
    text = tables.latex(("arm", "p_value"), [("sgd_momentum", "5%")], {1}, "t", "a & b")
    assert text.splitlines() == [
        "% t",
        "\\begin{table}[t]",
        "\\centering",
        "\\caption{a \\& b}",
        "\\begin{tabular}{lr}",
        "\\toprule",
        "arm & p\\_value \\\\",
        "\\midrule",
        "sgd\\_momentum & 5\\% \\\\",
        "\\bottomrule",
        "\\end{tabular}",
        "\\end{table}",
    ]
    assert tables.csv_text(("a",), [("1",)], "t", "c") == "# t\n# c\na\n1\n"


def test_a_median_pulled_by_a_diverged_seed_is_diverged_never_a_number_halfway():
    half = [run("a", 0.1, seed, value) for seed, value in enumerate([1e-3, 2e-3, math.inf, math.inf])]
    one = [run("b", 0.1, seed, value) for seed, value in enumerate([1e-3, 2e-3, 3e-3, math.inf])]
    result = report.judge(sweep([*half, *one]))
    b, a = result.arms
    assert (b.arm, a.arm) == ("b", "a") and math.isinf(a.median) and math.isinf(a.ci_high)
    assert b.median == pytest.approx(math.sqrt(2e-3 * 3e-3))  # the two middle seeds, on log10
    assert math.isinf(b.ci_high) and b.ci_low == pytest.approx(1e-3)


def test_a_recipe_grids_arms_are_its_runs_other_axes_and_each_is_confirmed_at_its_own_cell():
    """A run's arm (the recipe's axes, as the sweep's reader gives them) makes the verdict's arms; the
    confirmation experiment keeps exactly each arm's chosen cell, not every arm at that optimizer and lr."""
    from tinytrain.spec import load_experiment
    from tinytrain.sweep import confirmation_experiment

    experiment = load_experiment(
        None,
        ["optimizer=adam", "lr=0.001,0.01", "seed=0,1", "weight_decay=0.0,0.01", "steps=5"],
    )
    finals = {(0.001, 0.0): 0.3, (0.01, 0.0): 0.1, (0.001, 0.01): 0.05, (0.01, 0.01): 0.2}
    runs = []
    for spec in experiment.specs():
        arm = experiment.arm(spec)
        runs.append(run(spec.optimizer, spec.lr, spec.seed, finals[(spec.lr, dict(arm)["weight_decay"])], arm=arm))
    tuning = report.tune(sweep(runs))
    chosen = {arm.arm: (arm.lr, arm.recipe) for arm in tuning.arms}
    assert chosen == {
        "adam[weight_decay=0]": (0.01, (("weight_decay", 0.0),)),
        "adam[weight_decay=0.01]": (0.001, (("weight_decay", 0.01),)),
    }
    confirmation = confirmation_experiment(experiment, list(tuning.arms), (7, 8, 9), "parent")
    cells = {(spec.lr, spec.optimizer_kwargs["weight_decay"], spec.seed) for spec in confirmation.specs()}
    assert cells == {(0.01, 0.0, seed) for seed in (7, 8, 9)} | {(0.001, 0.01, seed) for seed in (7, 8, 9)}
    again = load_experiment("recorded", text=confirmation.to_toml(), recorded=True)
    assert again.specs() == confirmation.specs()

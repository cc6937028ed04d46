"""Arms tuned fairly, then confirmed on fresh seeds: a verdict a reader can quote.

An **arm** is an optimizer with its recipe: every axis of a run's cell except the seed and the tuned axes
(TUNED: the learning rate, the nuisance each arm is tuned on). Its **setting** is the value of the tuned axes.
Axes are read from each run by `run_axes` (the optimizer and the lr today, plus whatever mapping of further grid
axes a run carries in `axes`), so that new grid axes join the arms by name.

Tuning (`tune`): per arm, the setting whose median tuning metric over seeds is lowest (a diverged seed counts as
the worst value: +inf). The tuning metric is the first of TUNING_METRICS that the runs measured (validation where
the problem has it, else the training loss); an accuracy counts as its error, 1 - accuracy, so lower is better.
Beside the choice, per arm:
- the share of its settings whose median seed diverged;
- its lr sensitivity (after Wortsman et al. 2023): the mean over its settings of min(log10 m, log10 worst) -
  log10 m*, with m a setting's median, m* the arm's best and `worst` the largest finite value of the study;
- its expected best after k trials (Dodge et al. 2019) in Tang et al. 2020's unbiased form: with the arm's N
  runs sorted best first (v_1 <= ... <= v_N, a diverged run at `worst`), E[best of k] = sum_i v_i C(N-i, k-1) /
  C(N, k), the expected best of k runs drawn without replacement.

The verdict (`judge`): on a confirmation sweep (each arm's chosen setting on fresh seeds), per arm the median and
its 95 % bootstrap interval of the reporting metric (the first of REPORTING_METRICS measured; diverged seeds
count as the worst), the best arm (the lowest median), each other arm against it paired by seed: a two-sided
Wilcoxon signed-rank test on log10 values (stats.paired), Holm-corrected over the arms, and the probability that
the best beats the arm on a seed (ties half) with a percentile bootstrap interval. Every generator is seeded
(stats.BOOTSTRAP_SEED): the same store gives the same numbers in any process.

Plain functions over the read models (SweepRecord, CellRun); `verdict` and `tuning` give pandas DataFrames for the
Python API. numpy, scipy and pandas are imported where they are used.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from tinytrain.errors import ConfigError
from tinytrain.reports import stats, tables

if TYPE_CHECKING:
    import pandas as pd

    from tinytrain.tracking.sweep_records import CellRun, SweepRecord

TUNED = ("lr",)  # the axes tuned per arm; every other axis but the seed makes the arm
TUNING_METRICS = ("final_val_loss", "final_val_accuracy", "final_loss")  # the first the runs measured
REPORTING_METRICS = ("final_test_accuracy", "final_test_loss", "final_loss")


class VerdictError(ConfigError):
    """The runs cannot give what was asked (a missing metric, an unknown arm, overlapping seeds): bad input."""


# ---------------------------------------------------------------------------------------------------------
# Metrics and axes


@dataclass(frozen=True)
class Metric:
    """A run's metric as a value where lower is better: a loss as it is, an accuracy as its error."""

    name: str  # the run's metric (final_loss is CellRun.final_loss)

    @property
    def is_accuracy(self) -> bool:
        return self.name.endswith("accuracy")

    @property
    def label(self) -> str:
        """How sentences and headers name it: 'training loss', 'val loss', 'test error'."""
        if self.name == "final_loss":
            return "training loss"
        label = self.name.removeprefix("final_").replace("_", " ")
        return label.replace("accuracy", "error") if self.is_accuracy else label

    def raw(self, run: CellRun) -> float:
        """The run's value (NaN when it did not measure it)."""
        return run.final_loss if self.name == "final_loss" else run.metrics.get(self.name, math.nan)

    def value(self, run: CellRun) -> float:
        """Lower is better; +inf for a diverged run."""
        if run.diverged:
            return math.inf
        raw = self.raw(run)
        return 1.0 - raw if self.is_accuracy else raw


def measured(runs: Sequence[CellRun], metric: str) -> bool:
    """Whether every run that did not diverge measured the metric."""
    finished = [run for run in runs if not run.diverged]
    return bool(finished) and all(not math.isnan(Metric(metric).raw(run)) for run in finished)


def pick_metric(runs: Sequence[CellRun], preference: Sequence[str], given: str | None = None) -> Metric:
    """The given metric (checked), else the first of `preference` that every finished run measured."""
    if given is not None:
        name = given if given.startswith("final_") else f"final_{given}"  # val_loss -> final_val_loss
        if not measured(runs, name):
            raise VerdictError(f"the runs have no {name}: use one they measured ({', '.join(_names(runs))})")
        return Metric(name)
    for name in preference:
        if measured(runs, name):
            return Metric(name)
    return Metric("final_loss")


def _names(runs: Sequence[CellRun]) -> list[str]:
    names = {"final_loss"} | {name for run in runs for name in run.metrics if name.startswith("final_")}
    return sorted(names)


def run_axes(run: CellRun) -> dict[str, Any]:
    """Every grid axis of a run's cell but the seed: the optimizer, the lr and any further axes it carries."""
    return {"optimizer": run.optimizer, "lr": run.lr, **dict(getattr(run, "arm", None) or ())}


def arm_of(run: CellRun, tuned: Sequence[str] = TUNED, axes: Callable[[CellRun], dict] = run_axes) -> str:
    """The arm's name: the optimizer, and its other untuned axes in brackets (sgd[weight_decay=0.1])."""
    values = axes(run)
    recipe = ",".join(f"{name}={_text(value)}" for name, value in values.items() if name not in (*tuned, "optimizer"))
    return f"{values['optimizer']}[{recipe}]" if recipe else str(values["optimizer"])


def setting_of(
    run: CellRun, tuned: Sequence[str] = TUNED, axes: Callable[[CellRun], dict] = run_axes
) -> tuple[tuple[str, Any], ...]:
    values = axes(run)
    return tuple((name, values[name]) for name in tuned if name in values)


def setting_name(setting: Iterable[tuple[str, Any]]) -> str:
    return ",".join(f"{name}={_text(value)}" for name, value in setting)


def _text(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _log10(value: float) -> float:
    """log10 of a lower-is-better value; +inf stays the worst (stats.LOG10_DIVERGED in paired numbers)."""
    return math.inf if math.isinf(value) else stats.log10_loss(value)


# ---------------------------------------------------------------------------------------------------------
# Tuning: the setting chosen per arm, its sensitivity, divergence and the expected best of k trials


@dataclass(frozen=True)
class SettingResult:
    """One tuned setting of an arm over its seeds."""

    arm: str
    setting: tuple[tuple[str, Any], ...]
    values: tuple[float, ...]  # the tuning metric per seed (lower is better; +inf: diverged), seed order
    seeds: tuple[int, ...]

    @property
    def median(self) -> float:
        import numpy as np

        return float(np.median(self.values))

    @property
    def diverged(self) -> int:
        return sum(math.isinf(value) for value in self.values)


@dataclass(frozen=True)
class ArmTuning:
    """An arm on the tuning sweep: the setting its tuning metric chose, and what tuning it took."""

    arm: str
    optimizer: str
    chosen: tuple[tuple[str, Any], ...]  # the tuned axes' values, e.g. (("lr", 0.01),)
    median: float  # the tuning metric at the chosen setting, median over seeds (+inf: the median seed diverged)
    seeds: tuple[int, ...]  # the seeds the arm was tuned on
    settings: tuple[SettingResult, ...]  # every setting tried, in the grid's order
    diverged_share: float  # share of the settings whose median seed diverged
    sensitivity: float | None  # decades: mean of min(log10 m, log10 worst) - log10 m*; None when all diverged
    expected_best: tuple[float, ...]  # E[best of k runs], k = 1..len (diverged runs at `worst`)
    recipe: tuple[tuple[str, Any], ...] = ()  # the arm's other axes (schedule, weight_decay, ...), grid order

    @property
    def chosen_name(self) -> str:
        return setting_name(self.chosen)

    @property
    def lr(self) -> float:
        return dict(self.chosen)["lr"]


@dataclass(frozen=True)
class Tuning:
    sweep: str  # the tuning sweep's parent run id
    metric: Metric
    worst: float  # the largest finite value of the study: where divergence is capped
    arms: tuple[ArmTuning, ...]


def tune(
    sweep: SweepRecord,
    metric: str | None = None,
    tuned: Sequence[str] = TUNED,
    axes: Callable[[CellRun], dict] = run_axes,
) -> Tuning:
    """Each arm's setting chosen on the tuning metric (the first of TUNING_METRICS measured, or `metric`)."""
    chosen_metric = pick_metric(sweep.runs, TUNING_METRICS, metric)
    groups: dict[str, dict[tuple, list[CellRun]]] = {}
    for run in sweep.runs:
        groups.setdefault(arm_of(run, tuned, axes), {}).setdefault(setting_of(run, tuned, axes), []).append(run)
    finite = [value for run in sweep.runs if math.isfinite(value := chosen_metric.value(run))]
    worst = max(finite, default=math.inf)
    arms = []
    for arm, settings in groups.items():
        results = tuple(
            SettingResult(
                arm,
                setting,
                tuple(chosen_metric.value(run) for run in sorted(runs, key=lambda run: run.seed)),
                tuple(sorted(run.seed for run in runs)),
            )
            for setting, runs in settings.items()
        )
        best = min(results, key=lambda result: (result.median, result.diverged, _order(result.setting)))
        runs = [run for cell in settings.values() for run in cell]
        arms.append(
            ArmTuning(
                arm=arm,
                optimizer=str(axes(runs[0])["optimizer"]),
                chosen=best.setting,
                median=best.median,
                seeds=tuple(sorted({run.seed for run in runs})),
                settings=results,
                diverged_share=sum(math.isinf(result.median) for result in results) / len(results),
                sensitivity=_sensitivity([result.median for result in results], best.median, worst),
                expected_best=expected_best_of_k([min(value, worst) for result in results for value in result.values]),
                recipe=tuple(
                    (name, value) for name, value in axes(runs[0]).items() if name not in (*tuned, "optimizer")
                ),
            )
        )
    return Tuning(sweep.parent_run_id, chosen_metric, worst, tuple(arms))


def _order(setting: tuple[tuple[str, Any], ...]) -> tuple:
    return tuple(str(value) if not isinstance(value, int | float) else value for _name, value in setting)


def _sensitivity(medians: Sequence[float], best: float, worst: float) -> float | None:
    if math.isinf(best):
        return None
    cap = _log10(worst)
    return sum(min(_log10(median), cap) - _log10(best) for median in medians) / len(medians)


def expected_best_of_k(values: Sequence[float]) -> tuple[float, ...]:
    """E[min of k values drawn without replacement] for k = 1..N (Tang et al. 2020's unbiased estimator of
    Dodge et al. 2019's expected validation performance): sum_i v_(i) C(N-i, k-1) / C(N, k), v sorted."""
    ordered = sorted(values)
    n = len(ordered)
    curve = []
    for k in range(1, n + 1):
        total = math.comb(n, k)
        curve.append(
            math.fsum(
                value * math.comb(n - i, k - 1) / total for i, value in enumerate(ordered, start=1) if n - i >= k - 1
            )
        )
    return tuple(curve)


def tuning(sweep: SweepRecord, metric: str | None = None) -> pd.DataFrame:
    """Per arm of a tuning sweep: the chosen setting, its tuning metric, sensitivity and divergence."""
    import pandas as pd

    result = tune(sweep, metric)
    return pd.DataFrame([_tuning_record(arm, result.metric) for arm in result.arms])


def _tuning_record(arm: ArmTuning, metric: Metric) -> dict[str, Any]:
    return {
        "arm": arm.arm,
        "chosen": arm.chosen_name,
        **{name: value for name, value in arm.chosen},
        "tuning_metric": metric.name,
        "median": arm.median,
        "settings": len(arm.settings),
        "seeds": len(arm.seeds),
        "diverged_share": arm.diverged_share,
        "sensitivity": arm.sensitivity,
        "expected_best_of_1": arm.expected_best[0] if arm.expected_best else None,
        "expected_best_of_all": arm.expected_best[-1] if arm.expected_best else None,
    }


# ---------------------------------------------------------------------------------------------------------
# Confirmation: the chosen settings on fresh seeds


def confirmation_cells(result: Tuning, arms: Sequence[str] | None = None) -> list[ArmTuning]:
    """The arms to confirm (every arm, or those named), each with its chosen setting."""
    known = {arm.arm: arm for arm in result.arms}
    if arms:
        unknown = [name for name in arms if name not in known]
        if unknown:
            raise VerdictError(f"unknown arm {unknown[0]!r}: the arms of sweep {result.sweep} are {', '.join(known)}")
        return [known[name] for name in dict.fromkeys(arms)]
    return list(result.arms)


def check_armed(sweep: SweepRecord, arms: Iterable[str]) -> None:
    """Each arm to confirm must have a cell where a seed finished without diverging: an arm with none has no
    setting to confirm."""
    finished = {arm_of(run) for run in sweep.runs if not run.diverged}
    for arm in dict.fromkeys(arms):
        if arm not in finished:
            raise VerdictError(
                f"arm {arm} has no finished cell in sweep {sweep.parent_run_id} (every run diverged, failed or "
                "is missing): finish its cells with `tinytrain sweep`, or leave it out with --arm"
            )


def check_fresh(seeds: Iterable[int], tuning_seeds: Iterable[int]) -> None:
    """Confirmation seeds must be disjoint from the tuning seeds: a chosen setting is not judged on the seeds
    that chose it."""
    overlap = sorted(set(seeds) & set(tuning_seeds))
    if overlap:
        which = (
            f"seed {overlap[0]} was a tuning seed"
            if len(overlap) == 1
            else (f"seeds {', '.join(map(str, overlap))} were tuning seeds")
        )
        raise VerdictError(f"{which}: confirm on fresh seeds (--first-seed {max(tuning_seeds) + 1} or above)")


def fresh_seeds(count: int, tuning_seeds: Iterable[int], first: int | None = None) -> tuple[int, ...]:
    """`count` seeds from `first` (default: one past the largest tuning seed), refused if any was a tuning seed."""
    tuning_seeds = tuple(tuning_seeds)
    start = max(tuning_seeds, default=-1) + 1 if first is None else first
    seeds = tuple(range(start, start + count))
    check_fresh(seeds, tuning_seeds)
    return seeds


# ---------------------------------------------------------------------------------------------------------
# The verdict


@dataclass(frozen=True)
class ArmVerdict:
    """One arm on the confirmation seeds, against the best arm."""

    arm: str
    setting: str
    seeds: int
    diverged: int
    median: float  # of the reporting metric (lower is better; +inf: the median seed diverged)
    ci_low: float | None  # 95 % percentile bootstrap interval of the median (None with one seed)
    ci_high: float | None
    best: bool = False
    p_value: float | None = None  # Wilcoxon against the best, Holm-corrected over the arms
    p_raw: float | None = None  # uncorrected
    p_improvement: float | None = None  # P(the best ends lower on a seed), ties half
    pi_low: float | None = None
    pi_high: float | None = None
    standing: str = ""  # best, worse, better, tied, diverged, or — (no shared seed)


@dataclass(frozen=True)
class Verdict:
    sweep: str  # the confirmation sweep's parent run id
    tuning_sweep: str | None
    metric: Metric
    arms: tuple[ArmVerdict, ...]  # the best first, then by median
    sentences: tuple[str, ...]  # one per other arm, quotable

    @property
    def best(self) -> ArmVerdict:
        return self.arms[0]

    @property
    def separated(self) -> bool:
        """Whether the best differs from every other arm at Holm-corrected p < ALPHA."""
        return all(arm.p_value is not None and arm.p_value < stats.ALPHA for arm in self.arms[1:])

    @property
    def seeds(self) -> int:
        return max((arm.seeds for arm in self.arms), default=0)


def judge(
    sweep: SweepRecord,
    metric: str | None = None,
    tuned: Sequence[str] = TUNED,
    axes: Callable[[CellRun], dict] = run_axes,
) -> Verdict:
    """The verdict on a confirmation sweep: per arm the reporting metric's median [95 % CI] over seeds, each
    arm paired by seed against the best (Wilcoxon, Holm over the arms) and the best's probability of improvement."""
    if not sweep.runs:
        raise VerdictError(f"sweep {sweep.parent_run_id} has no finished run to judge")
    chosen = pick_metric(sweep.runs, REPORTING_METRICS, metric)
    groups: dict[str, list[CellRun]] = {}
    for run in sweep.runs:
        groups.setdefault(arm_of(run, tuned, axes), []).append(run)
    as_values = {
        arm: [replace(run, final_loss=_plain(chosen.value(run))) for run in runs] for arm, runs in groups.items()
    }
    summaries = {arm: _arm_summary(arm, runs, chosen, tuned, axes) for arm, runs in groups.items()}
    order = sorted(summaries.values(), key=lambda arm: (arm.median, arm.arm))
    best = order[0]
    others = order[1:]
    paired = [stats.paired(as_values[arm.arm], as_values[best.arm]) for arm in others]
    corrected = stats.holm([pair.p_value for pair in paired])
    arms = [replace(best, best=True, standing="best")]
    for arm, pair, p_value in zip(others, paired, corrected, strict=True):
        improvement = _improvement(as_values[arm.arm], as_values[best.arm])
        arms.append(
            replace(
                arm,
                p_value=p_value,
                p_raw=pair.p_value,
                p_improvement=improvement[0],
                pi_low=improvement[1],
                pi_high=improvement[2],
                standing=_standing(arm, pair, p_value),
            )
        )
    sentences = tuple(sentence(arms[0], arm, chosen) for arm in arms[1:])
    return Verdict(sweep.parent_run_id, sweep.confirms, chosen, tuple(arms), sentences)


def _plain(value: float) -> float:
    """A value for stats.paired, which reads a run's final_loss: a diverged run is flagged by its outcome."""
    return value if math.isfinite(value) else math.nan


def _arm_summary(
    arm: str, runs: list[CellRun], metric: Metric, tuned: Sequence[str], axes: Callable[[CellRun], dict]
) -> ArmVerdict:
    import numpy as np

    settings = {setting_name(setting_of(run, tuned, axes)) for run in runs}
    logs = np.array([stats.LOG10_DIVERGED if run.diverged else _log10(metric.value(run)) for run in runs])
    median = float(np.median(logs))
    finished = [log for log, run in zip(logs, runs, strict=True) if not run.diverged]
    ceiling = max(finished, default=-math.inf)
    low = high = None
    if logs.size > 1:
        low, high = _bootstrap(logs, np.median)
    return ArmVerdict(
        arm=arm,
        setting=" / ".join(sorted(settings)),
        seeds=len(runs),
        diverged=sum(run.diverged for run in runs),
        median=_from_log(median, ceiling),
        ci_low=None if low is None else _from_log(low, ceiling),
        ci_high=None if high is None else _from_log(high, ceiling),
    )


def _from_log(value: float, ceiling: float) -> float:
    """A log10 median (or bound) back as a value; above the largest finite log of the arm it was pulled there
    by a diverged seed (coded LOG10_DIVERGED, or halfway to it between two middle seeds): +inf, diverged."""
    return math.inf if value > ceiling else 10**value


def _bootstrap(values, statistic) -> tuple[float, float]:
    """The 95 % percentile bootstrap interval of a statistic, from a generator seeded with BOOTSTRAP_SEED."""
    import numpy as np
    from scipy import stats as scipy_stats

    if np.all(values == values[0]):  # every resample gives the same value (scipy would warn of degeneracy)
        value = float(statistic(values))
        return value, value
    interval = scipy_stats.bootstrap(
        (values,),
        statistic,
        n_resamples=stats.BOOTSTRAP_RESAMPLES,
        confidence_level=stats.CONFIDENCE,
        method="percentile",
        rng=np.random.default_rng(stats.BOOTSTRAP_SEED),
    ).confidence_interval
    return float(interval.low), float(interval.high)


def _improvement(arm: list[CellRun], best: list[CellRun]) -> tuple[float | None, float | None, float | None]:
    """P(the best ends lower than the arm on a shared seed), ties half, with its bootstrap interval over seeds."""
    import numpy as np

    def by_seed(runs: list[CellRun]) -> dict[int, float]:
        return {run.seed: stats.LOG10_DIVERGED if run.diverged else stats.log10_loss(run.final_loss) for run in runs}

    ours, theirs = by_seed(arm), by_seed(best)
    seeds = sorted(set(ours) & set(theirs))
    if not seeds:
        return None, None, None
    scores = np.array([1.0 if theirs[s] < ours[s] else 0.5 if theirs[s] == ours[s] else 0.0 for s in seeds])
    value = float(scores.mean())
    if scores.size < 2:
        return value, None, None
    low, high = _bootstrap(scores, np.mean)
    return value, low, high


def _standing(arm: ArmVerdict, pair: stats.Paired, p_value: float | None) -> str:
    if arm.seeds and arm.diverged == arm.seeds:
        return "diverged"  # never "tied", whatever the test says with few seeds
    if p_value is None:
        return "—"
    if p_value >= stats.ALPHA:
        return "tied"
    return "worse" if (pair.p_better or 0) < 0.5 else "better"


def format_p(p: float) -> str:
    return "p < 0.001" if p < 0.001 else f"p = {p:.2g}"


def sentence(best: ArmVerdict, arm: ArmVerdict, metric: Metric) -> str:
    """What the paired test says of an arm against the best, as a reader can quote it."""
    seeds = f"{min(arm.seeds, best.seeds)} seeds"
    if arm.p_value is None:
        return f"{best.arm} and {arm.arm} share no seed: nothing to compare."
    diverged = f" ({arm.arm} diverged at every seed)" if arm.standing == "diverged" else ""
    if arm.p_value < stats.ALPHA:
        winner, loser = (best.arm, arm.arm) if arm.standing != "better" else (arm.arm, best.arm)
        return f"{winner} is better than {loser} on the {metric.label}, {format_p(arm.p_value)}, {seeds}{diverged}"
    p_text = format_p(arm.p_value)
    return f"{best.arm} and {arm.arm} cannot be told apart on the {metric.label} with {seeds} ({p_text}){diverged}"


def headline(result: Verdict) -> str:
    """One line for the whole verdict."""
    if len(result.arms) == 1:
        return f"Only {result.best.arm} was confirmed: nothing to compare it with."
    if result.separated:
        worst_p = max(arm.p_value for arm in result.arms[1:] if arm.p_value is not None)
        return (
            f"{result.best.arm} is better than every other arm on the {result.metric.label} "
            f"(Holm-corrected {format_p(worst_p).replace('p = ', 'p <= ')}, {result.seeds} seeds)."
        )
    tied = [arm.arm for arm in result.arms[1:] if arm.standing == "tied"]
    if tied:
        return (
            f"{result.best.arm} has the lowest median {result.metric.label}, but {', '.join(tied)} cannot be told "
            f"apart from it with {result.seeds} seeds."
        )
    return f"{result.best.arm} has the lowest median {result.metric.label} with {result.seeds} seeds."


VERDICT_COLUMNS = (
    "arm",
    "setting",
    "standing",
    "median",
    "ci_low",
    "ci_high",
    "p_value",
    "p_raw",
    "p_improvement",
    "pi_low",
    "pi_high",
    "seeds",
    "diverged",
    "best",
)


def verdict_records(result: Verdict) -> list[dict[str, Any]]:
    """The verdict's rows as plain records (metric and sentence on each), best first."""
    sentences = {arm.arm: text for arm, text in zip(result.arms[1:], result.sentences, strict=True)}
    return [
        {
            **{column: getattr(arm, column) for column in VERDICT_COLUMNS},
            "metric": result.metric.name,
            "sentence": sentences.get(arm.arm, ""),
        }
        for arm in result.arms
    ]


def verdict(sweep: SweepRecord, metric: str | None = None) -> pd.DataFrame:
    """The verdict on a confirmation sweep as a DataFrame, one row per arm, the best first (for the API)."""
    import pandas as pd

    return pd.DataFrame(verdict_records(judge(sweep, metric)))


# ---------------------------------------------------------------------------------------------------------
# Rendering: the tuning and the verdict as a terminal table, markdown, LaTeX, csv or json

FORMATS = ("table", "markdown", "latex", "csv", "json")


def _number(value: float | None, spec: str = ".3g") -> str:
    if value is None:
        return "—"
    return "diverged" if math.isinf(value) else format(value, spec)


def _interval(value: float | None, low: float | None, high: float | None, spec: str = ".2g") -> str:
    if value is None:
        return "—"
    if low is None or math.isinf(value):
        return _number(value, spec)
    return f"{_number(value, spec)} [{_number(low, spec)}, {_number(high, spec)}]"


def tuning_title(result: Tuning, sweep: SweepRecord) -> str:
    return f"{sweep.experiment}: arms tuned on sweep {result.sweep}, on the {result.metric.label}"


def tuning_caption(result: Tuning) -> str:
    return (
        f"Each arm's setting is the one with the lowest median {result.metric.label} over seeds (a diverged seed "
        "counts as the worst). diverged: share of its settings whose median seed diverged; sensitivity: mean "
        "decades between each setting's median and the arm's best (diverged capped at the study's worst); "
        "E[best of k]: expected best of k runs drawn from the arm's runs (Tang et al. 2020's unbiased form)."
    )


def render_tuning(result: Tuning, output_format: str = "table", title: str = "", width: int | None = None) -> str:
    caption = tuning_caption(result)
    if output_format == "json":
        document = {
            "title": title,
            "caption": caption,
            "metric": result.metric.name,
            "rows": [
                {**_tuning_record(arm, result.metric), "expected_best": [_finite(v) for v in arm.expected_best]}
                for arm in result.arms
            ],
        }
        return json.dumps(_json_safe(document), indent=2) + "\n"
    if output_format == "csv":
        records = [_tuning_record(arm, result.metric) for arm in result.arms]
        header = list(records[0]) if records else ["arm"]
        rows = [[_raw(record.get(column)) for column in header] for record in records]
        return tables.csv_text(header, rows, title, caption)
    header = (
        "arm",
        "chosen",
        f"{result.metric.label} median",
        "settings",
        "diverged",
        "sensitivity",
        "E[best of 1]",
        "E[best of all]",
        "seeds",
    )
    rows = [
        (
            arm.arm,
            arm.chosen_name,
            _number(arm.median),
            str(len(arm.settings)),
            f"{arm.diverged_share:.0%}",
            _number(arm.sensitivity, ".2f"),
            _number(arm.expected_best[0] if arm.expected_best else None),
            _number(arm.expected_best[-1] if arm.expected_best else None),
            str(len(arm.seeds)),
        )
        for arm in result.arms
    ]
    return _render(header, rows, {2, 3, 4, 5, 6, 7, 8}, title, caption, output_format, width, keep=(0, 1, 2))


def verdict_title(result: Verdict, sweep: SweepRecord) -> str:
    tuned = f", tuned on sweep {result.tuning_sweep}" if result.tuning_sweep else ""
    return (
        f"{sweep.experiment}: verdict on sweep {result.sweep}{tuned}, {result.metric.label} over {result.seeds} "
        "fresh seeds"
    )


def verdict_caption(result: Verdict) -> str:
    return (
        f"{headline(result)} Median and 95% bootstrap CI of the {result.metric.label} over seeds (a diverged seed "
        "counts as the worst); p: two-sided Wilcoxon signed-rank against the best, paired by seed on log10 "
        "values, Holm-corrected over the arms; P(best better): share of seeds where the best ends lower (ties "
        "half), with its 95% bootstrap CI."
    )


def render_verdict(result: Verdict, output_format: str = "table", title: str = "", width: int | None = None) -> str:
    """The verdict as text; the table formats end with the quotable sentences."""
    caption = verdict_caption(result)
    records = verdict_records(result)
    if output_format == "json":
        document = {"title": title, "caption": caption, "metric": result.metric.name, "rows": records}
        return json.dumps(_json_safe(document), indent=2) + "\n"
    if output_format == "csv":
        header = [*VERDICT_COLUMNS, "metric", "sentence"]
        rows = [[_raw(record[column]) for column in header] for record in records]
        return tables.csv_text(header, rows, title, caption)
    header = (
        "arm",
        "setting",
        f"{result.metric.label} median [95% CI]",
        "vs best",
        "p (Holm)",
        "P(best better) [95% CI]",
        "seeds",
        "diverged",
    )
    rows = [
        (
            arm.arm,
            arm.setting,
            _interval(arm.median, arm.ci_low, arm.ci_high),
            arm.standing,
            _number(arm.p_value, ".2g"),
            _interval(arm.p_improvement, arm.pi_low, arm.pi_high, ".2f"),
            str(arm.seeds),
            str(arm.diverged),
        )
        for arm in result.arms
    ]
    sentences = " ".join(f"{text}." for text in result.sentences)
    text = _render(header, rows, {2, 4, 5, 6, 7}, title, caption, output_format, width, keep=(0, 2, 3, 4, 5))
    if output_format == "latex" or not sentences:
        return text
    if output_format == "table" and width is not None:
        return text + "\n" + "\n".join(tables.wrap(sentences, width)) + "\n"
    return text + "\n" + sentences + "\n"


def _render(header, rows, right, title, caption, output_format, width, keep) -> str:
    if output_format == "table":
        return tables.terminal_table(header, rows, right, title, caption, width, keep=keep)
    if output_format == "markdown":
        return tables.markdown(header, rows, right, title, caption)
    if output_format == "latex":
        return tables.latex(header, rows, right, title, caption)
    raise ValueError(f"unknown format {output_format!r}: use one of {', '.join(FORMATS)}")


def _finite(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else value


def _json_safe(value: Any) -> Any:
    """Infinity (a diverged median) has no json: it becomes the string "diverged"."""
    if isinstance(value, float) and math.isinf(value):
        return "diverged"
    if isinstance(value, dict):
        return {key: _json_safe(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(item) for item in value]
    return value


def _raw(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return "diverged" if math.isinf(value) else repr(value)
    return str(value)

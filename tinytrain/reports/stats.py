"""The numbers behind `compare`: per cell over seeds, and paired by seed against a baseline cell.

Final losses live on a log scale (1e-17 to 1e2 in the default sweep), so a cell's final losses are
summarised as log10 values: their median, their interquartile mean (scipy.stats.trim_mean, a quarter cut
from each end) and a 95% bootstrap interval of the median (scipy.stats.bootstrap, percentile method, a
generator seeded with BOOTSTRAP_SEED for every cell: the same store gives the same interval in any
process). They are reported back as losses (10 ** value). Diverged seeds are left out of these and counted.

Two cells that share a seed start from the same initial weights, so cells are compared paired by seed:
`p_better` is the fraction of shared seeds where the cell ends lower than the baseline (ties count half),
and `p_value` a two-sided Wilcoxon signed-rank test (scipy.stats.wilcoxon) on the paired differences of
log10 final losses, Holm-corrected over the cells of the table. In the paired numbers a diverged run
counts as the largest float (as MLflow stores an infinite loss): worse than any finished run, tied with
another diverged one.

What the test can and cannot say, decided here once:
- zero differences (a seed where both cells end at the same loss) carry no sign and are dropped
  (zero_method="wilcox"); when every difference is zero the cells are indistinguishable: p = 1.
- with n non-zero pairs the smallest two-sided exact p is 2 / 2**n: 0.25 at 3 seeds, 0.0625 at 5,
  0.03125 at 6. Below 6 seeds no cell can ever be told apart from another at 0.05, and Holm's correction
  over m cells needs 2 / 2**n < 0.05 / m, about 10 seeds for the 14 other cells of the default grid.
- a cell that shares no seed with the baseline gets no p-value, and is left out of the correction.

scipy and numpy are imported where they are used, so that `tinytrain --help` stays instant.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from tinytrain.results import LOSS_FLOOR, TARGET, log10_loss, steps_to_target  # noqa: F401 - stats' own names

if TYPE_CHECKING:
    from tinytrain.tracking import CellRun

ALPHA = 0.05  # corrected p-values at or above it: cannot be told apart
BOOTSTRAP_SEED = 0
BOOTSTRAP_RESAMPLES = 9999
CONFIDENCE = 0.95
LOG10_DIVERGED = math.log10(sys.float_info.max)  # a diverged run in the paired comparison


@dataclass(frozen=True)
class CellStats:
    """A cell's final losses over its finished seeds (None without one; the interval needs two) and its
    time to target over all its seeds (a diverged seed counts as never reaching it)."""

    median: float | None  # 10 ** median(log10 final_loss)
    iqm: float | None  # 10 ** interquartile mean of log10 final_loss
    ci_low: float | None  # the 95% bootstrap interval of the median, as losses
    ci_high: float | None
    steps_to_target: float | None  # median over seeds; None when the median seed never reached the target
    not_reached: int  # seeds that never reached the target (diverged ones included)


def cell_stats(runs: Sequence[CellRun], target: float = TARGET) -> CellStats:
    """The statistics of one cell from its runs (losses needed for the time to target)."""
    import numpy as np
    from scipy import stats

    logs = np.array([log10_loss(run.final_loss) for run in runs if not run.diverged])
    median = iqm = low = high = None
    if logs.size:
        median, iqm = float(np.median(logs)), float(stats.trim_mean(logs, 0.25))
    if logs.size > 1:
        if np.all(logs == logs[0]):  # every resample has the same median (scipy would warn of degeneracy)
            low = high = float(logs[0])
        else:
            interval = stats.bootstrap(
                (logs,),
                np.median,
                n_resamples=BOOTSTRAP_RESAMPLES,
                confidence_level=CONFIDENCE,
                method="percentile",
                rng=np.random.default_rng(BOOTSTRAP_SEED),
            ).confidence_interval
            low, high = float(interval.low), float(interval.high)
    reached = [None if run.diverged else steps_to_target(run.losses, target) for run in runs]
    steps = [math.inf if step is None else step for step in reached]
    median_steps = float(np.median(steps)) if steps else math.inf
    return CellStats(
        median=_loss(median),
        iqm=_loss(iqm),
        ci_low=_loss(low),
        ci_high=_loss(high),
        steps_to_target=median_steps if math.isfinite(median_steps) else None,
        not_reached=sum(step is None for step in reached),
    )


def _loss(log_value: float | None) -> float | None:
    return None if log_value is None else 10**log_value


@dataclass(frozen=True)
class Paired:
    """A cell against the baseline over the seeds both ran."""

    seeds: int  # shared seeds
    p_better: float | None  # fraction of shared seeds where the cell ends lower (ties half)
    p_value: float | None  # two-sided Wilcoxon signed-rank, uncorrected


def paired(cell: Iterable[CellRun], baseline: Iterable[CellRun]) -> Paired:
    """Compare a cell with the baseline seed by seed, on log10 final losses (a diverged run: the worst)."""
    from scipy import stats

    def by_seed(runs: Iterable[CellRun]) -> dict[int, float]:
        return {run.seed: LOG10_DIVERGED if run.diverged else log10_loss(run.final_loss) for run in runs}

    ours, theirs = by_seed(cell), by_seed(baseline)
    seeds = sorted(set(ours) & set(theirs))
    if not seeds:
        return Paired(0, None, None)
    differences = [ours[seed] - theirs[seed] for seed in seeds]
    p_better = sum(1.0 if d < 0 else 0.5 if d == 0 else 0.0 for d in differences) / len(seeds)
    if not any(differences):
        return Paired(len(seeds), p_better, 1.0)  # identical losses: nothing tells them apart
    p_value = float(stats.wilcoxon(differences, zero_method="wilcox", alternative="two-sided").pvalue)
    return Paired(len(seeds), p_better, p_value)


def worse_p(cell: Iterable[CellRun], baseline: Iterable[CellRun]) -> tuple[int, float | None]:
    """(shared seeds, p) of a one-sided Wilcoxon signed-rank test that the cell ends worse than the baseline,
    seed by seed on log10 final losses (a diverged run: the worst), as Optuna's WilcoxonPruner tests a trial
    against the best one; p None without shared seeds, 1.0 when every pair is equal."""
    from scipy import stats

    def by_seed(runs: Iterable[CellRun]) -> dict[int, float]:
        return {run.seed: LOG10_DIVERGED if run.diverged else log10_loss(run.final_loss) for run in runs}

    ours, theirs = by_seed(cell), by_seed(baseline)
    seeds = sorted(set(ours) & set(theirs))
    differences = [ours[seed] - theirs[seed] for seed in seeds]
    if not seeds:
        return 0, None
    if not any(differences):
        return len(seeds), 1.0
    return len(seeds), float(stats.wilcoxon(differences, zero_method="wilcox", alternative="greater").pvalue)


def holm(p_values: Sequence[float | None]) -> list[float | None]:
    """Holm's step-down correction of a family of p-values (None: not tested, left out of the family).

    Sorted ascending, the i-th smallest (from 0) of m is multiplied by m - i, capped at 1, and made no
    smaller than the corrected value before it, so that the order is kept.
    """
    tested = sorted((p, index) for index, p in enumerate(p_values) if p is not None)
    corrected: list[float | None] = [None] * len(p_values)
    running = 0.0
    for rank, (p, index) in enumerate(tested):
        running = max(running, min(1.0, (len(tested) - rank) * p))
        corrected[index] = running
    return corrected

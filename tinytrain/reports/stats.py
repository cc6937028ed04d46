"""The numbers behind `compare`: per cell over seeds, and paired by seed against a baseline cell.

Final losses live on a log scale (1e-17 to 1e2 in the default sweep), so a cell's final losses are
summarised as log10 values: their median, their interquartile mean (scipy.stats.trim_mean, a quarter cut
from each end) and a 95% bootstrap interval of the median (scipy.stats.bootstrap, percentile method, a
generator seeded with BOOTSTRAP_SEED for every cell: the same store gives the same interval in any
process). They are reported back as losses (10 ** value). Diverged seeds are left out of these and counted.
The cells of a sweep are bootstrapped together (cells_stats): scipy draws one set of resample indices per call
and applies it to every cell of the call, so each cell's interval is the one a call of its own with the same
seed gives, number for number (a test holds them equal); the median of each resample is taken by sorting,
which gives np.median's value bit for bit and beats its partition on rows of a few dozen seeds.

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
    import numpy as np

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
    return cells_stats([runs], target)[0]


def cells_stats(cells: Sequence[Sequence[CellRun]], target: float = TARGET) -> list[CellStats]:
    """cell_stats of each cell, the bootstraps of cells with as many finished seeds made together."""
    import numpy as np
    from scipy import stats

    logs = [np.array([log10_loss(run.final_loss) for run in runs if not run.diverged]) for runs in cells]
    intervals = _median_intervals(logs)
    numbers = []
    for runs, values, interval in zip(cells, logs, intervals, strict=True):
        median = iqm = None
        if values.size:
            median, iqm = float(np.median(values)), float(stats.trim_mean(values, 0.25))
        low, high = interval
        reached = [None if run.diverged else steps_to_target(run.losses, target) for run in runs]
        steps = [math.inf if step is None else step for step in reached]
        median_steps = float(np.median(steps)) if steps else math.inf
        numbers.append(
            CellStats(
                median=_loss(median),
                iqm=_loss(iqm),
                ci_low=_loss(low),
                ci_high=_loss(high),
                steps_to_target=median_steps if math.isfinite(median_steps) else None,
                not_reached=sum(step is None for step in reached),
            )
        )
    return numbers


BOOTSTRAP_VALUES = 1_000_000  # resampled values one bootstrap call holds at most (8 MB): cells per call


def _median_intervals(samples: Sequence[np.ndarray]) -> list[tuple[float | None, float | None]]:
    """The 95% percentile-bootstrap interval of the median of each sample ((None, None) below two values), by
    scipy.stats.bootstrap with a generator seeded with BOOTSTRAP_SEED. Samples of one size are stacked and
    bootstrapped in one call (a chunk at a time): scipy draws the resample indices once per call, for every
    row alike, so each row gets what a call of its own gives."""
    import numpy as np
    from scipy import stats

    intervals: list[tuple[float | None, float | None]] = [(None, None)] * len(samples)
    by_size: dict[int, list[int]] = {}
    for index, sample in enumerate(samples):
        if sample.size < 2:
            continue
        if np.all(sample == sample[0]):  # every resample has the same median (scipy would warn of degeneracy)
            intervals[index] = (float(sample[0]), float(sample[0]))
        else:
            by_size.setdefault(sample.size, []).append(index)
    for size, indices in by_size.items():
        per_call = max(1, BOOTSTRAP_VALUES // (BOOTSTRAP_RESAMPLES * size))
        for start in range(0, len(indices), per_call):
            chunk = indices[start : start + per_call]
            data = np.stack([samples[index] for index in chunk])
            interval = stats.bootstrap(
                (data,),
                np.median if np.isnan(data).any() else _sorted_median,
                n_resamples=BOOTSTRAP_RESAMPLES,
                confidence_level=CONFIDENCE,
                method="percentile",
                axis=-1,
                rng=np.random.default_rng(BOOTSTRAP_SEED),
            ).confidence_interval
            for index, low, high in zip(chunk, interval.low.tolist(), interval.high.tolist(), strict=True):
                intervals[index] = (low, high)
    return intervals


def _sorted_median(values: np.ndarray, axis: int = -1) -> np.ndarray:
    """np.median along an axis, bit for bit (the middle value, or the mean of the middle two as (a + b) / 2),
    by a full sort, which beats np.median's partition on short rows; NaN-free values only."""
    import numpy as np

    ordered = np.sort(np.moveaxis(values, axis, -1), axis=-1)
    size = ordered.shape[-1]
    middle = ordered[..., size // 2]
    if size % 2:
        return middle
    return (ordered[..., size // 2 - 1] + middle) / 2


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
    return paired_each([cell], baseline)[0]


def paired_each(cells: Sequence[Iterable[CellRun]], baseline: Iterable[CellRun]) -> list[Paired]:
    """paired() of each cell against one baseline. The Wilcoxon tests of cells with as many non-tied pairs are
    made in one scipy.stats.wilcoxon call, row by row: scipy picks one method for a call (exact without zero
    differences and tied magnitudes, else the normal approximation above 13 pairs), so a call only holds rows
    for which a call of their own picks the same one; any other row is a call of its own."""
    import numpy as np
    from scipy import stats

    def by_seed(runs: Iterable[CellRun]) -> dict[int, float]:
        return {run.seed: LOG10_DIVERGED if run.diverged else log10_loss(run.final_loss) for run in runs}

    theirs = by_seed(baseline)
    results: list[Paired | None] = []
    tests: dict[tuple[int, str], list[tuple[int, list[float]]]] = {}  # (pairs, method) -> (index, differences)
    for index, cell in enumerate(cells):
        ours = by_seed(cell)
        seeds = sorted(set(ours) & set(theirs))
        if not seeds:
            results.append(Paired(0, None, None))
            continue
        differences = [ours[seed] - theirs[seed] for seed in seeds]
        p_better = sum(1.0 if d < 0 else 0.5 if d == 0 else 0.0 for d in differences) / len(seeds)
        if not any(differences):
            results.append(Paired(len(seeds), p_better, 1.0))  # identical losses: nothing tells them apart
            continue
        results.append(Paired(len(seeds), p_better, None))
        magnitudes = [abs(d) for d in differences if d != 0]
        plain = len(magnitudes) == len(differences) == len(set(magnitudes))  # no zero, no tie
        method = "exact" if plain else "approximate" if len(differences) > 13 else f"alone {index}"
        tests.setdefault((len(differences), method), []).append((index, differences))
    for rows in tests.values():
        p_values = stats.wilcoxon(
            np.array([differences for _index, differences in rows]),
            zero_method="wilcox",
            alternative="two-sided",
            axis=-1,
        ).pvalue
        for (index, _differences), p_value in zip(rows, np.atleast_1d(p_values).tolist(), strict=True):
            found = results[index]
            results[index] = Paired(found.seeds, found.p_better, float(p_value))
    return results


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

"""The pictures of a fair comparison: the tuning metric against the learning rate, one line per arm (the picture
optimizer papers lead with), and each arm's expected best after k tuning trials.

matplotlib and numpy are imported where they are used, so that `tinytrain --help` stays instant.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from tinytrain.reports.verdict import Tuning
    from tinytrain.tracking.sweep_records import SweepRecord

BAND = (2.5, 97.5)  # percentiles of the seeds: the band holds the central 95 % of them


def _figure(width: float = 6.4, height: float = 4.2) -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def plot_metric_against_lr(tuning: Tuning, sweep: SweepRecord) -> Figure:
    """The tuning metric against lr on log axes: per arm the median over seeds with a band of the central 95 %
    of seeds (finished ones), the chosen setting circled, a lr whose median seed diverged marked x at the top."""
    import numpy as np

    figure = _figure()
    ax = figure.subplots()
    colours = _arm_colours([arm.arm for arm in tuning.arms])
    any_diverged = False
    for index, arm in enumerate(tuning.arms):
        colour = colours[arm.arm]
        points = sorted((dict(result.setting)["lr"], result) for result in arm.settings)
        kept = [(lr, result) for lr, result in points if math.isfinite(result.median)]
        lrs = [lr for lr, _result in kept]
        medians = [result.median for _lr, result in kept]
        low, high = [], []
        for _lr, result in kept:
            finite = np.array([value for value in result.values if math.isfinite(value)])
            band = np.percentile(finite, BAND)
            low.append(band[0])
            high.append(band[1])
        if kept:
            ax.fill_between(lrs, low, high, color=colour, alpha=0.2, linewidth=0)
            ax.plot(lrs, medians, marker="o", markersize=4, color=colour, label=f"{arm.arm} ({arm.chosen_name})")
            ax.plot([arm.lr], [arm.median], marker="o", markersize=11, fillstyle="none", color=colour)
        gone = [lr for lr, result in points if math.isinf(result.median)]
        if gone:  # at the top, in the arm's colour, one row per arm so that arms diverging at one lr stay apart
            any_diverged = True
            ax.plot(
                gone,
                [0.97 - 0.035 * index] * len(gone),
                linestyle="none",
                marker="x",
                markersize=7,
                color=colour,
                transform=ax.get_xaxis_transform(),
            )
    if any_diverged:
        ax.plot([], [], linestyle="none", marker="x", color="black", label="diverged (median seed), at the top")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("learning rate (log scale)")
    ax.set_ylabel(f"{tuning.metric.label} (log scale)")
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize="small", loc="best")
    seeds = max((len(arm.seeds) for arm in tuning.arms), default=0)
    ax.set_title(
        f"{sweep.experiment}: {tuning.metric.label} against lr, median over {seeds} seeds\n"
        "(band: central 95 % of seeds; circled: the chosen lr)",
        fontsize="medium",
    )
    return figure


def plot_expected_best(tuning: Tuning, sweep: SweepRecord) -> Figure:
    """Each arm's expected best tuning metric after k trials drawn from its runs (Tang et al. 2020)."""
    figure = _figure()
    ax = figure.subplots()
    colours = _arm_colours([arm.arm for arm in tuning.arms])
    for arm in tuning.arms:
        k = range(1, len(arm.expected_best) + 1)
        ax.plot(k, arm.expected_best, marker="o", markersize=3, color=colours[arm.arm], label=arm.arm)
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_yscale("log")
    ax.set_xlabel("tuning trials k (runs drawn from the arm's lrs and seeds)")
    ax.set_ylabel(f"expected best {tuning.metric.label}")
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize="small", loc="best")
    ax.set_title(
        f"{sweep.experiment}: expected best {tuning.metric.label} after k trials\n(a diverged run counts as the "
        "study's worst)",
        fontsize="medium",
    )
    return figure


def _arm_colours(arms: list[str]) -> dict[str, tuple]:
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    return {arm: cmap(index % 10) for index, arm in enumerate(arms)}

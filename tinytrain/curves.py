"""Loss curves of a sweep: a panel per optimizer, a line per lr, the median over seeds with its spread.

matplotlib and numpy are imported where they are used, so that `tinytrain --help` stays instant.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from tinytrain.tracking.read import CellRun, SweepRecord


def plot_loss_curves(sweep: SweepRecord) -> Figure:
    """Loss against step on a log axis: a panel per optimizer, a line per lr (the median over finished
    seeds, with a min–max band). Cells whose every seed diverged get no line; the panel names them.

    Returns the Figure (drawn with the Agg canvas: no display, no pyplot state) for the caller to save.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    optimizers = list(dict.fromkeys(run.optimizer for run in sweep.runs))
    lrs = sorted({run.lr for run in sweep.runs})
    colours = _lr_colours(lrs)
    columns = min(len(optimizers), 3) or 1
    rows = math.ceil(len(optimizers) / columns) or 1
    figure = Figure(figsize=(4.6 * columns, 3.6 * rows + 0.6), layout="constrained")
    FigureCanvasAgg(figure)
    # a shared y axis makes panels comparable; x stays per panel so that each one keeps its step labels
    axes = figure.subplots(rows, columns, sharey=True, squeeze=False).ravel()
    for ax in axes[len(optimizers):]:
        figure.delaxes(ax)
    seeds = len({run.seed for run in sweep.runs})
    for index, (ax, optimizer) in enumerate(zip(axes, optimizers, strict=False)):
        diverged_everywhere = []
        for lr in lrs:
            cell = [run for run in sweep.runs if run.optimizer == optimizer and run.lr == lr]
            if cell and not _draw_cell(ax, cell, f"{lr:g}", colours[lr]):
                diverged_everywhere.append(f"{lr:g}")
        ax.set_yscale("log")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, steps=[1, 2, 2.5, 5, 10]))
        ax.set_title(optimizer)
        ax.grid(True, which="major", alpha=0.3)
        ax.set_xlabel("step")
        if index % columns == 0:
            ax.set_ylabel("loss (MSE, log scale)")
        if ax.lines:
            ax.legend(title="lr", fontsize="small", title_fontsize="small", loc="best")
        if diverged_everywhere:
            ax.text(0.02, 0.02, f"diverged at every seed: lr {', '.join(diverged_everywhere)}",
                    transform=ax.transAxes, fontsize="small", color="firebrick")
    figure.suptitle(f"{sweep.experiment}: loss per step, median over {seeds} seed{'s' if seeds != 1 else ''} "
                    "(band: min–max)")
    return figure


def _draw_cell(ax: Any, cell: list[CellRun], lr_label: str, colour: Any) -> bool:
    """A cell's median loss curve over its finished seeds, with a min–max band; False if none finished."""
    import numpy as np

    finished = [run.losses for run in cell if not run.diverged and run.losses]
    if not finished:
        return False
    curves = np.array([curve[:min(map(len, finished))] for curve in finished])
    steps = np.arange(curves.shape[1])
    diverged = len(cell) - len(finished)
    label = lr_label + (f" ({diverged}/{len(cell)} diverged)" if diverged else "")
    ax.fill_between(steps, curves.min(axis=0), curves.max(axis=0), color=colour, alpha=0.2, linewidth=0)
    ax.plot(steps, np.median(curves, axis=0), color=colour, linewidth=1.6, label=label)
    return True


def _lr_colours(lrs: Sequence[float]) -> dict[float, Any]:
    """One colour per lr, the same in every panel, from small (light) to large (dark)."""
    from matplotlib import colormaps

    cmap = colormaps["viridis"]
    if len(lrs) == 1:
        return {lrs[0]: cmap(0.4)}
    return {lr: cmap(0.85 - 0.75 * index / (len(lrs) - 1)) for index, lr in enumerate(lrs)}


def save_figure(figure: Figure, path: str | Path) -> Path:
    """Write a figure as a PNG (creating its folder) and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120, format="png")
    return path

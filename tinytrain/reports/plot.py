"""Loss curves of a sweep: a panel per optimizer, a line per lr, the median over seeds with its spread; where
the runs measured test accuracy (digits), its panel below each loss panel.

matplotlib and numpy are imported where they are used, so that `tinytrain --help` stays instant.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from tinytrain.tracking.sweep_records import CellRun, SweepRecord

SHARED_LEGEND_ABOVE = 6  # learning rates: with more, the loss curves get one legend, not one a panel


def plot_loss_curves(sweep: SweepRecord) -> Figure:
    """Loss against step on a log axis: a panel per optimizer, a line per lr (the median over converged
    seeds, with a min–max band). Cells whose every seed diverged get no line; the panel names them. Where
    the runs measured test accuracy (digits), each loss panel has the accuracy's panel below it. Returns the
    Figure (drawn with the Agg canvas: no display, no pyplot state) for the caller to save."""
    from matplotlib.ticker import MaxNLocator

    optimizers = list(dict.fromkeys(run.arm_name for run in sweep.runs))  # an optimizer with its recipe
    lrs = sorted({run.lr for run in sweep.runs})
    colours = _lr_colours(lrs)
    accuracy = any(run.curves.get(ACCURACY_CURVE) for run in sweep.runs)
    columns = min(len(optimizers), 3) or 1
    figure, loss_axes, accuracy_axes = _panels(len(optimizers), columns, accuracy)
    # Each band added to an autoscaling panel first brings the limits of every panel that shares them up to date
    # (most of the drawing at 10,000 runs): off while the curves go in, on again when all are in, the limits are
    # computed once from the same data.
    for ax in figure.axes:
        ax.set_autoscale_on(False)
    seeds = len({run.seed for run in sweep.runs})
    # Many learning rates: one legend for the figure (the colours are the same in every panel), not one a panel,
    # which would cover the curves and cost most of the drawing at 1,000 runs and 20 lrs.
    shared_legend = len(lrs) > SHARED_LEGEND_ABOVE
    runs_by_cell: dict[tuple[str, float], list[CellRun]] = {}
    for run in sweep.runs:  # grouped once, not a scan of every run per panel and lr
        runs_by_cell.setdefault((run.arm_name, run.lr), []).append(run)
    for index, optimizer in enumerate(optimizers):
        cells = {lr: runs_by_cell.get((optimizer, lr), []) for lr in lrs}
        ax = loss_axes[index]
        diverged_everywhere = _draw_lines(ax, cells, colours, lambda run: (range(len(run.losses)), run.losses))
        ax.set_yscale("log")
        ax.set_title(optimizer.replace(" [", "\n[", 1), fontsize="medium")  # an arm's recipe on a line of its own
        if index % columns == 0:
            ax.set_ylabel("training loss (log scale)")
        notes = [f"diverged at every seed: lr {', '.join(diverged_everywhere)}"] if diverged_everywhere else []
        if shared_legend:  # the lines' labels say how many seeds diverged; with one legend a note does
            partly = [
                line.get_label().replace(" (", " ", 1).rstrip(")")
                for line in ax.lines
                if "diverged" in line.get_label()
            ]
            notes += [f"lr {', '.join(partly)}"] if partly else []
        if notes:
            ax.text(0.02, 0.02, "\n".join(notes), transform=ax.transAxes, fontsize="small", color="firebrick")
        if accuracy:
            ax = accuracy_axes[index]
            _draw_lines(ax, cells, colours, _accuracy_curve)
            ax.set_title(f"{optimizer}: test accuracy".replace(" [", "\n[", 1), fontsize="medium")
            if index % columns == 0:
                ax.set_ylabel("test accuracy")
        for ax in [loss_axes[index]] + ([accuracy_axes[index]] if accuracy else []):
            ax.xaxis.set_major_locator(MaxNLocator(integer=True, steps=[1, 2, 2.5, 5, 10]))
            ax.grid(True, which="major", alpha=0.3)
            ax.set_xlabel("step")
            if ax.lines and not shared_legend:
                ax.legend(title="lr", fontsize="small", title_fontsize="small", loc="best")
    for ax in figure.axes:
        ax.autoscale(enable=True)
    if shared_legend:
        _shared_legend(figure, lrs, colours)
    figure.suptitle(
        f"{sweep.experiment}: {'loss and test accuracy' if accuracy else 'loss'} per step, median over "
        f"{seeds} seed{'s' if seeds != 1 else ''} (band: min–max)"
    )
    return figure


def _shared_legend(figure: Figure, lrs: Sequence[float], colours: dict[float, Any]) -> None:
    """One legend of the learning rates for the whole figure, right of the panels."""
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=colours[lr], linewidth=1.6) for lr in lrs]
    figure.legend(
        handles,
        [f"{lr:g}" for lr in lrs],
        title="lr",
        fontsize="small",
        title_fontsize="small",
        loc="outside right upper",
    )


def _panels(count: int, columns: int, accuracy: bool) -> tuple[Figure, list[Any], list[Any]]:
    """The figure and its panels: one loss panel per optimizer (and its accuracy panel below it)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = math.ceil(count / columns) or 1
    per_optimizer = 2 if accuracy else 1
    figure = Figure(figsize=(4.6 * columns, 3.6 * rows * per_optimizer + 0.6), layout="constrained")
    FigureCanvasAgg(figure)
    grid = figure.subplots(rows * per_optimizer, columns, squeeze=False)
    # a shared y axis makes panels comparable; x stays per panel so that each one keeps its step labels
    loss_axes = [grid[row * per_optimizer][column] for row in range(rows) for column in range(columns)]
    accuracy_axes = (
        [grid[row * per_optimizer + 1][column] for row in range(rows) for column in range(columns)] if accuracy else []
    )
    for axes in (loss_axes, accuracy_axes):
        for ax in axes[count:]:
            figure.delaxes(ax)
        for ax in axes[1:count]:
            ax.sharey(axes[0])
    return figure, loss_axes, accuracy_axes


ACCURACY_CURVE = "test_accuracy"


def _accuracy_curve(run: CellRun) -> tuple[list[int], list[float]]:
    points = run.curves.get(ACCURACY_CURVE, ())
    return [step for step, _value in points], [value for _step, value in points]


def _draw_lines(ax, cells: dict[float, list[CellRun]], colours: dict[float, Any], curve_of) -> list[str]:
    """A line per lr (median over converged seeds, min-max band); returns the lrs where every seed diverged."""
    import numpy as np

    diverged_everywhere = []
    bands: list[tuple[Any, Any]] = []  # (polygon, colour) of each band, drawn as one collection at the end
    for lr, cell in cells.items():
        if not cell:
            continue
        converged = [curve_of(run) for run in cell if not run.diverged]
        converged = [(list(steps), list(values)) for steps, values in converged if len(values)]
        if not converged:
            diverged_everywhere.append(f"{lr:g}")
            continue
        length = min(len(values) for _steps, values in converged)
        curves = np.array([values[:length] for _steps, values in converged])
        steps = np.array(converged[0][0][:length])
        diverged = len(cell) - len(converged)
        label = f"{lr:g}" + (f" ({diverged}/{len(cell)} diverged)" if diverged else "")
        low, high = curves.min(axis=0), curves.max(axis=0)
        if np.isfinite(low).all() and np.isfinite(high).all():
            bands.append((_band(steps, low, high), colours[lr]))
        else:  # fill_between leaves gaps at non-finite values
            ax.fill_between(steps, low, high, color=colours[lr], alpha=0.2, linewidth=0)
        ax.plot(steps, np.median(curves, axis=0), color=colours[lr], linewidth=1.6, label=label)
    if bands:
        # One collection of every band, as fill_between would draw each (its polygon, its colour, in the same order
        # below every line): an artist a band is most of the drawing at 10,000 runs
        from matplotlib.collections import PolyCollection

        polygons, facecolors = zip(*bands, strict=True)
        # an array of colours, not a tuple: a tuple of two would be read as (colour, alpha)
        ax.add_collection(PolyCollection(polygons, color=np.array(facecolors), alpha=0.2, linewidths=0))
    return diverged_everywhere


def _band(steps, low, high):
    """fill_between's polygon between two finite curves: from the first step along `low`, back along `high`."""
    import numpy as np

    count = len(steps)
    points = np.empty((2 * count + 2, 2))
    points[0] = steps[0], high[0]
    points[1 : count + 1, 0], points[1 : count + 1, 1] = steps, low
    points[count + 1] = steps[-1], high[-1]
    points[count + 2 :, 0], points[count + 2 :, 1] = steps[::-1], high[::-1]
    return points


def _lr_colours(lrs: Sequence[float]) -> dict[float, Any]:
    """One colour per lr, the same in every panel, from small (light) to large (dark)."""
    from matplotlib import colormaps

    cmap = colormaps["viridis"]
    if len(lrs) == 1:
        return {lrs[0]: cmap(0.4)}
    return {lr: cmap(0.85 - 0.75 * index / (len(lrs) - 1)) for index, lr in enumerate(lrs)}


DPI = 120  # a raster figure's default resolution


def figure_format(path: str | Path, figure: Figure | None = None) -> str:
    """The format a path's suffix names (pdf, svg, png, ...); ValueError, with the formats matplotlib writes,
    for a suffix it cannot write (checked before anything is read or written)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    canvas = figure.canvas if figure is not None else FigureCanvasAgg(Figure())
    formats = canvas.get_supported_filetypes()
    suffix = Path(path).suffix.lower().removeprefix(".")
    if suffix not in formats:
        raise ValueError(
            f"--out {path}: matplotlib writes no {suffix or 'suffix-less'} files; end it in one of "
            f"{', '.join('.' + name for name in sorted(formats))}"
        )
    return suffix


def save_figure(figure: Figure, path: str | Path, dpi: float | None = None) -> Path:
    """Write a figure in the format its suffix names (pdf, svg, png, ...; creating its folder) and return the
    path. dpi: the resolution of raster formats and of raster parts in vector ones [default: DPI]."""
    from matplotlib import rcParams
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    path = Path(path)
    file_format = figure_format(path, figure)
    path.parent.mkdir(parents=True, exist_ok=True)
    plain = rcParams["savefig.bbox"] in (None, "standard") and not rcParams["savefig.transparent"]
    plain = plain and rcParams["savefig.facecolor"] == rcParams["savefig.edgecolor"] == "auto"
    if file_format == "png" and plain and type(figure.canvas) is FigureCanvasAgg:
        _save_png(figure, path, dpi or DPI)
    else:
        figure.savefig(path, dpi=dpi or DPI, format=file_format)
    return path


def _save_png(figure: Figure, path: Path, dpi: float) -> None:
    """What figure.savefig writes to a PNG file, drawn once: savefig draws a figure with a layout engine twice,
    once (not rendered) to lay it out and once to render it, where the canvas's own draw lays the figure out and
    renders it in one pass. The same bytes (a test holds them equal); the figure's dpi is put back after."""
    from matplotlib.image import imsave

    kept = figure.dpi
    figure.dpi = dpi
    try:
        figure.canvas.draw()
        imsave(path, figure.canvas.buffer_rgba(), format="png", origin="upper", dpi=dpi)
    finally:
        figure.dpi = kept

"""The loss-curve figure as a file: save_figure writes a PNG in one drawing of the figure, where matplotlib's
savefig draws it twice; the file must be the one savefig writes, byte for byte, and the figure the same after.
The figures are of hand-made sweeps: few learning rates (a legend a panel), many (one legend), accuracy panels,
diverged seeds."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tinytrain.reports import plot
from tinytrain.tracking import CellRun
from tinytrain.tracking.sweep_records import SweepRecord


def sweep(optimizers: list[str], lrs: list[float], seeds: int, steps: int, accuracy: bool = False) -> SweepRecord:
    generator = np.random.default_rng(5)
    runs = []
    for optimizer in optimizers:
        for lr in lrs:
            for seed in range(seeds):
                rate = lr * 50 * generator.uniform(0.5, 1.5)
                losses = [0.1 * math.exp(-rate * step) for step in range(steps + 1)]
                outcome = "finished"
                if generator.uniform() < lr * 3:
                    outcome, losses = "diverged", losses[: generator.integers(1, steps)] + [math.inf]
                curves = (
                    {"test_accuracy": tuple((step, float(generator.uniform())) for step in range(0, steps + 1, 5))}
                    if accuracy
                    else {}
                )
                runs.append(
                    CellRun(
                        f"{optimizer}-{lr}-{seed}",
                        "key",
                        optimizer,
                        lr,
                        seed,
                        outcome,
                        losses[0],
                        losses[-1],
                        tuple(losses),
                        curves=curves,
                    )
                )
    return SweepRecord("hand-made", "1", "parent", steps, len(runs), tuple(runs), ())


SWEEPS = {
    "default grid": lambda: sweep(["sgd", "sgd-momentum", "adam", "adamw", "rmsprop"], [1e-3, 1e-2, 1e-1], 3, 100),
    "many lrs": lambda: sweep(["sgd", "adam", "adamw", "rmsprop"], list(np.geomspace(1e-4, 0.3, 12)), 4, 10),
    "accuracy": lambda: sweep(["sgd", "adam"], [1e-3, 1e-2, 1e-1], 3, 30, accuracy=True),
    "two lrs": lambda: sweep(["sgd", "adam"], [1e-3, 1e-2], 3, 20),  # two bands a panel: two colours
    "one lr": lambda: sweep(["adam"], [1e-2], 2, 20),
}


@pytest.mark.filterwarnings("ignore:constrained_layout not applied")
@pytest.mark.parametrize("name", list(SWEEPS))
@pytest.mark.parametrize("dpi", [None, 47])
def test_save_figure_writes_the_png_savefig_writes(tmp_path, name, dpi):
    ours, theirs = plot.plot_loss_curves(SWEEPS[name]()), plot.plot_loss_curves(SWEEPS[name]())
    plot.save_figure(ours, tmp_path / "ours.png", dpi)
    theirs.savefig(tmp_path / "theirs.png", dpi=dpi or plot.DPI, format="png")
    assert (tmp_path / "ours.png").read_bytes() == (tmp_path / "theirs.png").read_bytes()
    assert ours.dpi == theirs.dpi  # the figure's own resolution is put back, as savefig puts it back
    plot.save_figure(ours, tmp_path / "again.png", dpi)  # a figure saved twice, as savefig saves it again
    theirs.savefig(tmp_path / "theirs again.png", dpi=dpi or plot.DPI, format="png")
    assert (tmp_path / "again.png").read_bytes() == (tmp_path / "theirs again.png").read_bytes()


def test_a_vector_format_and_a_changed_savefig_setting_go_through_savefig(tmp_path):
    import matplotlib

    figure = plot.plot_loss_curves(SWEEPS["default grid"]())
    assert plot.save_figure(figure, tmp_path / "curves.svg").read_text().startswith("<?xml")
    with matplotlib.rc_context({"savefig.transparent": True}):
        plot.save_figure(figure, tmp_path / "clear.png")
    from PIL import Image

    assert Image.open(tmp_path / "clear.png").getpixel((0, 0))[3] == 0  # transparent, as savefig makes it


@pytest.mark.parametrize("name", list(SWEEPS))
def test_the_bands_are_fill_betweens_polygons_in_the_lines_colours(name):
    """A panel's min-max bands are one collection: each band the polygon fill_between makes for it, in its line's
    colour at alpha 0.2, in the lines' order (drawn below them)."""
    from matplotlib.colors import to_rgba
    from matplotlib.figure import Figure

    figure = plot.plot_loss_curves(SWEEPS[name]())
    for ax in figure.axes:
        (bands,) = ax.collections
        assert len(bands.get_paths()) == len(ax.lines) == len(bands.get_facecolors()) > 0
        for line, path, colour in zip(ax.lines, bands.get_paths(), bands.get_facecolors(), strict=True):
            assert tuple(colour) == to_rgba(line.get_color(), 0.2)
            steps, median = line.get_data()
            count = len(steps)
            low, high = path.vertices[1 : count + 1, 1], path.vertices[count + 2 : 2 * count + 2, 1][::-1]
            assert (low <= median).all() and (median <= high).all()
            alone = Figure().subplots().fill_between(steps, low, high)
            assert np.array_equal(path.vertices, alone.get_paths()[0].vertices)
            assert np.array_equal(path.codes, alone.get_paths()[0].codes)

"""A sweep's per-step curves as one long table (a row per run, metric and step), for plots made elsewhere.

csv always; parquet where pyarrow is installed. pandas is imported where it is used.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd

    from tinytrain.tracking.sweep_records import SweepRecord

CURVE_FORMATS = ("csv", "parquet")
CURVE_COLUMNS = ("run_id", "optimizer", "lr", "seed", "outcome", "metric", "step", "value")


def curve_format(path: str | Path) -> str:
    """csv or parquet, from the path's suffix; ValueError otherwise, or for parquet without pyarrow."""
    suffix = Path(path).suffix.lower().removeprefix(".")
    if suffix not in CURVE_FORMATS:
        raise ValueError(f"--out {path}: curves are written as .csv or .parquet")
    if suffix == "parquet":
        import importlib.util

        if importlib.util.find_spec("pyarrow") is None:
            raise ValueError("parquet needs pyarrow (pip install pyarrow): install it, or write a .csv")
    return suffix


def curves_frame(sweep: SweepRecord) -> pd.DataFrame:
    """Every run's `loss` at each step (and the other curves it logged, e.g. test_accuracy), long format: the
    sweep read with losses."""
    import pandas as pd

    rows = []
    for run in sweep.runs:
        cell = (run.run_id, run.optimizer, run.lr, run.seed, run.outcome)
        rows += [(*cell, "loss", step, value) for step, value in enumerate(run.losses)]
        for name, points in run.curves.items():
            rows += [(*cell, name, step, value) for step, value in points]
    return pd.DataFrame(rows, columns=list(CURVE_COLUMNS))


def write_curves(sweep: SweepRecord, path: str | Path) -> tuple[Path, int]:
    """Write the curves in the format the suffix names (creating the folder); returns the path and the rows."""
    path = Path(path)
    file_format = curve_format(path)
    frame = curves_frame(sweep)
    path.parent.mkdir(parents=True, exist_ok=True)
    if file_format == "parquet":
        frame.to_parquet(path, index=False)
    else:
        frame.to_csv(path, index=False, lineterminator="\n")
    return path, len(frame)

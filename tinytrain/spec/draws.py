"""Values drawn, not listed: `lr = { log_uniform = [1e-4, 1.0], count = 20 }` in an experiment file.

The points come from a scrambled Halton sequence of scipy.stats.qmc with a fixed seed (0, or the table's
`seed`), as AlgoPerf draws its search spaces: spread more evenly than random draws, and the same on every
expansion, so the run keys, resume and `--dry-run` work as for a list. Each value is rounded to 4
significant digits (readable in run names and tables) and the list is sorted. Halton, not Sobol, because
Sobol's balance holds only for counts that are powers of two.
"""

from __future__ import annotations

import math
from typing import Any

from tinytrain.errors import ConfigError

DISTRIBUTIONS = ("log_uniform", "uniform")
SIGNIFICANT_DIGITS = 4
DEFAULT_SEED = 0


class DrawError(ConfigError):
    """A draw table that cannot give values; the message says how to write one."""


def is_draw(value: Any) -> bool:
    return isinstance(value, dict)


def is_draw_table(value: Any) -> bool:
    """A table that draws (names a distribution or a count), not one keyed by optimizer ([grid.lr])."""
    return isinstance(value, dict) and any(key in value for key in (*DISTRIBUTIONS, "count"))


def draw(where: str, table: dict[str, Any]) -> list[float]:
    """The values of a draw table such as {log_uniform = [1e-4, 1.0], count = 20}."""
    example = f"{where} = {{ log_uniform = [1e-4, 1.0], count = 20 }}"
    kinds = [name for name in DISTRIBUTIONS if name in table]
    unknown = sorted(set(table) - set(DISTRIBUTIONS) - {"count", "seed"})
    if len(kinds) != 1 or unknown:
        raise DrawError(
            f"{where} draws values with one of {', '.join(DISTRIBUTIONS)}, a count and an optional "
            f"seed, e.g. {example}; got {table!r}"
        )
    kind = kinds[0]
    bounds, count, seed = table[kind], table.get("count"), table.get("seed", DEFAULT_SEED)
    numbers = (
        isinstance(bounds, list)
        and len(bounds) == 2
        and all(isinstance(b, int | float) and not isinstance(b, bool) and math.isfinite(b) for b in bounds)
    )
    if not numbers or not bounds[0] < bounds[1] or (kind == "log_uniform" and bounds[0] <= 0):
        raise DrawError(
            f"{where}.{kind} must be [low, high] with low < high"
            f"{' and low > 0' if kind == 'log_uniform' else ''}, got {bounds!r}"
        )
    for name, value, low in (("count", count, 1), ("seed", seed, 0)):
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise DrawError(f"{where}.{name} must be an integer >= {low}, got {value!r}")
    from scipy.stats import qmc

    points = qmc.Halton(d=1, scramble=True, seed=seed).random(count)[:, 0].tolist()
    low, high = (math.log10(b) for b in bounds) if kind == "log_uniform" else bounds
    values = [low + point * (high - low) for point in points]
    if kind == "log_uniform":
        values = [10**value for value in values]
    values = sorted(float(f"{value:.{SIGNIFICANT_DIGITS}g}") for value in values)
    if len(set(values)) != len(values):
        raise DrawError(
            f"{where}: {count} values over {bounds} collide at {SIGNIFICANT_DIGITS} significant "
            "digits: draw fewer or widen the range"
        )
    return values


def describe(table: dict[str, Any]) -> str:
    """One line for the resolved experiment file: how the listed values were drawn."""
    kind = next(name for name in DISTRIBUTIONS if name in table)
    return (
        f"{kind} {table[kind]}, count {table['count']} (scrambled Halton, seed "
        f"{table.get('seed', DEFAULT_SEED)}, {SIGNIFICANT_DIGITS} significant digits)"
    )

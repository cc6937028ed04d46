"""`make bench`: the optimizer steps successive halving spends to find the full grid's best cell.

For each grid: every run trained straight to the end without a store (the full grid: its steps, and its best
cell by the median over seeds of the tuning metric), then `tinytrain sweep --budget halving` as a whole
process into a fresh SQLite store (the steps it trained, and the cell it ends on). The halving sweep passes
when it spends at most 35 % of the full grid's steps and ends on the full grid's best cell, or on one the
seeds cannot tell from it: a two-sided paired Wilcoxon signed-rank test over the seeds gives p >= 0.05 AND the
test could have separated them (with n seeds its smallest p is 2 / 2**n: below 0.05 only from 6 seeds on; with
fewer, only the same cell passes).

Steps, not seconds: the figures are counts, the same on any machine. The 1,000-run grid is the scale grid
(5 optimizers x 20 learning rates x 10 seeds) at 40 steps, where the result holds and the full grid trains
in a couple of minutes.

`tinytrain search` (TPE, sampler seed 0) searches the grid's own cells (no --space), its seeds pruned by
successive halving (--pruner seeds), with a budget of 35 % of the full grid's runs (--runs): the runs it
started, pruned trials' included, are its cost. Its best trial is compared in the same way with the full
grid's best cell, seed by seed.

Usage: python benchmarks/budget.py [--grid default|1k ...] [--limit 0.35] [--skip-search]
"""

from __future__ import annotations

import argparse
import math
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GRIDS = {
    "default": ("experiments/optimizer-grid.toml", []),
    "1k": ("experiments/scale-1k.toml", ["steps=40"]),
}


def full_grid(path: str, overrides: list[str]):
    """Every run of the grid trained straight to the end: (steps, cell -> [tuning value by seed])."""
    from tinytrain.budget import tuning_value
    from tinytrain.engines.sequential import train
    from tinytrain.spec import load_experiment

    experiment = load_experiment(ROOT / path, overrides)
    cells: dict[tuple[str, float], dict[int, float]] = {}
    steps = 0
    for spec in experiment.specs():
        result = train(spec)
        steps += spec.steps
        cells.setdefault((spec.optimizer, spec.lr), {})[spec.seed] = tuning_value(result, "auto")
    return steps, cells


def halving(path: str, overrides: list[str]) -> tuple[int, int, str, str]:
    """`tinytrain sweep --budget halving` into a fresh store: (steps trained, full steps, best cell, output)."""
    with tempfile.TemporaryDirectory() as folder:
        command = [sys.executable, "-m", "tinytrain", "sweep", str(ROOT / path), "--budget", "halving", "-q"]
        command += [arg for item in overrides for arg in ("--set", item)]
        command += ["--tracking-uri", f"sqlite:///{folder}/mlflow.db"]
        done = subprocess.run(command, capture_output=True, text=True, check=True, cwd=folder)
    steps = re.search(r"Steps trained: ([\d,]+) of the full grid's ([\d,]+)", done.stdout)
    best = re.search(r"Best cell: (\S+@\S+) ", done.stdout)
    return int(steps[1].replace(",", "")), int(steps[2].replace(",", "")), best[1], done.stdout


def search(path: str, overrides: list[str], budget: int, sampler_seed: int = 0):
    """`tinytrain search` of the grid's cells, with a budget of runs, into a fresh store: (best trial's cell,
    [value by seed], runs started, trials, output). The best trial's values are read back from its sweep
    (one-sample grids: the tuning metric is final_loss)."""
    from tinytrain.tracking import read_sweep

    with tempfile.TemporaryDirectory() as folder:
        uri = f"sqlite:///{folder}/mlflow.db"
        command = [sys.executable, "-m", "tinytrain", "search", str(ROOT / path), "--pruner", "seeds"]
        command += ["--runs", str(budget), "--trials", "100000", "--sampler", "tpe"]
        command += ["--sampler-seed", str(sampler_seed)]
        command += [arg for item in overrides for arg in ("--set", item)]
        command += ["--tracking-uri", uri]
        done = subprocess.run(command, capture_output=True, text=True, check=True, cwd=folder)
        sweep_id = re.search(r"Best: trial .*\(sweep run (\w+)\)", done.stdout)[1]
        runs = int(re.search(r"Runs started by the study: (\d+)", done.stdout)[1])
        trials = re.search(r"\): (\d+ trial\(s\): [^;]+);", done.stdout)[1]
        best = read_sweep(uri, parent_run_id=sweep_id).runs
    values = {run.seed: math.inf if run.diverged else run.final_loss for run in best}
    return (best[0].optimizer, best[0].lr), values, runs, trials, done.stdout


def indistinguishable(one: dict[int, float], other: dict[int, float]) -> tuple[bool, float, bool]:
    """Whether the seeds cannot tell two cells apart: a paired two-sided Wilcoxon signed-rank test over the
    shared seeds gives p >= 0.05, and could have given less (2 / 2**n < 0.05: 6 seeds or more). Returns
    (cannot tell them apart, p, the test could separate them)."""
    from scipy.stats import wilcoxon

    seeds = sorted(set(one) & set(other))
    a = [math.log10(max(one[s], 1e-300)) if math.isfinite(one[s]) else 308.0 for s in seeds]
    b = [math.log10(max(other[s], 1e-300)) if math.isfinite(other[s]) else 308.0 for s in seeds]
    powered = 2 * 0.5 ** len(seeds) < 0.05
    if a == b:
        return True, 1.0, powered
    p_value = float(wilcoxon(a, b).pvalue)
    return p_value >= 0.05 and powered, p_value, powered


def verdict(same_cell: bool, tied: bool, p_value: float, powered: bool) -> str:
    if same_cell:
        return "the same cell"
    if tied:
        return f"a cell the seeds cannot tell from it (paired Wilcoxon p = {p_value:.3g})"
    if not powered:
        return f"another cell (paired Wilcoxon p = {p_value:.3g}; too few seeds for the test to separate them)"
    return f"a worse cell (paired Wilcoxon p = {p_value:.3g})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grid", action="append", choices=sorted(GRIDS), help="default and 1k unless given")
    parser.add_argument("--limit", type=float, default=0.35, help="the largest fraction of the full grid's steps")
    parser.add_argument("--skip-search", action="store_true", help="halving only")
    parser.add_argument(
        "--sampler-seeds", type=int, default=1, help="search with sampler seeds 0..N-1 (seed 0 decides pass/fail)"
    )
    args = parser.parse_args()
    failed = False
    print("Successive halving (steps) and search (runs) against the full grid; best cell by the median tuning metric")
    for name in args.grid or ["default", "1k"]:
        path, overrides = GRIDS[name]
        full_steps, cells = full_grid(path, overrides)
        scores = {cell: statistics.median(values.values()) for cell, values in cells.items()}
        best = min(scores, key=lambda cell: scores[cell])
        trained, full, chosen, _output = halving(path, overrides)
        assert full == full_steps, (full, full_steps)
        chosen_cell = next(cell for cell in cells if f"{cell[0]}@{cell[1]:g}" == chosen)
        same, p_value, powered = indistinguishable(cells[chosen_cell], cells[best])
        fraction = trained / full_steps
        ok = fraction <= args.limit and (chosen_cell == best or same)
        failed |= not ok
        runs = sum(len(values) for values in cells.values())
        print(
            f"  {name:8} {runs:5} runs: halving {trained:,} of {full_steps:,} steps = {fraction:.1%} "
            f"(limit {args.limit:.0%}); full grid's best {best[0]}@{best[1]:g}, halving ends on {chosen}: "
            f"{verdict(chosen_cell == best, same, p_value, powered)}  [{'ok' if ok else 'FAILED'}]"
        )
        if args.skip_search:
            continue
        budget = int(args.limit * runs)
        found, values, started, trials, _output = search(path, overrides, budget)
        found = next((c for c in cells if c[0] == found[0] and math.isclose(c[1], found[1])), found)
        same, p_value, powered = indistinguishable(values, cells[best])
        ok = started <= args.limit * runs and (found == best or same)
        failed |= not ok
        print(
            f"  {name:8} search: {trials}; {started} of {runs} runs = {started / runs:.1%} "
            f"(--runs {budget}); best trial {found[0]}@{found[1]:.4g}, median "
            f"{statistics.median(values.values()):.3g} against the full grid's {scores[best]:.3g}: "
            f"{verdict(found == best, same, p_value, powered)}  [{'ok' if ok else 'FAILED'}]"
        )
        hits = []
        for sampler_seed in range(1, args.sampler_seeds):  # how much the outcome owes to the sampler seed
            other, _values, used, _trials, _output = search(path, overrides, budget, sampler_seed)
            other = next((c for c in cells if c[0] == other[0] and math.isclose(c[1], other[1])), other)
            hits.append(other == best)
            print(f"  {name:8} search, sampler seed {sampler_seed}: {used} runs, best trial {other[0]}@{other[1]:.4g}")
        if hits:
            print(f"  {name:8} search: sampler seeds 1..{args.sampler_seeds - 1}: {sum(hits)} of {len(hits)} end on it")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()

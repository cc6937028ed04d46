"""Across problems: performance profiles and AlgoPerf's score, per arm.

A **problem** is a sweep (an experiment) with a target: a training loss at or below it. An arm's time on a
problem is, as in AlgoPerf's external tuning, that of its fastest setting: the median over seeds of the steps
to the target (a seed that never gets there, or diverges, counts as infinite time; so does an arm the sweep did
not run). Its ratio is that time over the best arm's on the problem (times floored at one step, so a target met
at step 0 still divides). The profile rho(tau) of an arm is the share of problems where its ratio is <= tau;
its score is the area under rho from 1 to TAU_MAX = 4 over (TAU_MAX - 1), computed exactly (rho is a step
function): 1 is the fastest arm everywhere, 0 never within 4 times the fastest.

A problem that no arm reaches has no best time: a profile needs targets every experiment's best arm reaches.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tinytrain.reports import stats
from tinytrain.reports.verdict import TUNED, VerdictError, arm_of, setting_of

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure

    from tinytrain.tracking.sweep_records import SweepRecord

TAU_MAX = 4.0


@dataclass(frozen=True)
class Problem:
    experiment: str
    sweep: str  # parent run id
    target: float

    @property
    def name(self) -> str:
        return f"{self.experiment} @ loss {self.target:g}"


@dataclass(frozen=True)
class ArmProfile:
    arm: str
    times: tuple[float, ...]  # steps to target per problem (inf: missed)
    ratios: tuple[float, ...]  # over the best arm's time per problem
    score: float  # AlgoPerf: area under rho up to TAU_MAX, over TAU_MAX - 1

    def rho(self, tau: float) -> float:
        """The share of problems this arm solves within tau times the fastest arm."""
        return sum(ratio <= tau for ratio in self.ratios) / len(self.ratios)

    @property
    def reached(self) -> int:
        return sum(math.isfinite(time) for time in self.times)


@dataclass(frozen=True)
class Profiles:
    problems: tuple[Problem, ...]
    arms: tuple[ArmProfile, ...]  # best score first


def arm_times(sweep: SweepRecord, target: float) -> dict[str, float]:
    """Per arm, the median steps to the target of its fastest setting (needs the sweep read with losses)."""
    import numpy as np

    cells: dict[tuple[str, tuple], list[float]] = {}
    for run in sweep.runs:
        step = None if run.diverged else stats.steps_to_target(run.losses, target)
        cells.setdefault((arm_of(run), setting_of(run, TUNED)), []).append(math.inf if step is None else step)
    times: dict[str, float] = {}
    for (arm, _setting), steps in cells.items():
        median = float(np.median(steps))
        times[arm] = min(times.get(arm, math.inf), median)
    return times


def score(ratios: Sequence[float], tau_max: float = TAU_MAX) -> float:
    """The exact area under the step function rho(tau) = share of ratios <= tau, from 1 to tau_max, normalised."""
    if not ratios:
        return 0.0
    area = sum(tau_max - max(ratio, 1.0) for ratio in ratios if ratio <= tau_max)
    return area / (len(ratios) * (tau_max - 1.0))


def profiles(sweeps: Sequence[SweepRecord], targets: Sequence[float]) -> Profiles:
    """Performance profiles of the arms over every (sweep, target) problem. VerdictError (bad input) when the
    sweeps share no arm, or a problem is reached by no arm."""
    if not sweeps:
        raise VerdictError("a profile needs at least one sweep")
    per_sweep = [{arm_of(run) for run in sweep.runs} for sweep in sweeps]
    if not set.intersection(*per_sweep):
        raise VerdictError(
            "the sweeps share no arm: a profile compares the same arms across experiments "
            f"({'; '.join(', '.join(sorted(arms)) for arms in per_sweep)})"
        )
    arms = list(dict.fromkeys(arm for arms in per_sweep for arm in sorted(arms)))
    problems, columns = [], []
    for sweep in sweeps:
        for target in targets:
            times = arm_times(sweep, target)
            best = min(times.values(), default=math.inf)
            if math.isinf(best):
                raise VerdictError(
                    f"no shared target: no arm reaches a loss <= {target:g} on {sweep.experiment} (sweep "
                    f"{sweep.parent_run_id}); give --target values that some arm reaches on every experiment"
                )
            problems.append(Problem(sweep.experiment, sweep.parent_run_id, target))
            columns.append((times, max(best, 1.0)))
    results = []
    for arm in arms:
        times = tuple(column.get(arm, math.inf) for column, _best in columns)
        ratios = tuple(max(time, 1.0) / best for time, (_column, best) in zip(times, columns, strict=True))
        results.append(ArmProfile(arm, times, ratios, score(ratios)))
    results.sort(key=lambda profile: (-profile.score, profile.arm))
    return Profiles(tuple(problems), tuple(results))


def profile_frame(result: Profiles) -> pd.DataFrame:
    """One row per arm: its score, problems reached, and rho at tau = 1, 2, 4 (for the API)."""
    import pandas as pd

    return pd.DataFrame([_record(arm, len(result.problems)) for arm in result.arms])


def _record(arm: ArmProfile, problems: int) -> dict[str, Any]:
    return {
        "arm": arm.arm,
        "score": arm.score,
        "reached": arm.reached,
        "problems": problems,
        "rho_1": arm.rho(1.0),
        "rho_2": arm.rho(2.0),
        "rho_4": arm.rho(4.0),
    }


def render_profiles(result: Profiles, output_format: str = "table", width: int | None = None) -> str:
    import json

    from tinytrain.reports import tables

    title = f"Performance profiles over {len(result.problems)} problem(s): " + "; ".join(
        problem.name for problem in result.problems
    )
    caption = (
        "score: AlgoPerf's area under the performance profile up to a ratio of 4, over 3 (1: the fastest arm on "
        "every problem); time: median steps to the target of the arm's fastest lr; rho(t): share of problems "
        "solved within t times the fastest arm; a missed target counts as infinite time."
    )
    records = [_record(arm, len(result.problems)) for arm in result.arms]
    if output_format == "json":
        document = {"title": title, "caption": caption, "problems": [p.name for p in result.problems], "rows": records}
        return json.dumps(document, indent=2) + "\n"
    if output_format == "csv":
        header = list(records[0])
        return tables.csv_text(header, [[str(record[c]) for c in header] for record in records], title, caption)
    header = ("arm", "score", "reached", "rho(1)", "rho(2)", "rho(4)")
    rows = [
        (
            record["arm"],
            f"{record['score']:.3f}",
            f"{record['reached']}/{record['problems']}",
            f"{record['rho_1']:.2f}",
            f"{record['rho_2']:.2f}",
            f"{record['rho_4']:.2f}",
        )
        for record in records
    ]
    right = {1, 2, 3, 4, 5}
    if output_format == "markdown":
        return tables.markdown(header, rows, right, title, caption)
    if output_format == "latex":
        return tables.latex(header, rows, right, title, caption)
    return tables.terminal_table(header, rows, right, title, caption, width, keep=(0, 1))


def plot_profiles(result: Profiles, tau_max: float = TAU_MAX) -> Figure:
    """rho(tau) per arm from 1 to tau_max, as steps; the legend gives each arm's score."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6.4, 4.2), layout="constrained")
    FigureCanvasAgg(figure)
    ax = figure.subplots()
    for arm in result.arms:
        taus = sorted({1.0, tau_max, *(ratio for ratio in arm.ratios if 1.0 <= ratio <= tau_max)})
        ax.step(taus, [arm.rho(tau) for tau in taus], where="post", label=f"{arm.arm} (score {arm.score:.2f})")
    ax.set_xlim(1.0, tau_max)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("tau: time over the fastest arm's")
    ax.set_ylabel("share of problems within tau")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small", loc="lower right")
    ax.set_title(f"Performance profiles over {len(result.problems)} problem(s)", fontsize="medium")
    return figure

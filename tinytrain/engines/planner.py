"""Which cells the vmap engine batches, in which sub-batches, and which it leaves to the sequential engine.

Plain data, no torch: the executors plan with it before they import an engine. Cells that ask for
`engine = vmap` are grouped by what cells of one batch must share (threads, mkldnn, data_seed,
target_index) and each group is cut into sub-batches of at most SUB_BATCH_CELLS cells, trained one after
another. A sub-batch hands its results over as soon as it ends, so the sweep's writer logs them while
the next one trains; at this size a sub-batch of about 9 cells is also as fast as one batch of 45 or
faster, since its weights, gradients and optimizer state stay closer to the core.

The engine decides which cells it trains: a cell whose optimizer has no stacked update (outside
optimizers.VMAP_KINDS; spec.py refuses those for engine vmap today, so this only guards the engine) or a group
of fewer than MIN_BATCH_CELLS cells trains on the sequential engine. Both engines give the same bits at
the only runtime the vmap engine accepts (one thread, oneDNN off), so the choice changes no number: a run's
`engine` param and its run key keep the engine the experiment asked for (the same cell has the same key
whatever else its sweep holds, so resuming still finds it), and its `tinytrain.engine` tag says which engine
trained it, with `tinytrain.engine_reason` when that is not the one asked for.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tinytrain.optimizers import VMAP_KINDS
from tinytrain.spec import RunSpec

# Measured (benchmarks/crossover.py, docs/performance.md): the vmap engine trains even one cell faster than the
# sequential engine, so no group is too small here; a machine with less per-operation overhead may want more.
MIN_BATCH_CELLS = 1
SUB_BATCH_CELLS = 9  # the largest sub-batch: results reach the writer early, and it is no slower per step

BatchSetting = tuple[int, bool, int, int]  # threads, mkldnn, data_seed, target_index


def batch_setting(spec: RunSpec) -> BatchSetting:
    """What the cells of one batch must share: the runtime that decides the bits, and the problem."""
    return spec.threads, spec.mkldnn, spec.data_seed, spec.target_index


@dataclass
class BatchPlan:
    """vmap cells as sub-batches for the batched engine, the rest for the sequential one, and why."""

    batches: list[list[RunSpec]] = field(default_factory=list)
    sequential: list[RunSpec] = field(default_factory=list)
    fallback_reason: dict[RunSpec, str] = field(default_factory=dict)  # vmap cells trained sequentially


def sub_batches(cells: list[RunSpec], largest: int | None = None, workers: int = 1) -> list[list[RunSpec]]:
    """Cells cut, in order, into the fewest sub-batches of at most `largest` (a multiple of `workers` of
    them, so that each worker gets as many), of sizes as equal as can be.

    In the grid's order a sub-batch holds few optimizers, so it runs few update rules.
    """
    count = -(-len(cells) // (SUB_BATCH_CELLS if largest is None else largest))
    count = min(len(cells), -(-count // workers) * workers)
    bounds = [len(cells) * index // count for index in range(count + 1)]
    return [cells[start:stop] for start, stop in zip(bounds, bounds[1:], strict=False)]


def plan_batches(
    specs: list[RunSpec], workers: int = 1, min_cells: int | None = None, largest: int | None = None
) -> BatchPlan:
    """Split specs between the engines: sequential specs stay sequential; vmap specs are batched by group
    (into sub-batches for `workers` worker processes), unless their optimizer has no stacked update or their
    group has fewer than `min_cells` (MIN_BATCH_CELLS) cells. Sub-batches hold at most `largest`
    (SUB_BATCH_CELLS) cells."""
    min_cells = MIN_BATCH_CELLS if min_cells is None else min_cells
    plan = BatchPlan()
    groups: dict[BatchSetting, list[RunSpec]] = {}
    for spec in specs:
        if spec.engine != "vmap":
            plan.sequential.append(spec)
        elif spec.state_folder:  # the batched engine keeps no training state: the sequential one gives the same bits
            plan.sequential.append(spec)
            plan.fallback_reason[spec] = "it saves or continues from a training state"
        elif spec.kind not in VMAP_KINDS:
            plan.sequential.append(spec)
            plan.fallback_reason[spec] = f"the vmap engine has no stacked update for {spec.kind}"
        else:
            groups.setdefault(batch_setting(spec), []).append(spec)
    for cells in groups.values():
        if len(cells) >= min_cells:
            plan.batches += sub_batches(cells, largest, workers)
            continue
        plan.sequential += cells
        for spec in cells:
            plan.fallback_reason[spec] = (
                f"{len(cells)} cell(s) to batch, fewer than the {min_cells} at which the vmap engine gains"
            )
    return plan

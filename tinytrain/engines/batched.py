"""The vectorised engine (`--engine vmap`): the cells of a batch trained at once, in one batched net.

The net and the data are the same for every cell of a sweep; cells differ only by their initial weights (the
seed), their optimizer, lr and hyperparameters. So the weights of K cells are stacked into one [K, R] buffer
(a row per cell), and one hand-batched forward and backward (vmap_net.py, torch's own kernels) gives every
cell's loss and the gradient of its own loss: the per-op overhead that bounds the sequential loop at this
size is paid once per step for the whole batch. The updates are torch.optim's single-tensor steps rewritten
for stacked rows (vmap_optim.py), one update per update rule over all of its cells.

At the runtime the engine accepts (one thread, oneDNN off) every loss and weight is bit-identical to
train.train's, whatever the batch (alone, any composition or order), so a cell's result does not depend on
its batch and `reproduce` retrains any vmap run alone. With mkldnn on or two threads batched kernels split
their sums otherwise and a cell's bits would depend on its batch, which is why spec.py refuses them.

The recording contract is train.train's: losses[i] before step i's update, losses[steps] after the last; a
diverging loss (results.diverges) ends its cell as diverged without stopping the batch. Each cell's result
is handed over as soon as the cell ends (a diverged cell at once), so the sweep's writer can log it while
the batch trains. The batch then drops the ended cells' rows (weights, optimizer state, per-cell settings)
and trains on with the rest only: a cell's arithmetic is its own row's, so no bit changes, and a batch of
9 whose 6 cells diverge at their first step trains 3 rows from there, not 9.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator, Sequence

import torch

from tinytrain.engines.batched_net import (  # noqa: F401 - the row layout, re-exported for the engine's users
    ROW_LENGTH,
    BatchedNet,
    cell_parameters,
    cell_state_dict,
    initial_weights,
)
from tinytrain.engines.batched_updates import UPDATE_RULE_OF_KIND, UPDATE_RULES
from tinytrain.engines.planner import BatchSetting, batch_setting
from tinytrain.engines.recipe import LearningRates
from tinytrain.engines.sequential import configure_runtime, runtime_settings
from tinytrain.results import DIVERGED, FINISHED, RunResult, StateDict, diverges, failed_result
from tinytrain.spec import RunSpec


def train_batch(specs: list[RunSpec]) -> Iterator[RunResult]:
    """Train specs in batched nets; yield each spec's result as soon as its cell ends.

    Specs are split by what cells of one batch must share (threads, mkldnn, data_seed, target_index); within
    a batch cells may differ in optimizer, lr, seed, hyperparameters and steps. Like train.train_safely, an
    error fails only its batch's cells not yet handed over, as failed results, so that a sweep goes on.
    """
    groups: dict[BatchSetting, list[RunSpec]] = {}
    for spec in specs:
        groups.setdefault(batch_setting(spec), []).append(spec)
    for members in groups.values():
        handed_over: set[int] = set()
        try:
            for index, result in train_cells(members):
                handed_over.add(index)
                yield result
        except Exception as error:  # noqa: BLE001 - an error of one batch must not end the sweep
            yield from (failed_result(spec, error) for index, spec in enumerate(members) if index not in handed_over)


def train_cells(specs: Sequence[RunSpec]) -> Iterator[tuple[int, RunResult]]:
    """Train cells that share threads, mkldnn, data_seed and target_index as one batch.

    Yields (index in specs, result) as each cell ends. Each step: one batched forward and backward over
    the rows of the cells still training, one `.tolist()` of their losses, one update per update rule over
    the rows of its cells; then the rows of the cells that ended at this step are dropped.
    """
    if not specs:
        return
    threads, mkldnn, data_seed, target_index = _shared_setting(specs)
    configure_runtime(threads, mkldnn)
    batch = _Batch(specs, BatchedNet(data_seed, target_index))
    for step in range(max(cell.steps for cell in batch.cells) + 1):
        last = all(batch.cells[row].steps == step for row in batch.training)  # all end here: no backward
        gradients, losses = (
            (None, batch.net.losses(batch.weights)) if last else batch.net.losses_and_gradients(batch.weights)
        )
        yield from batch.record(step, losses.tolist())
        if not batch.training or gradients is None:
            return
        batch.update(gradients)
        batch.checkpoint(step + 1)
        batch.drop_ended()


class _Batch:
    """The state of one batch in training: weights, updates, and what each cell has recorded so far."""

    def __init__(self, specs: Sequence[RunSpec], net: BatchedNet):
        self.started, self.size = time.perf_counter(), len(specs)
        self.order = rows_by_update_rule(specs)  # row -> index in specs
        self.cells = [specs[index] for index in self.order]
        self.net = net
        self.weights = initial_weights(self.cells)
        self.updates = [(rows, UPDATE_RULES[rule](self.cells[rows])) for rule, rows in rule_slices(self.cells)]
        self.losses: list[list[float]] = [[] for _ in self.cells]
        self.metrics: list[dict[str, dict[int, float]]] = [{} for _ in self.cells]  # lr, grad_norm
        self.learning_rates = LearningRates(self.cells)
        self.step_count = 0
        self.checkpoints: list[dict[int, StateDict]] = [{} for _ in self.cells]
        self.training = set(range(len(self.cells)))
        self.runtime = runtime_settings() | {
            "engine": "vmap",
            "batch_cells": str(len(self.cells)),
            "batch_key": batch_key(self.cells),
        }

    def record(self, step: int, values: list[float]) -> Iterator[tuple[int, RunResult]]:
        """Append each training cell's loss; hand over the cells that end at this step (in the specs' order)."""
        for row in sorted(self.training, key=self.order.__getitem__):
            self.losses[row].append(values[row])
            diverged = diverges(values[row], self.losses[row][0], self.cells[row].diverge_above)
            if not diverged and step < self.cells[row].steps:
                continue
            self.training.discard(row)
            yield self.order[row], self.result(row, DIVERGED if diverged else FINISHED)

    def result(self, row: int, outcome: str) -> RunResult:
        converged = outcome == FINISHED
        seconds = (time.perf_counter() - self.started) / self.size
        return RunResult(
            self.cells[row],
            self.losses[row],
            outcome,
            cell_state_dict(self.weights[row]) if converged else None,
            self.checkpoints[row] if converged else {},
            seconds,
            runtime=dict(self.runtime),
            metrics=self.metrics[row],
        )

    def update(self, gradients: torch.Tensor) -> None:
        """One step of every row (a row whose cell ended at this step too: drop_ended removes it next): as
        train.train, each cell's lr from its scheduler, its gradients clipped, the update, the scheduler's step."""
        step, self.step_count = self.step_count, self.step_count + 1
        with torch.no_grad():
            if self.learning_rates.varies:
                lrs = self.learning_rates.current()
                for row in range(len(self.cells)):
                    if self.learning_rates.scheduled(row) and row in self.training:
                        self.metrics[row].setdefault("lr", {})[step] = lrs[row]
                for rows, update in self.updates:
                    update.set_lrs(lrs[rows])
            for row, cell in enumerate(self.cells):
                if cell.clip_grad_norm:
                    norm = clip_row(gradients[row], cell.clip_grad_norm)
                    if row in self.training:  # a cell handed over at this step logs nothing more
                        self.metrics[row].setdefault("grad_norm", {})[step] = norm
            for rows, update in self.updates:
                update.step(self.weights[rows], gradients[rows])
            self.learning_rates.step()

    def drop_ended(self) -> None:
        """Go on with the rows of the cells still training only, in their order (each rule's stay contiguous)."""
        keep = sorted(self.training)
        if len(keep) == len(self.cells):
            return
        self.weights = self.weights.index_select(0, torch.tensor(keep))
        updates, start = [], 0
        for rows, update in self.updates:
            kept = [row - rows.start for row in keep if rows.start <= row < rows.stop]
            if kept:
                update.keep(kept)
                updates.append((slice(start, start + len(kept)), update))
                start += len(kept)
        self.updates = updates
        self.order, self.cells = [self.order[row] for row in keep], [self.cells[row] for row in keep]
        self.losses, self.checkpoints = [self.losses[row] for row in keep], [self.checkpoints[row] for row in keep]
        self.metrics = [self.metrics[row] for row in keep]
        self.learning_rates.keep(keep)
        self.training = set(range(len(keep)))

    def checkpoint(self, done: int) -> None:
        """Checkpoints of the cells due one after `done` steps (not at their last: that is the final one)."""
        for row in self.training:
            every = self.cells[row].checkpoint_every
            if every and done % every == 0 and done < self.cells[row].steps:
                self.checkpoints[row][done] = cell_state_dict(self.weights[row])


def clip_row(gradient_row: torch.Tensor, max_norm: float) -> float:
    """torch.nn.utils.clip_grad_norm_ on one cell's gradient row: the same per-parameter norms (over views of
    the parameters' shapes), their norm, and the same clamped factor; returns the norm before clipping."""
    total = torch.nn.utils.get_total_norm(list(cell_parameters(gradient_row).values()), 2.0)
    factor = torch.clamp(max_norm / (total + 1e-6), max=1.0)
    gradient_row.mul_(factor)  # the padding is 0 and stays 0
    return total.item()


def _shared_setting(specs: Sequence[RunSpec]) -> BatchSetting:
    settings = {batch_setting(spec) for spec in specs}
    if len(settings) > 1:
        raise ValueError(
            f"cells of one batch must share threads, mkldnn, data_seed and target_index, "
            f"got {sorted(settings)}: use train_batch, which splits them"
        )
    return settings.pop()


def batch_key(cells: Sequence[RunSpec]) -> str:
    """A key of a batch's composition (its cells' run keys in row order), recorded with each of its runs."""
    return hashlib.sha256(",".join(cell.key for cell in cells).encode()).hexdigest()[:16]


def rows_by_update_rule(specs: Sequence[RunSpec]) -> list[int]:
    """Indices of specs ordered by update rule (stable), so that each rule updates one contiguous slice."""
    rules = list(UPDATE_RULES)
    return sorted(range(len(specs)), key=lambda index: rules.index(UPDATE_RULE_OF_KIND[specs[index].kind]))


def rule_slices(cells: Sequence[RunSpec]) -> list[tuple[str, slice]]:
    """(update rule, its rows) of cells ordered by rows_by_update_rule."""
    slices: list[tuple[str, slice]] = []
    for row, spec in enumerate(cells):
        rule = UPDATE_RULE_OF_KIND[spec.kind]
        if slices and slices[-1][0] == rule:
            slices[-1] = (rule, slice(slices[-1][1].start, row + 1))
        else:
            slices.append((rule, slice(row, row + 1)))
    return slices

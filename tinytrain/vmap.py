"""The vectorised engine (`--engine vmap`): every cell of a batch trained at once, in one batched net.

The net and the data are the same for every cell of a sweep; cells differ only by their initial weights (the
seed), their optimizer, lr and hyperparameters. So the weights of K cells are stacked into one [K, R] buffer
(a row per cell) and one `vmap(grad_and_value(...))` over a `functional_call` of the LeNet gives every
cell's loss and the gradient of its own loss in one batched forward and backward: the per-op overhead that
bounds the sequential loop at this size is paid once per step for the whole batch.

The updates are torch.optim's single-tensor steps rewritten operation by operation for stacked rows
(vmap_optim.py), one update per update rule over all of its cells.

Each parameter of a row starts 64 bytes aligned, as a tensor of its own does: MKL's matrix products give
results that depend on the operands' alignment, and aligned they give the sequential engine's bits. Measured
on the default grid (torch 2.13, this project's 2-core machine): at the default runtime (one thread, mkldnn
off) every loss is bit-identical to train.train's, whatever the batch (alone, any composition or order).
With mkldnn on or two threads, batched kernels split their sums otherwise: results agree with train.train
within the tolerance except in chaotic cells, and a cell's bits depend on the batch's size (a batch of one
differs); the same batch run again always gives the same bits.

The recording contract is train.train's: losses[i] before step i's update, losses[steps] after the last; a
diverging loss (train.diverges) ends its cell as diverged without stopping the batch. An ended cell
(diverged, or its steps done) keeps its row, zeroed after every update, so the batch keeps its shape and
nothing non-finite reaches the batched kernels again.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence

import torch
from torch.func import functional_call, grad_and_value, stack_module_state, vmap

from tinytrain.model import LeNet
from tinytrain.problem import loss_fn, make_input, make_target
from tinytrain.results import DIVERGED, FINISHED, RunResult, diverges, failed_result
from tinytrain.spec import RunSpec
from tinytrain.train import StateDict, configure_runtime, initial_net, runtime_settings
from tinytrain.vmap_optim import UPDATE_RULE_OF_KIND, UPDATE_RULES

# The LeNet's parameters in state-dict order, and where each lies in a cell's row of the stacked weights.
with torch.device("meta"):  # functional_call only needs the module's structure (and no RNG is drawn)
    _SKELETON = LeNet()
PARAMETER_NAMES: tuple[str, ...] = tuple(name for name, _ in _SKELETON.named_parameters())
PARAMETER_SHAPES: tuple[torch.Size, ...] = tuple(p.shape for p in _SKELETON.parameters())
PARAMETER_SIZES: tuple[int, ...] = tuple(p.numel() for p in _SKELETON.parameters())
ALIGNMENT = 16  # float32 elements: 64 bytes, c10's alignment of every CPU tensor


def _aligned(size: int) -> int:
    return -(-size // ALIGNMENT) * ALIGNMENT


# A row is [parameter, padding, parameter, padding, ...]; the padding stays zero (its gradient is zero).
ROW_PIECES: tuple[int, ...] = tuple(piece for size in PARAMETER_SIZES
                                    for piece in (size, _aligned(size) - size))
ROW_LENGTH = sum(ROW_PIECES)  # 61,760 floats for the 61,706 parameters

# What cells of one batch must share: the runtime that decides the bits, and the problem itself.
BatchSetting = tuple[int, bool, int, int]  # threads, mkldnn, data_seed, target_index


def batch_setting(spec: RunSpec) -> BatchSetting:
    return spec.threads, spec.mkldnn, spec.data_seed, spec.target_index


# ---------------------------------------------------------------------------------------------------------
# The batch


def train_batch(specs: list[RunSpec]) -> list[RunResult]:
    """Train specs in batched nets: one result per spec, in the same order.

    Specs are split into sub-batches by what cells of one batch must share (threads, mkldnn, data_seed,
    target_index); within a sub-batch cells may differ in optimizer, lr, seed, hyperparameters and steps.
    Like train.train_safely, an error fails only its sub-batch, as failed results, so that a sweep goes on.
    """
    sub_batches: dict[BatchSetting, list[int]] = {}
    for index, spec in enumerate(specs):
        sub_batches.setdefault(batch_setting(spec), []).append(index)
    results: list[RunResult | None] = [None] * len(specs)
    for indices in sub_batches.values():
        members = [specs[index] for index in indices]
        try:
            trained = train_cells(members)
        except Exception as error:  # noqa: BLE001 - an error of one sub-batch must not end the sweep
            trained = [failed_result(spec, error) for spec in members]
        for index, result in zip(indices, trained, strict=True):
            results[index] = result
    return results  # type: ignore[return-value]


def train_cells(specs: Sequence[RunSpec]) -> list[RunResult]:
    """Train cells that share threads, mkldnn, data_seed and target_index as one batch; results in order.

    Each step: one batched forward and backward over every row (ended cells ride along zeroed), one
    `.tolist()` of the K losses, then one update per update rule over the rows of its cells.
    """
    if not specs:
        return []
    threads, mkldnn, data_seed, target_index = _shared_setting(specs)
    configure_runtime(threads, mkldnn)
    started = time.perf_counter()

    order = rows_by_update_rule(specs)  # row -> index in specs
    cells = [specs[index] for index in order]
    count = len(cells)
    weights = initial_weights(cells)
    updates = [(rows, UPDATE_RULES[rule](cells[rows])) for rule, rows in rule_slices(cells)]
    net = BatchedNet(data_seed, target_index)

    losses: list[list[float]] = [[] for _ in cells]
    outcomes: list[str] = [DIVERGED] * count
    final_weights: list[StateDict | None] = [None] * count
    checkpoints: list[dict[int, StateDict]] = [{} for _ in cells]
    training, ended = set(range(count)), []
    for step in range(max(cell.steps for cell in cells) + 1):
        last = all(cells[row].steps == step for row in training)  # every remaining cell ends: no backward
        gradients, step_losses = (None, net.losses(weights)) if last else net.losses_and_gradients(weights)
        values = step_losses.tolist()
        for row in sorted(training):
            losses[row].append(values[row])
            diverged = diverges(values[row], losses[row][0], cells[row].diverge_above)
            if not diverged and step < cells[row].steps:
                continue
            if not diverged:
                outcomes[row] = FINISHED
                final_weights[row] = cell_state_dict(weights[row])
            training.discard(row)
            ended.append(row)
        if not training or gradients is None:
            break
        with torch.no_grad():
            for rows, update in updates:
                if any(row in training for row in range(rows.start, rows.stop)):
                    update.step(weights[rows], gradients[rows])
            if ended:
                weights.index_fill_(0, torch.tensor(ended), 0.0)
        for row in training:
            every, done = cells[row].checkpoint_every, step + 1
            if every and done % every == 0 and done < cells[row].steps:
                checkpoints[row][done] = cell_state_dict(weights[row])

    seconds = time.perf_counter() - started
    runtime = runtime_settings() | {"engine": "vmap", "batch_cells": str(count),
                                    "batch_key": batch_key(cells)}
    results = [RunResult(cells[row], losses[row], outcomes[row], final_weights[row],
                         checkpoints[row] if outcomes[row] == FINISHED else {}, seconds / count, runtime=runtime)
               for row in range(count)]
    return [results[row] for row in sorted(range(count), key=order.__getitem__)]  # back in the specs' order


def _shared_setting(specs: Sequence[RunSpec]) -> BatchSetting:
    settings = {batch_setting(spec) for spec in specs}
    if len(settings) > 1:
        raise ValueError(f"cells of one batch must share threads, mkldnn, data_seed and target_index, "
                         f"got {sorted(settings)}: use train_batch, which splits them")
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


# ---------------------------------------------------------------------------------------------------------
# The batched net


def initial_weights(cells: Sequence[RunSpec]) -> torch.Tensor:
    """[cells, ROW_LENGTH]: each row a cell's LeNet as train.initial_net builds it (seeded right before)."""
    stacked, _buffers = stack_module_state([initial_net(cell) for cell in cells])
    weights = torch.zeros(len(cells), ROW_LENGTH)
    for name, piece in cell_parameters(weights).items():
        piece.copy_(stacked[name].detach())
    return weights


def cell_parameters(weight_rows: torch.Tensor) -> dict[str, torch.Tensor]:
    """Weight rows ([..., ROW_LENGTH]) as the LeNet's named parameters ([..., *shape]): views, no copies."""
    pieces = weight_rows.split(ROW_PIECES, dim=-1)[::2]  # every other piece is padding
    return {name: piece.view(*weight_rows.shape[:-1], *shape)
            for name, piece, shape in zip(PARAMETER_NAMES, pieces, PARAMETER_SHAPES, strict=True)}


def cell_state_dict(weight_row: torch.Tensor) -> StateDict:
    """A copy of one cell's weights as a LeNet state dict (what train.snapshot gives)."""
    return {name: tensor.clone() for name, tensor in cell_parameters(weight_row.detach()).items()}


class BatchedNet:
    """The experiment's problem (input, target, MSE) for stacked weights: every cell's loss and gradient.

    grad_and_value under vmap, so each row's gradient is of that cell's own loss. The gradients land in a
    [K, ROW_LENGTH] buffer reused from step to step (one cat into it rather than a fresh 11 MB tensor per
    step): use them before the next call.
    """

    def __init__(self, data_seed: int, target_index: int):
        self.input, self.target = make_input(data_seed), make_target(target_index)
        self._losses_and_gradients = vmap(grad_and_value(self.cell_loss))
        self._losses = vmap(self.cell_loss)
        self._gradients: torch.Tensor | None = None
        self._paddings: list[torch.Tensor] = []

    def cell_loss(self, parameters: dict[str, torch.Tensor]) -> torch.Tensor:
        return loss_fn(functional_call(_SKELETON, parameters, (self.input,)), self.target)

    def losses(self, weights: torch.Tensor) -> torch.Tensor:
        """[K] losses of the stacked weights [K, ROW_LENGTH] (a forward only)."""
        return self._losses(cell_parameters(weights))

    def losses_and_gradients(self, weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """([K, ROW_LENGTH] gradients, [K] losses) of the stacked weights: one forward and one backward."""
        cells = len(weights)
        if self._gradients is None or len(self._gradients) != cells:
            self._gradients = torch.zeros(cells, ROW_LENGTH)
            self._paddings = [torch.zeros(cells, size) for size in ROW_PIECES[1::2]]
        by_parameter, losses = self._losses_and_gradients(cell_parameters(weights))
        pieces = [piece for name, padding in zip(PARAMETER_NAMES, self._paddings, strict=True)
                  for piece in (by_parameter[name].reshape(cells, -1), padding)]
        torch.cat(pieces, dim=1, out=self._gradients)
        return self._gradients, losses

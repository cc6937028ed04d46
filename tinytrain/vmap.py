"""The vectorised engine (`--engine vmap`): every cell of a batch trained at once, in one batched net.

The net and the data are the same for every cell of a sweep; cells differ only by their initial weights (the
seed), their optimizer, lr and hyperparameters. So the weights of K cells are stacked into one [K, R] buffer
(a row per cell) and one `vmap(grad_and_value(...))` over a `functional_call` of the LeNet gives every
cell's loss and the gradient of its own loss in one batched forward and backward: the per-op overhead that
bounds the sequential loop at this size is paid once per step for the whole batch.

The updates are torch.optim's single-tensor steps rewritten operation by operation for stacked rows: each
per-cell scalar (lr, betas, bias corrections, ...) is computed in Python floats as torch computes it and
applied as a [cells, 1] float32 column, so every element sees the same float operations as in torch.optim.
One update runs per update rule over all of its cells (AdamW is Adam with decoupled weight decay: one rule).

Each parameter of a row starts 64 bytes aligned, as a tensor of its own does: MKL's matrix products give
results that depend on the operands' alignment, and aligned they give the sequential engine's bits. Measured
on the default grid (torch 2.13, this project's 2-core machine): at the default runtime (one thread, mkldnn
off) every loss is bit-identical to train.train's, whatever the batch (alone, any composition or order).
With mkldnn on or two threads, batched kernels split their sums otherwise: results agree with train.train
within the tolerance except in chaotic cells, and a cell's bits depend on the batch's size (a batch of one
differs); the same batch run again always gives the same bits.

The recording contract is train.train's: losses[i] before step i's update, losses[steps] after the last; a
non-finite loss ends its cell as diverged without stopping the batch. An ended cell (diverged, or its steps
done) keeps its row, zeroed after every update, so the batch keeps its shape and nothing non-finite reaches
the batched kernels again.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Sequence
from typing import Any

import torch
from torch.func import functional_call, grad_and_value, stack_module_state, vmap

from tinytrain.model import LeNet
from tinytrain.problem import loss_fn, make_input, make_target
from tinytrain.spec import RunSpec
from tinytrain.train import (
    CONVERGED,
    DIVERGED,
    FAILED,
    RunResult,
    StateDict,
    configure_runtime,
    initial_net,
    runtime_settings,
)

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
            message = f"{type(error).__name__}: {error}"
            trained = [RunResult(spec, [], FAILED, error=message) for spec in members]
        for index, result in zip(indices, trained, strict=True):
            results[index] = result
    return results  # type: ignore[return-value]


def train_cells(specs: Sequence[RunSpec]) -> list[RunResult]:
    """Train cells that share threads, mkldnn, data_seed and target_index as one batch; results in order.

    Each step: one batched forward and backward over every row (ended cells ride along zeroed), one
    `.tolist()` of the K losses, then one update per update rule over the rows of its cells.
    """
    settings = {batch_setting(spec) for spec in specs}
    if len(settings) > 1:
        raise ValueError(f"cells of one batch must share threads, mkldnn, data_seed and target_index, "
                         f"got {sorted(settings)}: use train_batch, which splits them")
    if not specs:
        return []
    threads, mkldnn, data_seed, target_index = settings.pop()
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
            if math.isfinite(values[row]) and step < cells[row].steps:
                continue
            if math.isfinite(values[row]):
                outcomes[row] = CONVERGED
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
    results: list[RunResult | None] = [None] * count
    for row, index in enumerate(order):
        converged = outcomes[row] == CONVERGED
        results[index] = RunResult(cells[row], losses[row], outcomes[row], final_weights[row],
                                   checkpoints[row] if converged else {}, seconds / count, runtime=runtime)
    return results  # type: ignore[return-value]


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


# ---------------------------------------------------------------------------------------------------------
# Updates on stacked rows: torch.optim's single-tensor step, operation by operation, per-cell scalars as
# [cells, 1] float32 columns (torch turns its Python-float scalars into float32 the same way).


def column(values: Sequence[float]) -> torch.Tensor:
    """Per-cell scalars as a [cells, 1] float32 column that broadcasts over the cells' weight rows."""
    return torch.tensor(list(values), dtype=torch.float32).unsqueeze(1)


def select(mask: torch.Tensor | None, when: torch.Tensor, otherwise: torch.Tensor) -> torch.Tensor:
    """Per-cell choice between two branches of torch's code; no copy when every cell takes the same one."""
    return when if mask is None else torch.where(mask, when, otherwise)


class StackedUpdate:
    """One update rule over the rows of its cells; the per-cell settings every torch.optim rule shares."""

    def __init__(self, cells: Sequence[RunSpec]):
        self.hyperparameters = [cell.optimizer_kwargs for cell in cells]
        self.lrs = [cell.lr for cell in cells]
        self.neg_lr = column([-lr for lr in self.lrs])
        maximize = self.values("maximize")
        self.sign = column([-1.0 if flag else 1.0 for flag in maximize]) if any(maximize) else None
        self.weight_decay = self.column_unless_zero("weight_decay")

    def values(self, name: str) -> list[Any]:
        return [hyperparameters[name] for hyperparameters in self.hyperparameters]

    def column_unless_zero(self, name: str) -> torch.Tensor | None:
        """The hyperparameter as a column, or None when every cell has it at 0 (torch skips the branch)."""
        values = self.values(name)
        return column(values) if any(value != 0 for value in values) else None

    def mask(self, flags: Sequence[bool]) -> torch.Tensor | None:
        """A per-cell mask when a flag differs between cells, else None (every cell takes one branch)."""
        if any(flags) and not all(flags):
            return torch.tensor(list(flags), dtype=torch.bool).unsqueeze(1)
        return None

    def gradient(self, weights: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
        """torch.optim's `grad if not maximize else -grad`, then `grad.add(param, alpha=weight_decay)`."""
        grad = gradients if self.sign is None else gradients * self.sign  # a product by -1 is exact
        if self.weight_decay is not None:
            grad = grad.addcmul(weights, self.weight_decay)
        return grad

    def step(self, weights: torch.Tensor, gradients: torch.Tensor) -> None:
        """Update the cells' weight rows in place from their gradient rows."""
        raise NotImplementedError


class StackedSGD(StackedUpdate):
    """torch.optim.SGD (_single_tensor_sgd): momentum, dampening, weight_decay, nesterov, maximize per cell.

    Cells without momentum run the momentum arithmetic with momentum 0 and no dampening, which gives
    exactly their gradient (0 * buf + grad), so plain SGD and SGD with momentum share one update.
    """

    def __init__(self, cells: Sequence[RunSpec]):
        super().__init__(cells)
        momentum = self.values("momentum")
        self.uses_momentum = any(value != 0 for value in momentum)
        self.momentum = column(momentum)
        self.one_minus_dampening = column([1 - dampening if value != 0 else 1.0
                                           for value, dampening in zip(momentum, self.values("dampening"),
                                                                       strict=True)])
        nesterov = [bool(flag) for flag in self.values("nesterov")]
        self.any_nesterov, self.nesterov = any(nesterov), self.mask(nesterov)
        self.momentum_buffer: torch.Tensor | None = None

    def step(self, weights: torch.Tensor, gradients: torch.Tensor) -> None:
        grad = self.gradient(weights, gradients)
        if self.uses_momentum:
            if self.momentum_buffer is None:
                self.momentum_buffer = grad.clone()
            else:  # buf.mul_(momentum).add_(grad, alpha=1 - dampening)
                self.momentum_buffer.mul_(self.momentum).addcmul_(grad, self.one_minus_dampening)
            buffer = self.momentum_buffer
            grad = select(self.nesterov, grad.addcmul(buffer, self.momentum), buffer) if self.any_nesterov \
                else buffer
        weights.addcmul_(grad, self.neg_lr)  # param.add_(grad, alpha=-lr)


class StackedAdam(StackedUpdate):
    """torch.optim.Adam and AdamW (_single_tensor_adam): betas, eps, weight_decay (coupled, or decoupled for
    AdamW and Adam's decoupled_weight_decay), amsgrad, maximize per cell."""

    def __init__(self, cells: Sequence[RunSpec]):
        super().__init__(cells)
        decoupled = [cell.kind == "adamw" or bool(h.get("decoupled_weight_decay"))
                     for cell, h in zip(cells, self.hyperparameters, strict=True)]
        decay = self.values("weight_decay")
        coupled_decay = [0.0 if is_decoupled else wd
                         for wd, is_decoupled in zip(decay, decoupled, strict=True)]
        self.weight_decay = column(coupled_decay) if any(coupled_decay) else None  # grad.add(param, alpha=wd)
        decay_factors = [1 - lr * wd if is_decoupled else 1.0  # param.mul_(1 - lr * weight_decay)
                         for lr, wd, is_decoupled in zip(self.lrs, decay, decoupled, strict=True)]
        self.decay_factor = column(decay_factors) if any(factor != 1.0 for factor in decay_factors) else None
        self.beta1s = [betas[0] for betas in self.values("betas")]
        self.beta2s = [betas[1] for betas in self.values("betas")]
        self.one_minus_beta1 = column([1 - beta1 for beta1 in self.beta1s])
        self.beta2 = column(self.beta2s)
        self.one_minus_beta2 = column([1 - beta2 for beta2 in self.beta2s])
        self.eps = column(self.values("eps"))
        amsgrad = [bool(flag) for flag in self.values("amsgrad")]
        self.any_amsgrad, self.amsgrad = any(amsgrad), self.mask(amsgrad)
        self.steps = 0
        self.exp_avg: torch.Tensor | None = None
        self.exp_avg_sq: torch.Tensor | None = None
        self.max_exp_avg_sq: torch.Tensor | None = None

    def step(self, weights: torch.Tensor, gradients: torch.Tensor) -> None:
        if self.exp_avg is None or self.exp_avg_sq is None:
            self.exp_avg, self.exp_avg_sq = torch.zeros_like(weights), torch.zeros_like(weights)
            self.max_exp_avg_sq = torch.zeros_like(weights) if self.any_amsgrad else None
        self.steps += 1
        if self.decay_factor is not None:
            weights.mul_(self.decay_factor)
        grad = self.gradient(weights, gradients)  # coupled decay only: decoupled cells have 0 here
        self.exp_avg.lerp_(grad, self.one_minus_beta1)
        # exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2): value * grad first, as torch's kernel
        self.exp_avg_sq.mul_(self.beta2).addcmul_(grad * self.one_minus_beta2, grad)
        bias_correction2_sqrt = column([(1 - beta2**self.steps) ** 0.5 for beta2 in self.beta2s])
        neg_step_size = column([-(lr / (1 - beta1**self.steps)) for lr, beta1 in
                                zip(self.lrs, self.beta1s, strict=True)])
        second_moment = self.exp_avg_sq
        if self.max_exp_avg_sq is not None:
            torch.maximum(self.max_exp_avg_sq, self.exp_avg_sq, out=self.max_exp_avg_sq)
            second_moment = select(self.amsgrad, self.max_exp_avg_sq, self.exp_avg_sq)
        denom = second_moment.sqrt().div_(bias_correction2_sqrt).add_(self.eps)
        # param.addcdiv_(exp_avg, denom, value=-step_size): value * exp_avg first, as torch's kernel
        weights.addcdiv_(self.exp_avg * neg_step_size, denom)


class StackedRMSprop(StackedUpdate):
    """torch.optim.RMSprop (_single_tensor_rmsprop): alpha, eps, weight_decay, momentum, centered, maximize
    per cell."""

    def __init__(self, cells: Sequence[RunSpec]):
        super().__init__(cells)
        self.alpha = column(self.values("alpha"))
        self.one_minus_alpha = column([1 - alpha for alpha in self.values("alpha")])
        self.eps = column(self.values("eps"))
        with_momentum = [value > 0 for value in self.values("momentum")]
        self.any_momentum, self.with_momentum = any(with_momentum), self.mask(with_momentum)
        self.momentum = column(self.values("momentum"))
        centered = [bool(flag) for flag in self.values("centered")]
        self.any_centered, self.centered = any(centered), self.mask(centered)
        self.square_avg: torch.Tensor | None = None
        self.grad_avg: torch.Tensor | None = None
        self.momentum_buffer: torch.Tensor | None = None

    def step(self, weights: torch.Tensor, gradients: torch.Tensor) -> None:
        if self.square_avg is None:
            self.square_avg = torch.zeros_like(weights)
            self.grad_avg = torch.zeros_like(weights) if self.any_centered else None
            self.momentum_buffer = torch.zeros_like(weights) if self.any_momentum else None
        grad = self.gradient(weights, gradients)
        self.square_avg.mul_(self.alpha).addcmul_(grad * self.one_minus_alpha, grad)
        if self.grad_avg is not None:
            self.grad_avg.lerp_(grad, self.one_minus_alpha)
            centered_avg = self.square_avg.addcmul(self.grad_avg, self.grad_avg, value=-1).sqrt_()
            avg = select(self.centered, centered_avg, self.square_avg.sqrt())
        else:
            avg = self.square_avg.sqrt()
        avg = avg.add_(self.eps)
        if self.momentum_buffer is None:
            weights.addcdiv_(grad * self.neg_lr, avg)  # param.addcdiv_(grad, avg, value=-lr)
            return
        self.momentum_buffer.mul_(self.momentum).addcdiv_(grad, avg)
        with_momentum = weights.addcmul(self.momentum_buffer, self.neg_lr)  # param.add_(buf, alpha=-lr)
        weights.copy_(select(self.with_momentum, with_momentum, weights.addcdiv(grad * self.neg_lr, avg)))


class StackedAdagrad(StackedUpdate):
    """torch.optim.Adagrad (_single_tensor_adagrad, dense gradients): lr_decay, weight_decay,
    initial_accumulator_value, eps, maximize per cell."""

    def __init__(self, cells: Sequence[RunSpec]):
        super().__init__(cells)
        self.lr_decays = self.values("lr_decay")
        self.initial_accumulator = column(self.values("initial_accumulator_value"))
        self.eps = column(self.values("eps"))
        self.steps = 0
        self.state_sum: torch.Tensor | None = None

    def step(self, weights: torch.Tensor, gradients: torch.Tensor) -> None:
        if self.state_sum is None:
            self.state_sum = self.initial_accumulator.expand_as(weights).clone()  # torch.full_like(p, value)
        self.steps += 1
        grad = self.gradient(weights, gradients)
        neg_clr = column([-(lr / (1 + (self.steps - 1) * lr_decay))
                          for lr, lr_decay in zip(self.lrs, self.lr_decays, strict=True)])
        self.state_sum.addcmul_(grad, grad, value=1)
        std = self.state_sum.sqrt().add_(self.eps)
        weights.addcdiv_(grad * neg_clr, std)  # param.addcdiv_(grad, std, value=-clr)


# Update rule of each torch.optim kind; adam and adamw share one (AdamW is Adam with decoupled decay).
UPDATE_RULES: dict[str, type[StackedUpdate]] = {
    "sgd": StackedSGD, "adam": StackedAdam, "rmsprop": StackedRMSprop, "adagrad": StackedAdagrad,
}
UPDATE_RULE_OF_KIND = {"sgd": "sgd", "adam": "adam", "adamw": "adam", "rmsprop": "rmsprop",
                       "adagrad": "adagrad"}

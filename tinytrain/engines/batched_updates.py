"""torch.optim's updates for stacked weights: every cell's row of the vmap engine updated at once.

Each rule is torch.optim's single-tensor step rewritten operation by operation for stacked rows: each
per-cell scalar (lr, betas, bias corrections, ...) is computed in Python floats as torch computes it and
applied as a [cells, 1] float32 column (torch turns its Python-float scalars into float32 the same way), so
every element sees the same float operations as in torch.optim. One update runs per update rule over all of
its cells (AdamW is Adam with decoupled weight decay: one rule).

The temporaries of a step live in scratch buffers kept from step to step: a fresh temporary of a few MB
would come from (and go back to) the kernel on every step, and its page faults cost more than the
arithmetic. The gradient rows are the batched net's buffer, overwritten by its next backward, so the sign
and the weight decay are applied to them in place.

One kernel is sidestepped where that keeps every bit: torch's float32 sqrt takes about four times as long
for an exact zero as for other numbers on this CPU (thirty times for a subnormal), and optimizer state is
full of zeros (a unit a ReLU keeps dead gets zero gradients: half of Adam's second moments in the default
grid). StackedUpdate.sqrt raises such values to the smallest normal float first, whenever that provably
gives the same `sqrt(v) [/ d] + eps` (see there).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from tinytrain.spec import RunSpec


def column(values: Sequence[float]) -> torch.Tensor:
    """Per-cell scalars as a [cells, 1] float32 column that broadcasts over the cells' weight rows."""
    return torch.tensor(list(values), dtype=torch.float32).unsqueeze(1)


TINY = torch.finfo(torch.float32).tiny  # the smallest normal float32


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
        self.buffers: dict[str, torch.Tensor] = {}
        self.never_negative = True  # what sqrt takes the root of is >= 0 (or NaN): a sum of squares
        self.floor_exact: bool | None = None  # sqrt's floor keeps the bits at every step (None: not known yet)

    def scratch(self, name: str, like: torch.Tensor) -> torch.Tensor:
        """A buffer shaped like `like`, the same one at every step (its contents are the caller's)."""
        buffer = self.buffers.get(name)
        if buffer is None or buffer.shape != like.shape:
            buffer = self.buffers[name] = torch.empty_like(like)
        return buffer

    def sqrt(self, values: torch.Tensor, name: str, divisor: torch.Tensor | None = None) -> torch.Tensor:
        """torch.sqrt(values) into the scratch buffer `name`, for a denominator `sqrt(values) [/ divisor] +
        self.eps` (the caller divides and adds), the same bits as torch.optim's.

        When it changes no bit of that denominator, the values are raised to TINY first, which is four times
        faster for the many zeros of optimizer state. It changes none when `sqrt(TINY) [/ d] + eps == eps`
        for every cell, checked with the same kernels on the cells' own columns: a value at or above TINY
        is left as it is; below it (0, or a subnormal), sqrt(v) [/ d] lies between 0 and sqrt(TINY) [/ d],
        and since 0 + eps is eps and rounding is monotonic, it gives eps either way. NaN and inf pass
        through the floor; a negative value (whose sqrt is NaN) cannot occur where `never_negative` holds.
        Without a divisor the check is made once; with one (Adam's bias correction, which changes every
        step) at every step.
        """
        out = self.scratch(name, values)
        exact = self.floor_exact
        if exact is None:
            floor = torch.sqrt(torch.full_like(self.eps, TINY))
            floor = floor if divisor is None else floor.div_(divisor)
            exact = self.never_negative and torch.equal(floor.add_(self.eps), self.eps)
            if divisor is None:
                self.floor_exact = exact
        if exact:
            return torch.clamp_min(values, TINY, out=out).sqrt_()
        return torch.sqrt(values, out=out)

    def values(self, name: str) -> list[Any]:
        return [hyperparameters[name] for hyperparameters in self.hyperparameters]

    def set_lrs(self, lrs: Sequence[float]) -> None:
        """The lr each cell's next step uses (a schedule's, as a Python float): what depends on it, anew."""
        if list(lrs) == self.lrs:
            return
        self.lrs = list(lrs)
        self.neg_lr = column([-lr for lr in self.lrs])
        self.lrs_changed()

    def lrs_changed(self) -> None:
        """Recompute what a rule derives from the lrs beside neg_lr (AdamW's decay factor)."""

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
        """torch.optim's `grad if not maximize else -grad`, then `grad.add(param, alpha=weight_decay)`, in place
        on the gradient rows (the net's buffer, which its next backward overwrites)."""
        if self.sign is not None:
            gradients.mul_(self.sign)  # a product by -1 is exact
        if self.weight_decay is not None:
            gradients.addcmul_(weights, self.weight_decay)
        return gradients

    def step(self, weights: torch.Tensor, gradients: torch.Tensor) -> None:
        """Update the cells' weight rows in place from their gradient rows."""
        raise NotImplementedError

    def keep(self, cells: Sequence[int]) -> None:
        """Go on with only these of its cells (indices in its rows, in order): when cells end, the batch drops
        their rows, and each rule its per-cell settings and state.

        Every tensor and list this rule holds is per cell (a row or an item a cell; a test checks it for
        every rule), so each is cut down to the kept cells; the scratch buffers are made anew at the new
        size. Flags such as `any_amsgrad` stay as they were: a branch that no kept cell takes computes
        what torch.where then leaves out, the same values as before.
        """
        count, index = len(self.lrs), torch.tensor(list(cells), dtype=torch.long)
        for name, value in vars(self).items():
            if isinstance(value, torch.Tensor):
                assert len(value) == count, f"{type(self).__name__}.{name} is not per cell"
                setattr(self, name, value.index_select(0, index))
            elif isinstance(value, list):
                assert len(value) == count, f"{type(self).__name__}.{name} is not per cell"
                setattr(self, name, [value[cell] for cell in cells])
        self.buffers = {}


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
        self.one_minus_dampening = column(
            [
                1 - dampening if value != 0 else 1.0
                for value, dampening in zip(momentum, self.values("dampening"), strict=True)
            ]
        )
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
            grad = select(self.nesterov, grad.addcmul(buffer, self.momentum), buffer) if self.any_nesterov else buffer
        weights.addcmul_(grad, self.neg_lr)  # param.add_(grad, alpha=-lr)


class StackedAdam(StackedUpdate):
    """torch.optim.Adam and AdamW (_single_tensor_adam): betas, eps, weight_decay (coupled, or decoupled for
    AdamW and Adam's decoupled_weight_decay), amsgrad, maximize per cell."""

    def __init__(self, cells: Sequence[RunSpec]):
        super().__init__(cells)
        decoupled = [
            cell.kind == "adamw" or bool(h.get("decoupled_weight_decay"))
            for cell, h in zip(cells, self.hyperparameters, strict=True)
        ]
        decay = self.values("weight_decay")
        coupled_decay = [0.0 if is_decoupled else wd for wd, is_decoupled in zip(decay, decoupled, strict=True)]
        self.weight_decay = column(coupled_decay) if any(coupled_decay) else None  # grad.add(param, alpha=wd)
        self.decoupled = decoupled
        self.decay_factor: torch.Tensor | None = None
        self.lrs_changed()
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

    def lrs_changed(self) -> None:
        decay_factors = [
            1 - lr * wd if is_decoupled else 1.0  # param.mul_(1 - lr * weight_decay)
            for lr, wd, is_decoupled in zip(self.lrs, self.values("weight_decay"), self.decoupled, strict=True)
        ]
        self.decay_factor = column(decay_factors) if any(factor != 1.0 for factor in decay_factors) else None

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
        scaled = torch.mul(grad, self.one_minus_beta2, out=self.scratch("scaled", grad))
        self.exp_avg_sq.mul_(self.beta2).addcmul_(scaled, grad)
        bias_correction2_sqrt = column([(1 - beta2**self.steps) ** 0.5 for beta2 in self.beta2s])
        neg_step_size = column(
            [-(lr / (1 - beta1**self.steps)) for lr, beta1 in zip(self.lrs, self.beta1s, strict=True)]
        )
        second_moment = self.exp_avg_sq
        if self.max_exp_avg_sq is not None:
            torch.maximum(self.max_exp_avg_sq, self.exp_avg_sq, out=self.max_exp_avg_sq)
            second_moment = select(self.amsgrad, self.max_exp_avg_sq, self.exp_avg_sq)
        denom = self.sqrt(second_moment, "denom", bias_correction2_sqrt).div_(bias_correction2_sqrt).add_(self.eps)
        # param.addcdiv_(exp_avg, denom, value=-step_size): value * exp_avg first, as torch's kernel
        weights.addcdiv_(torch.mul(self.exp_avg, neg_step_size, out=scaled), denom)


class StackedRMSprop(StackedUpdate):
    """torch.optim.RMSprop (_single_tensor_rmsprop): alpha, eps, weight_decay, momentum, centered, maximize
    per cell."""

    def __init__(self, cells: Sequence[RunSpec]):
        super().__init__(cells)
        self.alpha = column(self.values("alpha"))
        self.one_minus_alpha = column([1 - alpha for alpha in self.values("alpha")])
        self.eps = column(self.values("eps"))
        self.never_negative = all(alpha <= 1 for alpha in self.values("alpha"))  # 1 - alpha >= 0
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
        scaled = torch.mul(grad, self.one_minus_alpha, out=self.scratch("scaled", grad))
        self.square_avg.mul_(self.alpha).addcmul_(scaled, grad)
        if self.grad_avg is not None:
            self.grad_avg.lerp_(grad, self.one_minus_alpha)
            centered_avg = self.square_avg.addcmul(self.grad_avg, self.grad_avg, value=-1).sqrt_()
            avg = select(self.centered, centered_avg, self.square_avg.sqrt())
        else:
            avg = self.sqrt(self.square_avg, "avg")
        avg = avg.add_(self.eps)
        if self.momentum_buffer is None:
            # param.addcdiv_(grad, avg, value=-lr): value * grad first, as torch's kernel
            weights.addcdiv_(torch.mul(grad, self.neg_lr, out=scaled), avg)
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
        neg_clr = column(
            [-(lr / (1 + (self.steps - 1) * lr_decay)) for lr, lr_decay in zip(self.lrs, self.lr_decays, strict=True)]
        )
        self.state_sum.addcmul_(grad, grad, value=1)
        std = self.sqrt(self.state_sum, "std").add_(self.eps)
        # param.addcdiv_(grad, std, value=-clr): value * grad first, as torch's kernel
        weights.addcdiv_(torch.mul(grad, neg_clr, out=self.scratch("scaled", grad)), std)


# Each update rule; adam and adamw share one (AdamW is Adam with decoupled decay).
UPDATE_RULES: dict[str, type[StackedUpdate]] = {
    "sgd": StackedSGD,
    "adam": StackedAdam,
    "rmsprop": StackedRMSprop,
    "adagrad": StackedAdagrad,
}
UPDATE_RULE_OF_KIND = {
    "sgd": "sgd",
    "adam": "adam",
    "adamw": "adam",
    "rmsprop": "rmsprop",
    "adagrad": "adagrad",
}  # its keys are optimizers.VMAP_KINDS (a test checks)

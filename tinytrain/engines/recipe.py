"""The training recipe in torch: a run's learning-rate schedule as torch.optim.lr_scheduler objects.

Every schedule is a torch scheduler (or pytorch-optimizer's WSD, a LambdaLR of a pure function of the step),
so the lr at each step is what torch gives for those settings, and a scheduler's state_dict (its step count
and last lr, beside the optimizer's) decides what comes next: a run stopped at step k continues bit for bit.

    constant       no scheduler
    warmup         LinearLR from lr / (warmup + 1) up to lr over `warmup` steps, then lr
    cosine         CosineAnnealingLR(T_max=steps) down to 0
    warmup-cosine  SequentialLR(warmup's LinearLR, CosineAnnealingLR(T_max=steps - warmup), milestones=[warmup])
    wsd            pytorch_optimizer.get_wsd_schedule: linear warmup, stable, a 1-sqrt decay of `decay` steps to 0
    linear         LinearLR(1 -> 0, total_iters=steps)
    step           StepLR(step_size, gamma)

The batched engine steps these same schedulers (one per distinct lr and schedule of its cells, each on an
LrHolder, an optimizer of one parameter group) and feeds their
floats to its stacked updates: both engines use the same Python floats.
"""

from __future__ import annotations

import torch
from torch.optim import lr_scheduler

from tinytrain.spec import RunSpec
from tinytrain.spec.settings import length_in_steps


def make_scheduler(optimizer: torch.optim.Optimizer, spec: RunSpec) -> lr_scheduler.LRScheduler | None:
    """The run's schedule over a torch optimizer, stepped once after each optimizer step (None: constant)."""
    steps, schedule = spec.steps, spec.schedule
    warmup = length_in_steps(spec.warmup, steps)
    if schedule == "constant":
        return None
    if schedule == "warmup":
        return _warmup(optimizer, warmup)
    if schedule == "cosine":
        return lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
    if schedule == "warmup-cosine":
        cosine = lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps - warmup)
        return lr_scheduler.SequentialLR(optimizer, [_warmup(optimizer, warmup), cosine], milestones=[warmup])
    if schedule == "wsd":
        from pytorch_optimizer import get_wsd_schedule

        decay = length_in_steps(spec.decay, steps)
        return get_wsd_schedule(optimizer, warmup, steps - warmup - decay, decay)
    if schedule == "linear":
        return lr_scheduler.LinearLR(optimizer, start_factor=1.0, end_factor=0.0, total_iters=steps)
    if schedule == "step":
        return lr_scheduler.StepLR(optimizer, step_size=length_in_steps(spec.step_size, steps), gamma=spec.gamma)
    raise ValueError(f"unknown schedule {schedule!r}")


def _warmup(optimizer: torch.optim.Optimizer, warmup: int) -> lr_scheduler.LinearLR:
    """Step i < warmup trains at lr * (i + 1) / (warmup + 1); step `warmup` on at lr."""
    return lr_scheduler.LinearLR(optimizer, start_factor=1.0 / (warmup + 1), end_factor=1.0, total_iters=warmup)


class Schedules:
    """The schedulers of a run's optimizer (two for muon, whose AdamW part has its own lr), stepped together."""

    def __init__(self, optimizer, spec: RunSpec):
        inner = getattr(optimizer, "optimizers", (optimizer,))
        self.optimizer = inner[0]
        self.schedulers = [s for s in (make_scheduler(o, spec) for o in inner) if s is not None]

    @property
    def lr(self) -> float:
        """The lr the next optimizer step uses (the first parameter group's)."""
        return self.optimizer.param_groups[0]["lr"]

    def step(self) -> None:
        for scheduler in self.schedulers:
            scheduler.step()

    def state_dict(self) -> list[dict]:
        return [scheduler.state_dict() for scheduler in self.schedulers]

    def load_state_dict(self, states: list[dict]) -> None:
        for scheduler, state in zip(self.schedulers, states, strict=True):
            scheduler.load_state_dict(state)


class LrHolder(torch.optim.Optimizer):
    """A torch optimizer with one parameter group and no parameters: what a scheduler needs to hold an lr.

    torch.optim.Optimizer's own __init__ is skipped: the first optimizer a process builds imports torch's
    compiler stack (about a second of CPU), which the batched engine otherwise never needs. A scheduler reads
    and writes only param_groups, and wraps step()."""

    def __init__(self, lr: float):  # noqa: D107 - no super().__init__: see the class docstring
        self.defaults = {"lr": lr}
        self.state = {}
        self.param_groups = [{"params": [], "lr": lr}]

    def step(self, closure=None) -> None:
        return None


class LearningRates:
    """The lr of each cell of a batch at each step, from a real torch scheduler on a one-parameter optimizer:
    the floats the sequential engine's optimizer would hold. Cells with the same lr and schedule share one."""

    def __init__(self, specs: list[RunSpec]):
        self.rows: list[int | None] = []  # each cell's scheduler (an index in self.schedulers), None: constant
        self.constant = [spec.lr for spec in specs]
        self.optimizers: list[LrHolder] = []
        self.schedulers: list[lr_scheduler.LRScheduler] = []
        shared: dict[tuple, int] = {}
        for spec in specs:
            if spec.schedule == "constant":
                self.rows.append(None)
                continue
            schedule = (spec.lr, spec.steps, spec.schedule, spec.warmup, spec.decay, spec.step_size, spec.gamma)
            if schedule not in shared:
                dummy = LrHolder(spec.lr)
                shared[schedule] = len(self.schedulers)
                self.optimizers.append(dummy)
                self.schedulers.append(make_scheduler(dummy, spec))
            self.rows.append(shared[schedule])
        self.stepped = False

    @property
    def varies(self) -> bool:
        return bool(self.schedulers)

    def scheduled(self, row: int) -> bool:
        return self.rows[row] is not None

    def current(self) -> list[float]:
        lrs = [optimizer.param_groups[0]["lr"] for optimizer in self.optimizers]
        return [lr if index is None else lrs[index] for lr, index in zip(self.constant, self.rows, strict=True)]

    def step(self) -> None:
        if not self.stepped:  # torch warns of a scheduler stepped before its optimizer: it changes nothing here
            for optimizer in self.optimizers:
                optimizer.step()
            self.stepped = True
        for scheduler in self.schedulers:
            scheduler.step()

    def keep(self, rows: list[int]) -> None:
        """Go on with these cells only (a scheduler no kept cell uses goes on stepping: it is cheap)."""
        self.rows = [self.rows[row] for row in rows]
        self.constant = [self.constant[row] for row in rows]

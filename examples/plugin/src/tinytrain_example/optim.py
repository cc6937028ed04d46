"""Signum: sign-SGD with momentum (Bernstein et al., 2018, "signSGD: Compressed Optimisation for
Non-Convex Problems"), with decoupled weight decay.

    m <- momentum * m + (1 - momentum) * g
    p <- p * (1 - lr * weight_decay) - lr * sign(m)

Every coordinate moves by exactly lr (or not at all): the update's size does not depend on the gradient's.
"""

from __future__ import annotations

import torch


class Signum(torch.optim.Optimizer):
    def __init__(self, params, lr: float = 1e-3, momentum: float = 0.9, weight_decay: float = 0.0):
        if lr <= 0:
            raise ValueError(f"Signum needs lr > 0, got {lr}")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"Signum needs momentum in [0, 1), got {momentum}")
        super().__init__(params, {"lr": lr, "momentum": momentum, "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, momentum, weight_decay = group["lr"], group["momentum"], group["weight_decay"]
            for parameter in group["params"]:
                if parameter.grad is None:
                    continue
                state = self.state[parameter]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(parameter)
                buffer = state["momentum_buffer"]
                buffer.mul_(momentum).add_(parameter.grad, alpha=1 - momentum)
                if weight_decay:
                    parameter.mul_(1 - lr * weight_decay)
                parameter.add_(torch.sign(buffer), alpha=-lr)
        return loss

"""The optimizers a sweep can use: torch.optim's, with torch's defaults, and nothing else.

The table below is the single place that says which hyperparameters each optimizer takes and what torch
(2.13) uses by default. It is plain data so that validating an experiment (and `--dry-run`) needs no torch
import; a test checks it against the signatures of torch.optim.
"""

from __future__ import annotations

from typing import Any

# name -> (torch.optim class name, torch's default lr, {hyperparameter: torch's default})
# Only the hyperparameters that change the mathematics are offered; implementation switches
# (foreach, fused, capturable, differentiable) keep torch's defaults.
OPTIMIZERS: dict[str, tuple[str, float, dict[str, Any]]] = {
    "sgd": ("SGD", 1e-3, {"momentum": 0.0, "dampening": 0.0, "weight_decay": 0.0, "nesterov": False,
                          "maximize": False}),
    "adam": ("Adam", 1e-3, {"betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.0, "amsgrad": False,
                            "maximize": False, "decoupled_weight_decay": False}),
    "adamw": ("AdamW", 1e-3, {"betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 1e-2, "amsgrad": False,
                              "maximize": False}),
    "rmsprop": ("RMSprop", 1e-2, {"alpha": 0.99, "eps": 1e-8, "weight_decay": 0.0, "momentum": 0.0,
                                  "centered": False, "maximize": False}),
    "adagrad": ("Adagrad", 1e-2, {"lr_decay": 0.0, "weight_decay": 0.0, "initial_accumulator_value": 0.0,
                                  "eps": 1e-10, "maximize": False}),
}


def build_optimizer(kind: str, params, lr: float, hyperparameters: dict[str, Any]):
    """A torch.optim optimizer of the given kind over params."""
    import torch

    class_name = OPTIMIZERS[kind][0]
    return getattr(torch.optim, class_name)(params, lr=lr, **hyperparameters)

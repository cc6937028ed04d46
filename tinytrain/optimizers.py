"""The optimizers a sweep can use, with their makers' defaults: torch.optim's and pytorch-optimizer's.

The table below is the single place that says which hyperparameters each optimizer takes and what its
implementation (torch 2.13, pytorch-optimizer 4.1) uses by default. It is plain data so that validating an
experiment (and `--dry-run`, `tinytrain optimizers`) needs no torch import; a test checks it against the
signatures of the classes themselves.

Left out: torch's LBFGS (its step needs a closure that re-evaluates the loss), SparseAdam (sparse gradients
only), pytorch-optimizer's SophiaH (its step needs a Hessian estimate from a second backward pass).
"""

from __future__ import annotations

from typing import Any

from tinytrain import plugins

# Where a class name without a dot lives; "pytorch_optimizer.X" names the package pytorch-optimizer
# (Apache-2.0, as each of the files these optimizers come from).
TORCH = "torch.optim"
# Muon orthogonalises the update of a weight matrix. As its authors do, it trains the hidden layers'
# 2-D weight matrices only; AdamW trains the rest (convolution kernels, biases, the output layer), with
# the hyperparameters prefixed adamw_ below. Both lists are recorded as params of every muon run.
MUON_PARAMETERS = ("fc1.weight", "fc2.weight")
ADAMW_WITH_MUON = (
    "conv1.weight",
    "conv1.bias",
    "conv2.weight",
    "conv2.bias",
    "fc1.bias",
    "fc2.bias",
    "fc3.weight",
    "fc3.bias",
)

# name -> (class, default lr, {hyperparameter: default})
# Only hyperparameters that change the mathematics are offered; implementation switches (foreach, fused,
# capturable, differentiable) keep their defaults. None means "derived by the optimizer" (e.g. Prodigy's
# beta3 = sqrt(beta2)); it can be set to a number.
OPTIMIZERS: dict[str, tuple[str, float, dict[str, Any]]] = {
    "sgd": (
        "SGD",
        1e-3,
        {"momentum": 0.0, "dampening": 0.0, "weight_decay": 0.0, "nesterov": False, "maximize": False},
    ),
    "adam": (
        "Adam",
        1e-3,
        {
            "betas": (0.9, 0.999),
            "eps": 1e-8,
            "weight_decay": 0.0,
            "amsgrad": False,
            "maximize": False,
            "decoupled_weight_decay": False,
        },
    ),
    "adamw": (
        "AdamW",
        1e-3,
        {"betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 1e-2, "amsgrad": False, "maximize": False},
    ),
    "rmsprop": (
        "RMSprop",
        1e-2,
        {"alpha": 0.99, "eps": 1e-8, "weight_decay": 0.0, "momentum": 0.0, "centered": False, "maximize": False},
    ),
    "adagrad": (
        "Adagrad",
        1e-2,
        {"lr_decay": 0.0, "weight_decay": 0.0, "initial_accumulator_value": 0.0, "eps": 1e-10, "maximize": False},
    ),
    "nadam": (
        "NAdam",
        2e-3,
        {
            "betas": (0.9, 0.999),
            "eps": 1e-8,
            "weight_decay": 0.0,
            "momentum_decay": 4e-3,
            "decoupled_weight_decay": False,
            "maximize": False,
        },
    ),
    "radam": (
        "RAdam",
        1e-3,
        {"betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.0, "decoupled_weight_decay": False, "maximize": False},
    ),
    "adamax": ("Adamax", 2e-3, {"betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.0, "maximize": False}),
    "adadelta": ("Adadelta", 1.0, {"rho": 0.9, "eps": 1e-6, "weight_decay": 0.0, "maximize": False}),
    "asgd": ("ASGD", 1e-2, {"lambd": 1e-4, "alpha": 0.75, "t0": 1e6, "weight_decay": 0.0, "maximize": False}),
    "rprop": ("Rprop", 1e-2, {"etas": (0.5, 1.2), "step_sizes": (1e-6, 50), "maximize": False}),
    "adafactor": (
        "Adafactor",
        1e-2,
        {"beta2_decay": -0.8, "eps": (None, 1e-3), "d": 1.0, "weight_decay": 0.0, "maximize": False},
    ),
    "muon": (
        "Muon",
        1e-3,
        {
            "weight_decay": 0.1,
            "momentum": 0.95,
            "nesterov": True,
            "ns_coefficients": (3.4445, -4.775, 2.0315),
            "eps": 1e-7,
            "ns_steps": 5,
            "adjust_lr_fn": None,
            "adamw_lr": 1e-3,
            "adamw_betas": (0.9, 0.999),
            "adamw_eps": 1e-8,
            "adamw_weight_decay": 1e-2,
        },
    ),
    "lion": (
        "pytorch_optimizer.Lion",
        1e-4,
        {"betas": (0.9, 0.99), "weight_decay": 0.0, "weight_decouple": True, "fixed_decay": False, "maximize": False},
    ),
    "adopt": (
        "pytorch_optimizer.ADOPT",
        1e-3,
        {
            "betas": (0.9, 0.9999),
            "weight_decay": 0.0,
            "weight_decouple": False,
            "fixed_decay": False,
            "eps": 1e-6,
            "maximize": False,
        },
    ),
    "prodigy": (
        "pytorch_optimizer.Prodigy",
        1.0,
        {
            "betas": (0.9, 0.999),
            "beta3": None,
            "d0": 1e-6,
            "d_coef": 1.0,
            "growth_rate": float("inf"),
            "weight_decay": 0.0,
            "weight_decouple": True,
            "fixed_decay": False,
            "bias_correction": False,
            "safeguard_warmup": False,
            "eps": 1e-8,
            "maximize": False,
        },
    ),
    "schedulefree-adamw": (
        "pytorch_optimizer.ScheduleFreeAdamW",
        2.5e-3,
        {
            "betas": (0.9, 0.999),
            "weight_decay": 0.0,
            "r": 0.0,
            "weight_lr_power": 2.0,
            "warmup_steps": 0,
            "decoupling_c": 0.0,
            "ams_bound": False,
            "eps": 1e-8,
            "maximize": False,
        },
    ),
    "soap": (
        "pytorch_optimizer.SOAP",
        3e-3,
        {
            "betas": (0.95, 0.95),
            "shampoo_beta": None,
            "weight_decay": 1e-2,
            "precondition_frequency": 10,
            "max_precondition_dim": 10000,
            "merge_dims": False,
            "precondition_1d": False,
            "correct_bias": True,
            "normalize_gradient": False,
            "data_format": "channels_first",
            "eps": 1e-8,
            "maximize": False,
        },
    ),
    "ademamix": (
        "pytorch_optimizer.AdEMAMix",
        1e-3,
        {
            "betas": (0.9, 0.999, 0.9999),
            "weight_decay": 0.0,
            "weight_decouple": False,
            "fixed_decay": False,
            "alpha": 5.0,
            "t_alpha_beta3": None,
            "eps": 1e-8,
            "maximize": False,
        },
    ),
}

# The values a hyperparameter given as text may take.
CHOICES: dict[str, tuple[str, ...]] = {
    "adjust_lr_fn": ("original", "match_rms_adamw"),
    "data_format": ("channels_first", "channels_last"),
}

# The kinds the vmap engine has a stacked update for (tinytrain/engines/batched.py; a test keeps the two in step).
VMAP_KINDS = ("sgd", "adam", "adamw", "rmsprop", "adagrad")


def plugin_class_path(kind: str) -> str:
    """The import path of a plugin optimizer's name (an import path, or an installed entry point's name)."""
    return plugins.installed_class_path(kind, plugins.OPTIMIZER_GROUP, "optimizer")


def build_optimizer(kind: str, params, lr: float, hyperparameters: dict[str, Any]):
    """The optimizer of the given kind over params: a torch.optim, pytorch-optimizer or plugin instance.

    params may be named parameters (`net.named_parameters()`) or plain ones; muon needs the names to split.
    """
    import torch

    if kind == "muon":
        return _muon_with_adamw(list(params), lr, hyperparameters)
    params = [parameter for _name, parameter in params] if _is_named(params) else params
    if kind not in OPTIMIZERS:
        return plugins.optimizer_class(plugin_class_path(kind))(params, lr=lr, **hyperparameters)
    class_path = OPTIMIZERS[kind][0]
    if "." in class_path:
        import importlib

        module, _, class_name = class_path.rpartition(".")
        return getattr(importlib.import_module(module), class_name)(params, lr=lr, **hyperparameters)
    return getattr(torch.optim, class_path)(params, lr=lr, **hyperparameters)


def _is_named(params) -> bool:
    if not isinstance(params, list):
        return False
    return bool(params) and isinstance(params[0], tuple)


def _muon_with_adamw(named: list, lr: float, hyperparameters: dict[str, Any]):
    """Muon on MUON_PARAMETERS and AdamW on the rest, stepped together as one optimizer."""
    import torch

    if not named or not isinstance(named[0], tuple):
        raise ValueError("muon splits the net's parameters by name: pass net.named_parameters()")
    by_name = dict(named)
    if set(by_name) != set(MUON_PARAMETERS) | set(ADAMW_WITH_MUON):
        raise ValueError(f"muon is set up for the LeNet's parameters, got {', '.join(by_name)}")
    muon_options = {k: v for k, v in hyperparameters.items() if not k.startswith("adamw_")}
    adamw_options = {k.removeprefix("adamw_"): v for k, v in hyperparameters.items() if k.startswith("adamw_")}
    muon = torch.optim.Muon([by_name[name] for name in MUON_PARAMETERS], lr=lr, **muon_options)
    adamw = torch.optim.AdamW([by_name[name] for name in ADAMW_WITH_MUON], **adamw_options)
    return _Together(muon, adamw)


class _Together:
    """Two optimizers over disjoint parameters, used as one (zero_grad, step)."""

    def __init__(self, *optimizers):
        self.optimizers = optimizers

    def zero_grad(self, set_to_none: bool = True) -> None:
        for optimizer in self.optimizers:
            optimizer.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        for optimizer in self.optimizers:
            optimizer.step()

    def state_dict(self) -> dict[str, Any]:
        return {"optimizers": [optimizer.state_dict() for optimizer in self.optimizers]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for optimizer, own in zip(self.optimizers, state["optimizers"], strict=True):
            optimizer.load_state_dict(own)

"""Plugins: an optimizer or a problem from outside tinytrain, named by import path or by entry point.

`package.module:Class` names a class directly; an installed distribution can also register names in the
entry-point groups below (name = "module:Class"), which an experiment then uses like a built-in. Finding
an entry point reads the installed metadata only; the plugin's module (and with it, often, torch) is
imported only when an experiment names it. Every failure is a PluginError: one line naming the value and
the fix. A class is described by its constructor's signature (its defaults) and by its provenance: the
import path, the distribution and version it was installed with, and a sha256 of its module's source.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import inspect
import re
import sys
from importlib import metadata
from typing import Any

from tinytrain.errors import ConfigError, did_you_mean

OPTIMIZER_GROUP = "tinytrain.optimizers"
PROBLEM_GROUP = "tinytrain.problems"
# Constructor parameters that choose an implementation, not the mathematics: kept at their defaults.
IMPLEMENTATION_SWITCHES = ("foreach", "fused", "capturable", "differentiable")
# What tinytrain passes to a problem's constructor itself, when the constructor asks for it by name.
PROBLEM_INPUTS = ("data_seed", "batch_size")
REQUIRED = "<required>"  # a constructor parameter without a default: the experiment must set it
IMPORT_PATH = re.compile(r"[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*:[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*")


class PluginError(ConfigError):
    """A plugin that cannot be used: not importable, not the right kind of class, a bad signature."""


def is_import_path(name: Any) -> bool:
    return isinstance(name, str) and IMPORT_PATH.fullmatch(name) is not None


@functools.cache
def entry_points(group: str) -> dict[str, str]:
    """name -> "module:Class" of the entry points installed in a group (metadata only, nothing imported)."""
    return {point.name: point.value for point in metadata.entry_points(group=group)}


def class_path(name: str, group: str) -> str | None:
    """The import path a plugin name stands for: itself, or its entry point's; None if it names no plugin."""
    if is_import_path(name):
        return name
    return entry_points(group).get(name)


def installed_class_path(name: str, group: str, what: str) -> str:
    """The import path of a plugin name (what: 'optimizer' or 'problem'), or a PluginError: no such entry point
    here, where the runs train."""
    path = class_path(name, group)
    if path is None:
        raise PluginError(
            f"{what} {name!r} is no entry point of {group} here: install the package that provides it where the "
            "runs train"
        )
    return path


def load_class(path: str, what: str) -> type:
    """The class at "module:Class", or a PluginError that says why not (what: 'optimizer' or 'problem')."""
    module_name, _, attribute = path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        missing = error.name or module_name
        raise PluginError(
            f"{what} {path!r}: no module named {missing!r} here: install the package that provides it "
            "(pip install ...) or put its folder on PYTHONPATH"
        ) from None
    except Exception as error:  # noqa: BLE001 - any error of the plugin's own code, in one line
        raise PluginError(f"{what} {path!r}: importing {module_name} raised {_first_line(error)}") from None
    found: Any = module
    for part in attribute.split("."):
        found = getattr(found, part, None)
        if found is None:
            names = [name for name in dir(module) if not name.startswith("_")]
            raise PluginError(f"{what} {path!r}: module {module_name} has no {attribute!r}{did_you_mean(part, names)}")
    if not inspect.isclass(found):
        raise PluginError(f"{what} {path!r} is a {type(found).__name__}, not a class: name the class itself")
    return found


def optimizer_class(path: str) -> type:
    """The torch.optim.Optimizer subclass at path (imports torch only if the plugin's module did)."""
    found = load_class(path, "optimizer")
    # A module that did not import torch.optim holds no subclass of its Optimizer: say so without torch.
    if "torch.optim" not in sys.modules or not issubclass(found, sys.modules["torch.optim"].Optimizer):
        raise PluginError(
            f"optimizer {path!r} is not a torch.optim.Optimizer subclass: name a class derived from "
            "torch.optim.Optimizer"
        )
    return found


def optimizer_signature(path: str) -> tuple[float | None, dict[str, Any]]:
    """(default lr, {hyperparameter: default}) read from the optimizer's constructor.

    The first parameter takes the parameters to train; lr is the grid's; implementation switches and
    parameters whose default is not a plain value (a callable, a tensor) keep their defaults and are not
    offered. A parameter without a default is REQUIRED.
    """
    parameters = _constructor_parameters(optimizer_class(path), path, "optimizer")[1:]
    default_lr = None
    hyperparameters: dict[str, Any] = {}
    for parameter in parameters:
        default = REQUIRED if parameter.default is inspect.Parameter.empty else parameter.default
        if parameter.name == "lr":
            default_lr = _plain_lr(default)
        elif parameter.name not in IMPLEMENTATION_SWITCHES and (default == REQUIRED or is_plain(default)):
            hyperparameters[parameter.name] = _plain(default)
    return default_lr, hyperparameters


def problem_class(path: str) -> type:
    found = load_class(path, "problem")
    missing = [name for name in ("batches", "fixed_batch", "evaluate") if not callable(getattr(found, name, None))]
    if missing:
        raise PluginError(
            f"problem {path!r} lacks {', '.join(missing)}: a problem has batches(seed), fixed_batch() "
            "and evaluate(net, loss) (docs/plugins.md)"
        )
    return found


def problem_signature(path: str) -> dict[str, Any]:
    """{setting: default} of the problem's own settings: its constructor's parameters but PROBLEM_INPUTS."""
    settings = {}
    for parameter in _constructor_parameters(problem_class(path), path, "problem"):
        if parameter.name in PROBLEM_INPUTS:
            continue
        default = REQUIRED if parameter.default is inspect.Parameter.empty else parameter.default
        if default == REQUIRED or is_plain(default):
            settings[parameter.name] = _plain(default)
    return settings


def _constructor_parameters(found: type, path: str, what: str) -> list[inspect.Parameter]:
    try:
        signature = inspect.signature(found)
    except (TypeError, ValueError) as error:
        raise PluginError(f"{what} {path!r}: its constructor's signature cannot be read ({error})") from None
    return [
        parameter
        for parameter in signature.parameters.values()
        if parameter.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    ]


def is_plain(value: Any) -> bool:
    """A value an experiment file can hold and a param can record: None, a flag, a number, text, or a tuple."""
    if value is None or isinstance(value, bool | int | float | str):
        return True
    return isinstance(value, tuple | list) and all(
        is_plain(item) and not isinstance(item, tuple | list) for item in value
    )


def _plain(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


def _plain_lr(default: Any) -> float | None:
    if isinstance(default, int | float) and not isinstance(default, bool):
        return float(default)
    return None  # required, or a tensor: the grid gives lr


def provenance(path: str, role: str) -> dict[str, str]:
    """Where the class at path comes from, as tags: plugin.ROLE.{class, distribution, version, source_sha256}.

    The distribution is the installed one that provides the module's top-level package (none for a module
    on the path outside any distribution); the sha256 is of the module's source file as it is now.
    """
    module_name = path.partition(":")[0]
    module = sys.modules.get(module_name) or importlib.import_module(module_name)
    found = {"class": path}
    distributions = metadata.packages_distributions().get(module_name.partition(".")[0], [])
    if distributions:
        found["distribution"] = distributions[0]
        found["version"] = metadata.version(distributions[0])
    source = getattr(module, "__file__", None)
    if source:
        with open(source, "rb") as file:
            found["source_sha256"] = hashlib.sha256(file.read()).hexdigest()
    return {f"plugin.{role}.{key}": value for key, value in found.items()}


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0]}" if text else type(error).__name__

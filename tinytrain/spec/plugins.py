"""The plugins an experiment names, resolved once: by importing them, or from a sweep's record.

A new experiment resolves a plugin name (an import path, or an entry point's name) by importing its class
and reading its constructor's signature. The sweep's resolved experiment file then keeps what the signature
said, as a [plugins] table:

    [plugins.optimizers."signum"]
    class = "tinytrain_example.optim:SignumMomentum"
    lr = 0.01
    signature = '{"momentum": 0.9, "weight_decay": 0.0}'

so that reading the sweep back (compare, plot, the Python API) gives the same run specs and keys without
the plugin installed. The signature is JSON inside TOML: TOML has no None, and a default may be None.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from tinytrain import plugins
from tinytrain.errors import ConfigError, did_you_mean
from tinytrain.plugins import OPTIMIZER_GROUP, PROBLEM_GROUP, REQUIRED
from tinytrain.spec.catalogue import PROBLEMS


@dataclass(frozen=True)
class PluginOptimizer:
    class_path: str
    default_lr: float | None  # None: the constructor has no default lr, so the grid must give one
    defaults: dict[str, Any]  # hyperparameter -> default (REQUIRED: the variant must set it)


@dataclass(frozen=True)
class PluginProblem:
    class_path: str
    defaults: dict[str, Any]  # the problem's own settings -> default


class Plugins:
    """Plugin names -> what their classes' signatures say. recorded: the [plugins] table of a sweep's
    record (nothing is imported; only the names it lists are plugins), or None to resolve by import."""

    def __init__(self, recorded: dict[str, Any] | None = None) -> None:
        if recorded is not None and not isinstance(recorded, dict):
            raise ConfigError("plugins must be the table tinytrain writes into a sweep's record")
        self.recorded = recorded
        self.optimizers: dict[str, PluginOptimizer] = {}
        self.problems: dict[str, PluginProblem] = {}

    def optimizer(self, name: str) -> PluginOptimizer | None:
        """The plugin optimizer a name stands for, or None if it names none (import errors raise)."""
        if name not in self.optimizers:
            if self.recorded is not None:
                table = self.recorded.get("optimizers", {}).get(name)
                if table is None:
                    return None
                self.optimizers[name] = PluginOptimizer(table["class"], table.get("lr"), _signature(table))
            else:
                path = plugins.class_path(name, OPTIMIZER_GROUP)
                if path is None:
                    return None
                default_lr, defaults = plugins.optimizer_signature(path)
                self.optimizers[name] = PluginOptimizer(path, default_lr, defaults)
        return self.optimizers[name]

    def problem(self, name: str) -> PluginProblem | None:
        if name not in self.problems:
            if self.recorded is not None:
                table = self.recorded.get("problems", {}).get(name)
                if table is None:
                    return None
                self.problems[name] = PluginProblem(table["class"], _signature(table))
            else:
                path = plugins.class_path(name, PROBLEM_GROUP)
                if path is None:
                    return None
                self.problems[name] = PluginProblem(path, plugins.problem_signature(path))
        return self.problems[name]

    def installed_names(self, group: str) -> list[str]:
        """The plugin names an experiment can use without an import path (for messages)."""
        if self.recorded is not None:
            return sorted(self.recorded.get("optimizers" if group == OPTIMIZER_GROUP else "problems", {}))
        return sorted(plugins.entry_points(group))

    def to_toml(self, used_optimizers: set[str], problem: str) -> list[str]:
        """The [plugins] tables of the plugins a sweep uses, for its resolved experiment file."""
        lines = []
        for name in sorted(used_optimizers & set(self.optimizers)):
            entry = self.optimizers[name]
            lines += ["", f"[plugins.optimizers.{json.dumps(name)}]", f"class = {json.dumps(entry.class_path)}"]
            lines += [f"lr = {entry.default_lr!r}"] if entry.default_lr is not None else []
            lines += [f"signature = {_json_string(entry.defaults)}"]
        if problem in self.problems:
            entry = self.problems[problem]
            lines += ["", f"[plugins.problems.{json.dumps(problem)}]", f"class = {json.dumps(entry.class_path)}"]
            lines += [f"signature = {_json_string(entry.defaults)}"]
        return lines


def _json_string(values: dict[str, Any]) -> str:
    return "'" + json.dumps(values, sort_keys=True) + "'"  # a TOML literal string: JSON never holds a '


def _signature(table: dict[str, Any]) -> dict[str, Any]:
    return {key: from_json(value) for key, value in json.loads(table["signature"]).items()}


def from_json(value: Any) -> Any:
    """A value read back from JSON in the form a spec holds it: lists as tuples."""
    return tuple(value) if isinstance(value, list) else value


def to_json(values: dict[str, Any]) -> str:
    return json.dumps(values, sort_keys=True)


# ---------------------------------------------------------------------------------------------------------
# Checking values against a plugin's signature


def check_value(where: str, value: Any, default: Any) -> Any:
    """A value for a parameter whose default is `default`, in the form the constructor takes it.

    The rule is the default's type (flag, integer, number, text, a tuple of as many); a default of None or
    REQUIRED takes any plain value (a flag, a number, text, a list of numbers).
    """
    if isinstance(value, dict):
        raise ConfigError(f"{where} must be a plain value (a number, text, true/false or a list), got a table")
    if default is None or default == REQUIRED:
        if isinstance(value, list):
            return tuple(check_value(where, item, 0.0) for item in value)
        if isinstance(value, float) and math.isnan(value):
            raise ConfigError(f"{where} must be a number, not nan")
        return value
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"{where} must be true or false, got {value!r}")
        return value
    if isinstance(default, int):
        if not isinstance(value, int) or isinstance(value, bool):
            raise ConfigError(f"{where} must be an integer (its default is {default!r}), got {value!r}")
        return value
    if isinstance(default, float):
        if not isinstance(value, int | float) or isinstance(value, bool) or math.isnan(value):
            raise ConfigError(f"{where} must be a number (its default is {default!r}), got {value!r}")
        return float(value)
    if isinstance(default, str):
        if not isinstance(value, str):
            raise ConfigError(f"{where} must be text (its default is {default!r}), got {value!r}")
        return value
    if not isinstance(value, list | tuple) or len(value) != len(default):
        raise ConfigError(f"{where} must be {len(default)} values like its default {list(default)}, got {value!r}")
    return tuple(check_value(where, item, item_default) for item, item_default in zip(value, default, strict=True))


def check_table(where: str, given: dict[str, Any], defaults: dict[str, Any], reserved: tuple[str, ...] = ()) -> dict:
    """Every value of a plugin's table checked against its signature: unknown keys get a did-you-mean,
    REQUIRED ones must be given. Returns the given values, checked."""
    checked = {}
    for key, value in given.items():
        if key not in defaults:
            known = ", ".join(sorted(defaults)) or "none"
            hint = " (set by tinytrain)" if key in reserved else did_you_mean(key, defaults, cutoff=0.6)
            raise ConfigError(f"unknown setting '{key}' in {where}{hint}: its constructor takes {known}")
        checked[key] = check_value(f"{where}.{key}", value, defaults[key])
    missing = [key for key, default in defaults.items() if default == REQUIRED and key not in checked]
    if missing:
        raise ConfigError(f"{where} must set {', '.join(missing)}: the constructor has no default for it")
    return checked


def check_problem(problem: Any, raw_settings: Any, found: Plugins) -> dict[str, Any]:
    """The problem name (a built-in or a plugin) and its own settings ([problem_settings]), checked."""
    if problem in PROBLEMS:
        if raw_settings:
            raise ConfigError(
                f"problem_settings apply to a plugin problem; {problem} has none: drop [problem_settings]"
            )
        return {}
    entry = found.problem(problem) if isinstance(problem, str) else None
    if entry is None:
        names = [*PROBLEMS, *found.installed_names(PROBLEM_GROUP)]
        raise ConfigError(
            f"unknown problem {problem!r}{did_you_mean(problem, names)}: use one of {', '.join(names)}, or a "
            "plugin as package.module:Class"
        )
    if raw_settings is None:
        raw_settings = {}
    if not isinstance(raw_settings, dict):
        raise ConfigError(f"problem_settings must be a table: [problem_settings] with the settings of {problem}")
    return check_table("problem_settings", raw_settings, entry.defaults, plugins.PROBLEM_INPUTS)

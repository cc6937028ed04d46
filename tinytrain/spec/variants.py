"""The [optimizers.NAME] tables of an experiment: named variants of a catalogue or plugin optimizer, checked.

A variant's `type` is a built-in name (optimizers.OPTIMIZERS), an installed plugin's entry-point name, or
an import path (`package.module:Class`, any torch.optim.Optimizer subclass): a plugin's hyperparameters are
checked against its constructor's signature (spec/plugins.py).

A variant fixes some hyperparameters of a `type` (the others keep their defaults). A numeric hyperparameter
may be drawn instead of fixed (`momentum = { uniform = [0.8, 0.99], count = 4 }`, see draws.py): the variant
then expands into one variant per drawn value, named `NAME/momentum=0.8523`, and wherever the grid names
NAME it stands for all of them, in order. Several drawn hyperparameters of one variant give their product.
Expanding into named variants (rather than a grid axis of its own) keeps each drawn value a row of its own
in `compare` and a variant with fixed values in the resolved experiment file, so it loads back the same.
"""

from __future__ import annotations

import itertools
from typing import Any

from tinytrain.errors import ConfigError, did_you_mean
from tinytrain.optimizers import OPTIMIZERS
from tinytrain.plugins import OPTIMIZER_GROUP, REQUIRED
from tinytrain.spec import draws, hyperparameters
from tinytrain.spec.plugins import Plugins, check_value


class Variants:
    """The checked variants, each drawn one expanded, and how each drawn name expands."""

    def __init__(self, plugins: Plugins) -> None:
        self.plugins = plugins
        self.tables: dict[str, dict[str, Any]] = {}  # name -> {"type": kind, hyperparameter: value}
        self.expansions: dict[str, list[str]] = {}  # a drawn variant's name -> the names it expands into
        self.drawn: list[str] = []  # how each drawn hyperparameter was drawn, for the resolved file

    def names(self, name: str) -> list[str]:
        """What the grid's name stands for: itself, or the variants a draw expanded it into."""
        return self.expansions.get(name, [name])

    def known(self, name: str) -> bool:
        """A built-in, a variant, or an installed plugin's name (which imports it)."""
        if name in OPTIMIZERS or name in self.tables or name in self.expansions:
            return True
        entry = self.plugins.optimizer(name)
        if entry is not None:
            check_plugin_defaults(f"optimizer {name}", entry.defaults)
        return entry is not None

    def choices(self) -> list[str]:
        """Every name the grid can use, for messages."""
        return [
            *sorted(OPTIMIZERS),
            *sorted(set(self.tables) | set(self.expansions)),
            *self.plugins.installed_names(OPTIMIZER_GROUP),
        ]


def check_plugin_defaults(where: str, defaults: dict[str, Any]) -> None:
    missing = [key for key, default in defaults.items() if default == REQUIRED]
    if missing:
        raise ConfigError(
            f"{where} has no default for {', '.join(missing)}: set it in a variant, "
            f'[optimizers.NAME] type = "..." with {missing[0]} = ...'
        )


def defaults_of(kind: str, plugins: Plugins) -> dict[str, Any] | None:
    """The hyperparameters (with defaults) of a built-in or plugin type, or None if it names neither."""
    if kind in OPTIMIZERS:
        return OPTIMIZERS[kind][2]
    entry = plugins.optimizer(kind) if isinstance(kind, str) else None
    return None if entry is None else entry.defaults


def check_variants(raw_variants: Any, plugins: Plugins | None = None) -> Variants:
    if not isinstance(raw_variants, dict):
        raise ConfigError("optimizers must be a table of variants: [optimizers.NAME] with type = ...")
    variants = Variants(plugins if plugins is not None else Plugins())
    for name, variant in raw_variants.items():
        if name in OPTIMIZERS:
            raise ConfigError(
                f"[optimizers.{name}] redefines the built-in '{name}': give the variant its own "
                f"name, e.g. [optimizers.{name}-custom]"
            )
        if not isinstance(variant, dict):
            raise ConfigError(f'optimizers.{name} must be a table with a type, e.g. [optimizers.{name}] type = "sgd"')
        kind = variant.get("type")
        defaults = defaults_of(kind, variants.plugins)
        if defaults is None:
            names = [*sorted(OPTIMIZERS), *variants.plugins.installed_names(OPTIMIZER_GROUP)]
            raise ConfigError(
                f"optimizers.{name} has type {kind!r}{did_you_mean(kind, names)}: use one of {', '.join(names)}, "
                'or a plugin as type = "package.module:Class"'
            )
        builtin = kind in OPTIMIZERS
        fixed: dict[str, Any] = {"type": kind}
        drawn: dict[str, list[float]] = {}
        for key, value in variant.items():
            if key == "type":
                continue
            if key == "lr":
                raise ConfigError(f"optimizers.{name} sets lr: the learning rate is a grid axis, set it in [grid]")
            if key not in defaults:
                hint = did_you_mean(key, defaults, cutoff=0.6)
                raise ConfigError(
                    f"unknown hyperparameter '{key}' for optimizer '{name}' (type {kind}){hint}: "
                    f"known ones are {', '.join(sorted(defaults))}"
                )
            where = f"optimizers.{name}.{key}"
            check = hyperparameters.check if builtin else _check_plugin_value
            if draws.is_draw(value):
                if not isinstance(defaults[key], float) or isinstance(defaults[key], bool):
                    raise ConfigError(
                        f"{where} is drawn, but only a number can be (its default is {defaults[key]!r}): give one value"
                    )
                drawn[key] = [check(where, key, v, defaults[key]) for v in draws.draw(where, value)]
                variants.drawn.append(f"{where}: {draws.describe(value)}")
            else:
                fixed[key] = check(where, key, value, defaults[key])
        if not builtin:
            check_plugin_defaults(f"optimizers.{name} (type {kind})", {**defaults, **fixed, **drawn})
        if not drawn:
            variants.tables[name] = _checked(name, fixed)
            continue
        expanded = []
        for values in itertools.product(*drawn.values()):
            chosen = dict(zip(drawn, values, strict=True))
            label = name + "/" + ",".join(f"{key}={value:g}" for key, value in chosen.items())
            variants.tables[label] = _checked(label, {**fixed, **chosen})
            expanded.append(label)
        variants.expansions[name] = expanded
    return variants


def _check_plugin_value(where: str, key: str, value: Any, default: Any) -> Any:
    return check_value(where, value, default)


def _checked(name: str, table: dict[str, Any]) -> dict[str, Any]:
    """The variant, once its hyperparameters are checked together."""
    if table["type"] not in OPTIMIZERS:
        return table
    hyperparameters_used = {**OPTIMIZERS[table["type"]][2], **table}
    if (
        table["type"] == "sgd"
        and hyperparameters_used["nesterov"]
        and (hyperparameters_used["momentum"] <= 0 or hyperparameters_used["dampening"])
    ):
        raise ConfigError(f"optimizers.{name}: nesterov needs momentum > 0 and dampening = 0")
    return table

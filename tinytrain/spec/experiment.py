"""Experiment files and overrides in, validated and frozen run specs out.

An experiment file (TOML) holds only what differs from DEFAULTS; its [grid] axes expand, as a cartesian
product, into one RunSpec per cell. Everything is checked before anything runs, so bad input never reaches
the store. This module imports neither torch nor MLflow: `--dry-run` and `--help` stay instant.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import json
import math
import tomllib
from dataclasses import dataclass, field, replace
from dataclasses import fields as dataclass_fields
from pathlib import Path
from typing import Any

from tinytrain.errors import ConfigError
from tinytrain.optimizers import ADAMW_WITH_MUON, MUON_PARAMETERS, OPTIMIZERS
from tinytrain.spec import draws, hyperparameters
from tinytrain.spec.settings import (
    BATCH_SETTINGS,
    DEFAULTS,
    ENGINES,
    GRID_AXES,
    GRID_DEFAULTS,
    LATER_SETTINGS,
    check_engine,
    check_settings,
    is_int,
    is_number,
)
from tinytrain.spec.variants import Variants, check_variants

__all__ = ["DEFAULTS", "ENGINES", "ConfigError", "Experiment", "RunSpec", "load_experiment", "validate"]

PROJECT_ROOT = Path(__file__).resolve().parents[2]  # the checkout: tinytrain/spec/experiment.py -> ./
DEFAULT_EXPERIMENT = "experiments/optimizer-grid.toml"


@dataclass(frozen=True)
class RunSpec:
    """One cell of a sweep: everything that decides the numbers of a run, and nothing else."""

    optimizer: str  # the name used in the grid: a built-in name or an experiment's variant
    kind: str  # the catalogue optimizer behind it (optimizers.OPTIMIZERS): sgd, adam, lion, muon, ...
    lr: float
    seed: int
    steps: int = DEFAULTS["steps"]
    data_seed: int = DEFAULTS["data_seed"]
    target_index: int = DEFAULTS["target_index"]
    hyperparameters: tuple[tuple[str, Any], ...] = ()  # every hyperparameter actually used, sorted
    threads: int = DEFAULTS["threads"]
    mkldnn: bool = DEFAULTS["mkldnn"]
    engine: str = DEFAULTS["engine"]
    problem: str = DEFAULTS["problem"]
    loss: str = DEFAULTS["loss"]
    batch_size: int = DEFAULTS["batch_size"]
    eval_every: int = DEFAULTS["eval_every"]
    # None: a run recorded before the bound existed, where only a non-finite loss was divergence
    diverge_above: float | None = DEFAULTS["diverge_above"]
    checkpoint_every: int = field(default=DEFAULTS["checkpoint_every"], compare=False)
    # How far to train this time and where training states are kept (engines/state.py): they decide where a
    # run stops and what it continues from, never its numbers, so they are in neither its key nor its params.
    stop_at: int = field(default=0, compare=False)  # 0: train to `steps`; k: stop before step k's update
    state_folder: str = field(default="", compare=False)  # "": no states saved or continued from

    @property
    def optimizer_kwargs(self) -> dict[str, Any]:
        return dict(self.hyperparameters)

    def params(self) -> dict[str, str]:
        """The run's MLflow params: its configuration and every optimizer hyperparameter."""
        params = {
            "optimizer": self.optimizer,
            "optimizer_type": self.kind,
            "lr": repr(self.lr),
            "seed": str(self.seed),
            "steps": str(self.steps),
            "data_seed": str(self.data_seed),
            "target_index": str(self.target_index),
            "threads": str(self.threads),
            "mkldnn": str(self.mkldnn),
            "engine": self.engine,
            "checkpoint_every": str(self.checkpoint_every),
            "problem": self.problem,
            "loss": self.loss,
        }
        if self.problem != "one-sample":
            params.update({name: str(getattr(self, name)) for name in BATCH_SETTINGS})
        if self.kind == "muon":  # which parameters each of its two optimizers trains
            params["muon_parameters"] = ",".join(MUON_PARAMETERS)
            params["adamw_parameters"] = ",".join(ADAMW_WITH_MUON)
        if self.diverge_above is not None:
            params["diverge_above"] = repr(self.diverge_above)
        for name, value in self.hyperparameters:
            params[name] = hyperparameters.as_param(value)
        return params

    @functools.cached_property
    def key(self) -> str:
        """A stable key of everything that decides the run's numbers: the same cell, the same key.

        Made once per spec, from the fields as they are (dataclasses.asdict, which deep-copies them, gives
        the same JSON at 30 times the cost: most of a 10,000-run --dry-run). A run recorded before
        diverge_above existed (None) keeps the key it was written with: old sweeps find it.
        """
        fields = {item.name: getattr(self, item.name) for item in dataclass_fields(self)}
        for name in ("checkpoint_every", "stop_at", "state_folder"):
            del fields[name]  # they decide what is saved and where a run stops, not what is computed
        if self.diverge_above is None:
            del fields["diverge_above"]
        fields["hyperparameters"] = dict(self.hyperparameters)
        for name in LATER_SETTINGS:
            if fields[name] == DEFAULTS[name]:
                del fields[name]
        canonical = json.dumps(fields, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]

    @functools.cached_property
    def lineage(self) -> str:
        """The run key without `steps`: runs that differ only in how far they train share it, so a run can
        continue from the training state of a shorter one (engines/state.py)."""
        return replace(self, steps=0).key

    @property
    def stop_step(self) -> int:
        """Where this training ends: stop_at when it stops early, else steps."""
        return self.stop_at if 0 < self.stop_at < self.steps else self.steps

    @property
    def checkpoint_steps(self) -> tuple[int, ...]:
        """The steps checkpointed before the final one (every checkpoint_every steps)."""
        return tuple(range(self.checkpoint_every, self.steps, self.checkpoint_every)) if self.checkpoint_every else ()

    @property
    def run_name(self) -> str:
        return f"{self.optimizer}-lr{self.lr:g}-seed{self.seed}"

    @classmethod
    def from_params(cls, params: dict[str, str]) -> RunSpec:
        """Rebuild a spec from the params of a logged run (what `reproduce` trusts)."""
        kind = params["optimizer_type"]
        used = {
            name: hyperparameters.from_param(params[name], default) for name, default in OPTIMIZERS[kind][2].items()
        }
        return cls(
            optimizer=params["optimizer"],
            kind=kind,
            lr=float(params["lr"]),
            seed=int(params["seed"]),
            steps=int(params["steps"]),
            data_seed=int(params["data_seed"]),
            target_index=int(params["target_index"]),
            hyperparameters=tuple(sorted(used.items())),
            threads=int(params["threads"]),
            mkldnn=params["mkldnn"] == "True",
            engine=params["engine"],
            diverge_above=float(params["diverge_above"]) if "diverge_above" in params else None,
            checkpoint_every=int(params.get("checkpoint_every", "0")),
            problem=params.get("problem", DEFAULTS["problem"]),  # runs logged before problems were a setting
            loss=params.get("loss", DEFAULTS["loss"]),
            **{name: int(params.get(name, DEFAULTS[name])) for name in BATCH_SETTINGS},
        )


@dataclass(frozen=True)
class Experiment:
    """A resolved experiment: its settings, its optimizer variants and its grid, all validated."""

    settings: dict[str, Any]
    grid: dict[str, list[Any]]
    variants: dict[str, dict[str, Any]]
    source: str  # where it came from, for messages
    drawn: tuple[str, ...] = ()  # how drawn values were drawn, one line each (kept in to_toml as comments)
    extra_seeds: dict[tuple[str, float], tuple[int, ...]] = field(default_factory=dict)  # (optimizer, lr) -> seeds

    @property
    def name(self) -> str:
        return self.settings["name"]

    def specs(self) -> list[RunSpec]:
        """The grid's cells, in a stable order (optimizer, then lr, then seed), then the extra seeds of cells."""
        grid = itertools.product(self.grid["optimizer"], self.grid.get("lr", [None]), self.grid["seed"])
        extra = [(optimizer, lr, seed) for (optimizer, lr), seeds in self.extra_seeds.items() for seed in seeds]
        return [self._spec(optimizer, lr, seed) for optimizer, lr, seed in [*grid, *extra]]

    def _spec(self, optimizer: str, lr: float | None, seed: int) -> RunSpec:
        kind, default_lr, hyperparameters = self.resolve_optimizer(optimizer)
        settings, bound = self.settings, self.settings["diverge_above"]
        return RunSpec(
            optimizer=optimizer,
            kind=kind,
            lr=default_lr if lr is None else lr,
            seed=seed,
            steps=settings["steps"],
            data_seed=settings["data_seed"],
            target_index=settings["target_index"],
            hyperparameters=tuple(sorted(hyperparameters.items())),
            threads=settings["threads"],
            mkldnn=settings["mkldnn"],
            engine=settings["engine"],
            diverge_above=None if bound is None else float(bound),
            checkpoint_every=settings["checkpoint_every"],
            **{name: settings[name] for name in LATER_SETTINGS},
        )

    def resolve_optimizer(self, name: str) -> tuple[str, float, dict[str, Any]]:
        """(torch kind, default lr, every hyperparameter) of a built-in name or a variant."""
        variant = self.variants.get(name, {"type": name})
        kind = variant["type"]
        _class_name, default_lr, defaults = OPTIMIZERS[kind]
        hyperparameters = dict(defaults)
        hyperparameters.update({k: v for k, v in variant.items() if k != "type"})
        return kind, default_lr, hyperparameters

    def to_toml(self) -> str:
        """The resolved experiment as a TOML file that loads back to the same sweep."""
        lines = [f"# tinytrain sweep --from-run <this run>   (resolved from {self.source})"]
        lines += [f"# drawn: {line}" for line in self.drawn]
        lines += [f"{key} = {_toml_value(value)}" for key, value in self.settings.items() if value is not None]
        lines += ["", "[grid]"]
        lines += [f"{axis} = {_toml_value(values)}" for axis, values in self.grid.items()]
        for name, variant in self.variants.items():
            lines += ["", f'[optimizers."{name}"]']
            lines += [f"{key} = {_toml_value(value)}" for key, value in variant.items()]
        if self.extra_seeds:  # written by --until-separated
            lines += ["", "[extra_seeds]"] + [
                f'"{o}@{lr!r}" = {_toml_value(seeds)}' for (o, lr), seeds in self.extra_seeds.items()
            ]
        return "\n".join(lines) + "\n"


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    return "[" + ", ".join(_toml_value(item) for item in value) + "]"


# ---------------------------------------------------------------------------------------------------------
# Loading and overrides


def default_experiment_path() -> Path:
    """experiments/optimizer-grid.toml of the current directory, else of the project tinytrain came from."""
    local = Path(DEFAULT_EXPERIMENT)
    return local if local.exists() else PROJECT_ROOT / DEFAULT_EXPERIMENT


def read_experiment_file(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"experiment file '{path}' does not exist: give a TOML file such as {DEFAULT_EXPERIMENT}")
    if path.is_dir():
        raise ConfigError(f"'{path}' is a folder: give an experiment TOML file inside it")
    try:
        return tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path} is not valid TOML: {error}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path} is not a text file: give an experiment TOML file") from None


def load_experiment(
    path: str | Path | None = None,
    overrides: tuple[str, ...] | list[str] = (),
    text: str | None = None,
    recorded: bool = False,
) -> Experiment:
    """Read an experiment file (or its text), apply `--set` overrides, validate everything. recorded: the text
    is a sweep's to_toml, which lists every setting; one without diverge_above predates the bound."""
    if text is not None:
        source = str(path or "<text>")
        try:
            raw = tomllib.loads(text)
        except tomllib.TOMLDecodeError as error:
            raise ConfigError(f"{source} is not valid TOML: {error}") from None
    else:
        path = Path(path) if path is not None else default_experiment_path()
        source = str(path)
        raw = read_experiment_file(path)
    for override in overrides:
        apply_override(raw, override)
    experiment = validate(raw, source)
    if recorded and "diverge_above" not in raw:
        experiment.settings["diverge_above"] = None
    return experiment


def parse_override(text: str) -> tuple[str, list[Any]]:
    """'KEY=V1,V2' -> (KEY, [V1, V2]), each value read as a TOML value (a bare word is a string)."""
    key, sep, values = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"--set '{text}' must look like KEY=V1,V2 (for example --set lr=0.1,0.01)")
    if values.strip().startswith(("[", "{")):
        return key, [parse_value(values)]
    parts = [part.strip() for part in values.split(",")]
    if any(part == "" for part in parts):
        raise ConfigError(f"--set '{text}' has an empty value: give values separated by commas, e.g. {key}=1,2")
    return key, [parse_value(part) for part in parts]


def parse_value(text: str) -> Any:
    text = text.strip()
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        pass
    try:
        return float(text)
    except ValueError:
        return text


def apply_override(raw: dict[str, Any], text: str) -> None:
    """Apply one `--set` to the raw experiment: a grid axis, a top-level key or optimizers.NAME.KEY."""
    key, values = parse_override(text)
    if key in GRID_AXES or key.startswith("grid."):
        axis = key.removeprefix("grid.")
        raw.setdefault("grid", {})[axis] = values[0] if len(values) == 1 and draws.is_draw(values[0]) else values
        return
    if key.startswith("optimizers."):
        _, _, rest = key.partition(".")
        name, dot, hyperparameter = rest.rpartition(".")
        if not dot or not name:
            raise ConfigError(
                f"--set {key}: write optimizers.NAME.HYPERPARAMETER=VALUE, e.g. optimizers.sgd-momentum.momentum=0.5"
            )
        if len(values) != 1:
            raise ConfigError(f"--set {key} takes one value, got {len(values)}")
        raw.setdefault("optimizers", {}).setdefault(name, {})[hyperparameter] = values[0]
        return
    if key in DEFAULTS:
        if len(values) != 1:
            raise ConfigError(
                f"--set {key} takes one value, got {len(values)}: only the grid axes "
                f"({', '.join(GRID_AXES)}) take a list"
            )
        raw[key] = values[0]
        return
    raise ConfigError(
        f"--set {key}: unknown key; use a grid axis ({', '.join(GRID_AXES)}), "
        f"a setting ({', '.join(DEFAULTS)}) or optimizers.NAME.HYPERPARAMETER"
    )


# ---------------------------------------------------------------------------------------------------------
# Validation: every message names the bad value and says how to fix it, on one line.


def validate(raw: dict[str, Any], source: str = "<experiment>") -> Experiment:
    known = set(DEFAULTS) | {"grid", "optimizers", "extra_seeds"}
    for key in raw:
        if key not in known:
            raise ConfigError(f"unknown key '{key}' in {source}: known keys are {', '.join(sorted(known))}")
    settings = {key: raw.get(key, default) for key, default in DEFAULTS.items()}
    check_settings(settings)

    variants = check_variants(raw.get("optimizers", {}))
    grid_raw = raw.get("grid", {})
    if not isinstance(grid_raw, dict):
        raise ConfigError("grid must be a table: write [grid] with optimizer, lr and seed lists")
    for axis in grid_raw:
        if axis not in GRID_AXES:
            raise ConfigError(f"unknown grid axis '{axis}': the axes are {', '.join(GRID_AXES)}")
    grid: dict[str, list[Any]] = {}
    drawn = list(variants.drawn)
    for axis in GRID_AXES:
        if axis not in grid_raw:
            if axis in GRID_DEFAULTS:
                grid[axis] = list(GRID_DEFAULTS[axis])
            continue
        values = grid_raw[axis]
        if axis == "lr" and draws.is_draw(values):
            table, values = values, draws.draw("grid.lr", values)
            drawn.append(f"grid.lr: {draws.describe(table)}")
        values = list(values) if isinstance(values, list) else [values]
        if not values:
            raise ConfigError(f"grid.{axis} is empty: give at least one value")
        grid[axis] = [_check_axis_value(axis, value, variants) for value in values]
        duplicates = sorted({repr(v) for v in grid[axis] if grid[axis].count(v) > 1})
        if duplicates:
            raise ConfigError(f"grid.{axis} lists {', '.join(duplicates)} more than once: list each value once")
        if axis == "optimizer":
            grid[axis] = [expanded for name in grid[axis] for expanded in variants.names(name)]
    used = {name: variants.tables[name] for name in grid["optimizer"] if name in variants.tables}
    check_engine(settings, {name: used.get(name, {"type": name})["type"] for name in grid["optimizer"]})
    experiment = Experiment(settings=settings, grid=grid, variants=variants.tables, source=source, drawn=tuple(drawn))
    return replace(experiment, extra_seeds=_check_extra_seeds(raw.get("extra_seeds", {}), experiment))


def _check_extra_seeds(raw: Any, experiment: Experiment) -> dict[tuple[str, float], tuple[int, ...]]:
    # [extra_seeds] "OPTIMIZER@LR" = [seeds]: more seeds for cells of the grid (written by --until-separated)
    cells = {(spec.optimizer, spec.lr) for spec in experiment.specs()}
    extra = {}
    for name, seeds in raw.items() if isinstance(raw, dict) else [(raw, None)]:
        optimizer, _, lr = str(name).rpartition("@")
        cell = (optimizer, parse_value(lr))
        if cell not in cells or not isinstance(seeds, list) or not all(is_int(s) and s >= 0 for s in seeds):
            raise ConfigError(f'extra_seeds.{name} must name a cell of the grid as "OPTIMIZER@LR" = [seeds >= 0]')
        extra[cell] = tuple(sorted(set(seeds) - set(experiment.grid["seed"])))
    return extra


def _check_axis_value(axis: str, value: Any, variants: Variants) -> Any:
    if axis == "optimizer":
        if not isinstance(value, str) or not variants.known(value):
            names = ", ".join(sorted(OPTIMIZERS) + sorted(set(variants.tables) | set(variants.expansions)))
            raise ConfigError(
                f"unknown optimizer {value!r} in grid.optimizer: use one of {names}, "
                f"or define it as [optimizers.{value}] with a type"
            )
        return value
    if axis == "lr":
        if not is_number(value) or not math.isfinite(value) or value <= 0:
            raise ConfigError(f"lr must be a finite number > 0, got {value!r} in grid.lr")
        return float(value)
    if not is_int(value) or value < 0:  # seed
        raise ConfigError(f"seed must be an integer >= 0, got {value!r} in grid.seed")
    return value

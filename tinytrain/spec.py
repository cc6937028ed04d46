"""Experiment files and overrides in, validated and frozen run specs out.

An experiment file (TOML) holds only what differs from DEFAULTS; its [grid] axes expand, as a cartesian
product, into one RunSpec per cell. Everything is checked before anything runs, so bad input never reaches
the store. This module imports neither torch nor MLflow: `--dry-run` and `--help` stay instant.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import tomllib
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from tinytrain.optimizers import OPTIMIZERS

# Every top-level setting and its default: the one place defaults live.
DEFAULTS: dict[str, Any] = {
    "name": "optimizer-grid",  # the MLflow experiment
    "steps": 100,  # optimizer steps per run; the loss is recorded at steps 0..steps
    "data_seed": 0,  # seeds the input, independently of the run's seed
    "target_index": 3,  # where the one-hot target has its 1
    "checkpoint_every": 0,  # also checkpoint every N steps (0: the final weights only)
    "threads": 1,  # torch's intra-op threads: part of what makes a run bit-for-bit reproducible
    "mkldnn": False,  # oneDNN off: faster at this size, and recorded because it changes the bits
    "engine": "sequential",  # sequential (one run at a time) or vmap (cells in batched nets)
    "diverge_above": 1e3,  # a loss above this many times the run's initial loss (or non-finite) is divergence
}
GRID_AXES = ("optimizer", "lr", "seed")
GRID_DEFAULTS: dict[str, list[Any]] = {"optimizer": ["adam"], "seed": [0]}  # lr: each optimizer's default
ENGINES = ("sequential", "vmap")
MAX_TARGET_INDEX = 9

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_EXPERIMENT = "experiments/optimizer-grid.toml"


class ConfigError(ValueError):
    """Bad input: an experiment file, an override or a value that cannot make a valid sweep."""


@dataclass(frozen=True)
class RunSpec:
    """One cell of a sweep: everything that decides the numbers of a run, and nothing else."""

    optimizer: str  # the name used in the grid: a built-in name or an experiment's variant
    kind: str  # the torch.optim optimizer behind it: sgd, adam, adamw, rmsprop, adagrad
    lr: float
    seed: int
    steps: int = DEFAULTS["steps"]
    data_seed: int = DEFAULTS["data_seed"]
    target_index: int = DEFAULTS["target_index"]
    hyperparameters: tuple[tuple[str, Any], ...] = ()  # every hyperparameter actually used, sorted
    threads: int = DEFAULTS["threads"]
    mkldnn: bool = DEFAULTS["mkldnn"]
    engine: str = DEFAULTS["engine"]
    # None: a run recorded before the bound existed, where only a non-finite loss was divergence
    diverge_above: float | None = DEFAULTS["diverge_above"]
    checkpoint_every: int = field(default=DEFAULTS["checkpoint_every"], compare=False)

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
        }
        if self.diverge_above is not None:
            params["diverge_above"] = repr(self.diverge_above)
        for name, value in self.hyperparameters:
            params[name] = repr(value) if isinstance(value, float) else str(value)
        return params

    @property
    def key(self) -> str:
        """A stable key of everything that decides the run's numbers: the same cell, the same key. A run
        recorded before diverge_above existed (None) keeps the key it was written with: old sweeps find it."""
        fields = asdict(self)
        del fields["checkpoint_every"]  # decides what is saved, not what is computed
        if self.diverge_above is None:
            del fields["diverge_above"]
        fields["hyperparameters"] = dict(self.hyperparameters)
        canonical = json.dumps(fields, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]

    @property
    def run_name(self) -> str:
        return f"{self.optimizer}-lr{self.lr:g}-seed{self.seed}"

    @classmethod
    def from_params(cls, params: dict[str, str]) -> RunSpec:
        """Rebuild a spec from the params of a logged run (what `reproduce` trusts)."""
        kind = params["optimizer_type"]
        hyperparameters = {
            name: _parse_logged(params[name], default) for name, default in OPTIMIZERS[kind][2].items()
        }
        return cls(
            optimizer=params["optimizer"],
            kind=kind,
            lr=float(params["lr"]),
            seed=int(params["seed"]),
            steps=int(params["steps"]),
            data_seed=int(params["data_seed"]),
            target_index=int(params["target_index"]),
            hyperparameters=tuple(sorted(hyperparameters.items())),
            threads=int(params["threads"]),
            mkldnn=params["mkldnn"] == "True",
            engine=params["engine"],
            diverge_above=float(params["diverge_above"]) if "diverge_above" in params else None,
            checkpoint_every=int(params.get("checkpoint_every", "0")),
        )


def _parse_logged(text: str, default: Any) -> Any:
    if isinstance(default, bool):
        return text == "True"
    if isinstance(default, tuple):
        return tuple(float(part) for part in text.strip("()").split(","))
    return float(text)


@dataclass(frozen=True)
class Experiment:
    """A resolved experiment: its settings, its optimizer variants and its grid, all validated."""

    settings: dict[str, Any]
    grid: dict[str, list[Any]]
    variants: dict[str, dict[str, Any]]
    source: str  # where it came from, for messages
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
            optimizer=optimizer, kind=kind, lr=default_lr if lr is None else lr, seed=seed,
            steps=settings["steps"], data_seed=settings["data_seed"], target_index=settings["target_index"],
            hyperparameters=tuple(sorted(hyperparameters.items())), threads=settings["threads"],
            mkldnn=settings["mkldnn"], engine=settings["engine"], diverge_above=None if bound is None else float(bound),
            checkpoint_every=settings["checkpoint_every"],
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
        lines += [f"{key} = {_toml_value(value)}" for key, value in self.settings.items() if value is not None]
        lines += ["", "[grid]"]
        lines += [f"{axis} = {_toml_value(values)}" for axis, values in self.grid.items()]
        for name, variant in self.variants.items():
            lines += ["", f'[optimizers."{name}"]']
            lines += [f"{key} = {_toml_value(value)}" for key, value in variant.items()]
        if self.extra_seeds:  # written by --until-separated
            lines += ["", "[extra_seeds]"] + [f'"{o}@{lr!r}" = {_toml_value(seeds)}' for (o, lr), seeds in
                                               self.extra_seeds.items()]
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
    path: str | Path | None = None, overrides: tuple[str, ...] | list[str] = (), text: str | None = None,
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
    if values.strip().startswith("["):
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
        raw.setdefault("grid", {})[axis] = values
        return
    if key.startswith("optimizers."):
        _, _, rest = key.partition(".")
        name, dot, hyperparameter = rest.rpartition(".")
        if not dot or not name:
            raise ConfigError(f"--set {key}: write optimizers.NAME.HYPERPARAMETER=VALUE, e.g. "
                              "optimizers.sgd-momentum.momentum=0.5")
        if len(values) != 1:
            raise ConfigError(f"--set {key} takes one value, got {len(values)}")
        raw.setdefault("optimizers", {}).setdefault(name, {})[hyperparameter] = values[0]
        return
    if key in DEFAULTS:
        if len(values) != 1:
            raise ConfigError(f"--set {key} takes one value, got {len(values)}: only the grid axes "
                              f"({', '.join(GRID_AXES)}) take a list")
        raw[key] = values[0]
        return
    raise ConfigError(f"--set {key}: unknown key; use a grid axis ({', '.join(GRID_AXES)}), "
                      f"a setting ({', '.join(DEFAULTS)}) or optimizers.NAME.HYPERPARAMETER")


# ---------------------------------------------------------------------------------------------------------
# Validation: every message names the bad value and says how to fix it, on one line.


def validate(raw: dict[str, Any], source: str = "<experiment>") -> Experiment:
    known = set(DEFAULTS) | {"grid", "optimizers", "extra_seeds"}
    for key in raw:
        if key not in known:
            raise ConfigError(f"unknown key '{key}' in {source}: known keys are {', '.join(sorted(known))}")
    settings = {key: raw.get(key, default) for key, default in DEFAULTS.items()}
    _check_settings(settings)

    variants = _check_variants(raw.get("optimizers", {}))
    grid_raw = raw.get("grid", {})
    if not isinstance(grid_raw, dict):
        raise ConfigError("grid must be a table: write [grid] with optimizer, lr and seed lists")
    for axis in grid_raw:
        if axis not in GRID_AXES:
            raise ConfigError(f"unknown grid axis '{axis}': the axes are {', '.join(GRID_AXES)}")
    grid: dict[str, list[Any]] = {}
    for axis in GRID_AXES:
        if axis not in grid_raw:
            if axis in GRID_DEFAULTS:
                grid[axis] = list(GRID_DEFAULTS[axis])
            continue
        values = grid_raw[axis]
        values = list(values) if isinstance(values, list) else [values]
        if not values:
            raise ConfigError(f"grid.{axis} is empty: give at least one value")
        grid[axis] = [_check_axis_value(axis, value, variants) for value in values]
        duplicates = sorted({repr(v) for v in grid[axis] if grid[axis].count(v) > 1})
        if duplicates:
            raise ConfigError(f"grid.{axis} lists {', '.join(duplicates)} more than once: list each value once")
    experiment = Experiment(settings=settings, grid=grid, variants=variants, source=source)
    return replace(experiment, extra_seeds=_check_extra_seeds(raw.get("extra_seeds", {}), experiment))


def _check_extra_seeds(raw: Any, experiment: Experiment) -> dict[tuple[str, float], tuple[int, ...]]:
    # [extra_seeds] "OPTIMIZER@LR" = [seeds]: more seeds for cells of the grid (written by --until-separated)
    cells = {(spec.optimizer, spec.lr) for spec in experiment.specs()}
    extra = {}
    for name, seeds in (raw.items() if isinstance(raw, dict) else [(raw, None)]):
        optimizer, _, lr = str(name).rpartition("@")
        cell = (optimizer, parse_value(lr))
        if cell not in cells or not isinstance(seeds, list) or not all(_is_int(s) and s >= 0 for s in seeds):
            raise ConfigError(f"extra_seeds.{name} must name a cell of the grid as \"OPTIMIZER@LR\" = [seeds >= 0]")
        extra[cell] = tuple(sorted(set(seeds) - set(experiment.grid["seed"])))
    return extra


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _check_settings(settings: dict[str, Any]) -> None:
    name = settings["name"]
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f"name must be a non-empty string (the MLflow experiment), got {name!r}")
    lower_bounds = {"steps": 1, "data_seed": 0, "checkpoint_every": 0, "threads": 1}
    for key, low in lower_bounds.items():
        value = settings[key]
        if not _is_int(value) or value < low:
            raise ConfigError(f"{key} must be an integer >= {low}, got {value!r}")
    target = settings["target_index"]
    if not _is_int(target) or not 0 <= target <= MAX_TARGET_INDEX:
        raise ConfigError(f"target_index must be an integer from 0 to {MAX_TARGET_INDEX}, got {target!r}")
    if not isinstance(settings["mkldnn"], bool):
        raise ConfigError(f"mkldnn must be true or false, got {settings['mkldnn']!r}")
    bound = settings["diverge_above"]
    if not _is_number(bound) or math.isnan(bound) or bound <= 1:
        raise ConfigError(f"diverge_above must be a number > 1 (times the initial loss; inf: only a non-finite "
                          f"loss diverges), got {bound!r}")
    if settings["engine"] not in ENGINES:
        raise ConfigError(f"engine must be one of {', '.join(ENGINES)}, got {settings['engine']!r}")
    if settings["engine"] == "vmap" and (settings["threads"] != 1 or settings["mkldnn"]):
        # Only there is a cell's result independent of the batch it ran in, and equal to the sequential
        # engine's bit for bit, so that `reproduce` can retrain any vmap run on its own (see vmap.py).
        raise ConfigError("engine vmap runs with threads = 1 and mkldnn = false, where its results equal the "
                          "sequential engine's bit for bit: drop the threads/mkldnn settings or use engine sequential")


def _check_axis_value(axis: str, value: Any, variants: dict[str, dict[str, Any]]) -> Any:
    if axis == "optimizer":
        if not isinstance(value, str) or (value not in OPTIMIZERS and value not in variants):
            names = ", ".join(sorted(OPTIMIZERS) + sorted(variants))
            raise ConfigError(f"unknown optimizer {value!r} in grid.optimizer: use one of {names}, "
                              f"or define it as [optimizers.{value}] with a type")
        return value
    if axis == "lr":
        if not _is_number(value) or not math.isfinite(value) or value <= 0:
            raise ConfigError(f"lr must be a finite number > 0, got {value!r} in grid.lr")
        return float(value)
    if not _is_int(value) or value < 0:  # seed
        raise ConfigError(f"seed must be an integer >= 0, got {value!r} in grid.seed")
    return value


def _check_variants(raw_variants: Any) -> dict[str, dict[str, Any]]:
    if not isinstance(raw_variants, dict):
        raise ConfigError("optimizers must be a table of variants: [optimizers.NAME] with type = ...")
    variants = {}
    for name, variant in raw_variants.items():
        if name in OPTIMIZERS:
            raise ConfigError(f"[optimizers.{name}] redefines the built-in '{name}': give the variant its own "
                              f"name, e.g. [optimizers.{name}-custom]")
        if not isinstance(variant, dict):
            raise ConfigError(f"optimizers.{name} must be a table with a type, e.g. [optimizers.{name}] "
                              'type = "sgd"')
        kind = variant.get("type")
        if kind not in OPTIMIZERS:
            raise ConfigError(f"optimizers.{name} has type {kind!r}: use one of {', '.join(sorted(OPTIMIZERS))}")
        defaults = OPTIMIZERS[kind][2]
        checked: dict[str, Any] = {"type": kind}
        for key, value in variant.items():
            if key == "type":
                continue
            if key == "lr":
                raise ConfigError(f"optimizers.{name} sets lr: the learning rate is a grid axis, set it in [grid]")
            if key not in defaults:
                raise ConfigError(f"unknown hyperparameter '{key}' for optimizer '{name}' (type {kind}): "
                                  f"known ones are {', '.join(sorted(defaults))}")
            checked[key] = _check_hyperparameter(name, key, value, defaults[key])
        hyperparameters = {**defaults, **checked}
        if hyperparameters.get("nesterov") and (hyperparameters["momentum"] <= 0 or hyperparameters["dampening"]):
            raise ConfigError(f"optimizers.{name}: nesterov needs momentum > 0 and dampening = 0")
        variants[name] = checked
    return variants


def _check_hyperparameter(name: str, key: str, value: Any, default: Any) -> Any:
    where = f"optimizers.{name}.{key}"
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"{where} must be true or false, got {value!r}")
        return value
    if isinstance(default, tuple):
        if (not isinstance(value, list | tuple) or len(value) != 2
                or not all(_is_number(v) and 0 <= v < 1 for v in value)):
            raise ConfigError(f"{where} must be two numbers in [0, 1), e.g. [0.9, 0.999], got {value!r}")
        return tuple(float(v) for v in value)
    if not _is_number(value) or not math.isfinite(value) or value < 0:
        raise ConfigError(f"{where} must be a finite number >= 0, got {value!r}")
    return float(value)

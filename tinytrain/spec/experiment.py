"""Experiment files and overrides in, validated and frozen run specs out.

An experiment file (TOML) holds only what differs from DEFAULTS; its [grid] axes expand, as a cartesian
product, into one RunSpec per cell. Everything is checked before anything runs, so bad input never reaches
the store. This module imports neither torch nor MLflow: `--dry-run` and `--help` stay instant.
"""

from __future__ import annotations

import ast
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

from tinytrain.errors import ConfigError, did_you_mean
from tinytrain.optimizers import ADAMW_WITH_MUON, MUON_PARAMETERS, OPTIMIZERS
from tinytrain.spec import draws, hyperparameters
from tinytrain.spec.catalogue import PROBLEMS
from tinytrain.spec.plugins import Plugins, check_problem, from_json, to_json
from tinytrain.spec.settings import (
    AXIS_SETTINGS,
    BATCH_SETTINGS,
    DEFAULTS,
    ENGINES,
    GRID_AXES,
    GRID_DEFAULTS,
    LATER_SETTINGS,
    LEGACY_RECORD,
    MAX_CELLS,
    SCHEDULE_SETTINGS,
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
    kind: str  # the optimizer behind it: a catalogue name (sgd, adam, muon, ...) or a plugin's (spec/plugins.py)
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
    schedule: str = DEFAULTS["schedule"]
    warmup: int | float = DEFAULTS["warmup"]  # steps, or a fraction of steps
    decay: int | float = DEFAULTS["decay"]
    step_size: int | float = DEFAULTS["step_size"]
    gamma: float = DEFAULTS["gamma"]
    clip_grad_norm: float = DEFAULTS["clip_grad_norm"]
    validation: float = DEFAULTS["validation"]
    checkpoint_every: int = field(default=DEFAULTS["checkpoint_every"], compare=False)
    # What the run keeps of its weights (settings.RECORDS): what is stored, never what is computed
    record: str = field(default=DEFAULTS["record"], compare=False)
    problem_settings: tuple[tuple[str, Any], ...] = ()  # a plugin problem's own settings, every one, sorted
    # How far to train this time and where training states are kept (engines/state.py): they decide where a
    # run stops and what it continues from, never its numbers, so they are in neither its key nor its params.
    stop_at: int = field(default=0, compare=False)  # 0: train to `steps`; k: stop before step k's update
    state_folder: str = field(default="", compare=False)  # "": no states saved or continued from
    # How a schedule-free optimizer's weights come back after an evaluation (engines.sequential.evaluation_mode):
    # exactly (every run since it existed), or through optimizer.train()'s round trip, as runs recorded before
    # were trained (reproduce sets it for a record without the `evaluation` tag)
    round_trip_evaluation: bool = field(default=False, compare=False)

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
            "record": self.record,
            "problem": self.problem,
            "loss": self.loss,
        }
        if self.problem != "one-sample":
            params.update({name: str(getattr(self, name)) for name in BATCH_SETTINGS})
            params["validation"] = repr(self.validation)
        params["schedule"] = self.schedule
        params.update({name: repr(getattr(self, name)) for name in SCHEDULE_SETTINGS[self.schedule]})
        params["clip_grad_norm"] = repr(self.clip_grad_norm)
        if self.kind == "muon":  # which parameters each of its two optimizers trains
            params["muon_parameters"] = ",".join(MUON_PARAMETERS)
            params["adamw_parameters"] = ",".join(ADAMW_WITH_MUON)
        if self.diverge_above is not None:
            params["diverge_above"] = repr(self.diverge_above)
        plugin = self.kind not in OPTIMIZERS
        if plugin:  # read back from here (from_params), without importing the plugin
            params["plugin_hyperparameters"] = to_json(dict(self.hyperparameters))
        for name, value in self.hyperparameters:
            # a plugin's hyperparameter named like one of the run's params (steps, seed, ...) is logged apart
            params[f"optimizer.{name}" if plugin and name in params else name] = hyperparameters.as_param(value)
        if self.problem_settings:
            params["problem_settings"] = to_json(dict(self.problem_settings))
            params.update({f"problem.{name}": hyperparameters.as_param(value) for name, value in self.problem_settings})
        return params

    @functools.cached_property
    def key(self) -> str:
        """A stable key of everything that decides the run's numbers: the same cell, the same key.

        Made once per spec, from the fields as they are (dataclasses.asdict, which deep-copies them, gives
        the same JSON at 30 times the cost: most of a 10,000-run --dry-run). A run recorded before
        diverge_above existed (None) keeps the key it was written with: old sweeps find it.
        """
        fields = {item.name: getattr(self, item.name) for item in dataclass_fields(self)}
        for name in ("checkpoint_every", "record", "stop_at", "state_folder", "round_trip_evaluation"):
            del fields[name]  # they decide what is saved and where a run stops, not what is computed
        if self.diverge_above is None:
            del fields["diverge_above"]
        fields["hyperparameters"] = dict(self.hyperparameters)
        fields["problem_settings"] = dict(self.problem_settings)
        if not self.problem_settings:  # only plugin problems have them: every other key stays as it was
            del fields["problem_settings"]
        for name in LATER_SETTINGS:
            if fields[name] == DEFAULTS[name]:
                del fields[name]
        canonical = json.dumps(fields, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]

    @functools.cached_property
    def lineage(self) -> str:
        """The run key without `steps`: runs that differ only in how far they train share it, so a run can
        continue from the training state of a shorter one (engines/state.py). A schedule other than constant
        is shaped by `steps` (a cosine's length, a fraction's warmup), so such a run shares states only with
        runs of the same steps."""
        if self.schedule != DEFAULTS["schedule"]:
            return self.key
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
        """OPTIMIZER-lrLR-seedSEED, with the recipe where it is not the default (a schedule, decay, clipping)."""
        recipe = "" if self.schedule == DEFAULTS["schedule"] else f"-{self.schedule}"
        decay = self.optimizer_kwargs.get("weight_decay")
        # against the catalogue's default (a plugin's default is its signature's, unknown here: no suffix)
        default = OPTIMIZERS[self.kind][2].get("weight_decay") if self.kind in OPTIMIZERS else decay
        if decay is not None and decay != default:
            recipe += f"-wd{decay:g}"
        if self.clip_grad_norm:
            recipe += f"-clip{self.clip_grad_norm:g}"
        return f"{self.optimizer}{recipe}-lr{self.lr:g}-seed{self.seed}"

    @classmethod
    def from_params(cls, params: dict[str, str]) -> RunSpec:
        """Rebuild a spec from the params of a logged run (what `reproduce` trusts)."""
        kind = params["optimizer_type"]
        if kind in OPTIMIZERS:
            used = {
                name: hyperparameters.from_param(params[name], default) for name, default in OPTIMIZERS[kind][2].items()
            }
        else:
            used = {name: from_json(value) for name, value in json.loads(params["plugin_hyperparameters"]).items()}
        problem_settings = json.loads(params.get("problem_settings", "{}"))
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
            record=params.get("record", LEGACY_RECORD),  # runs logged before the setting kept a LoggedModel
            problem=params.get("problem", DEFAULTS["problem"]),  # runs logged before problems were a setting
            loss=params.get("loss", DEFAULTS["loss"]),
            **{name: int(params.get(name, DEFAULTS[name])) for name in BATCH_SETTINGS},
            schedule=params.get("schedule", DEFAULTS["schedule"]),  # runs logged before the recipe: constant
            **{
                name: ast.literal_eval(params[name]) if name in params else DEFAULTS[name]
                for name in ("warmup", "decay", "step_size", "gamma")
            },
            clip_grad_norm=float(params.get("clip_grad_norm", DEFAULTS["clip_grad_norm"])),
            validation=float(params.get("validation", DEFAULTS["validation"])),
            problem_settings=tuple(sorted((name, from_json(value)) for name, value in problem_settings.items())),
        )


Cell = tuple  # (optimizer, lr, *arm): a cell of the grid, its seeds aside; arm: ((axis, value), ...)


def cell_label(cell: Cell, exact: bool = False) -> str:
    """How a cell is named in [extra_seeds] and --vs: OPTIMIZER@LR, then [AXIS=VALUE,...] where other axes vary
    (exact: the lr with every digit, as a file keeps it)."""
    optimizer, lr, *arm = cell
    label = f"{optimizer}@{lr!r}" if exact else f"{optimizer}@{lr:g}"
    return label + ("[" + ",".join(f"{axis}={value}" for axis, value in arm) + "]" if arm else "")


def parse_cell_label(text: str) -> Cell:
    """cell_label's text back as a cell; ValueError where it is not one."""
    text = str(text)
    arm: list[tuple[str, Any]] = []
    if text.endswith("]") and "[" in text:
        text, _, inside = text[:-1].rpartition("[")
        for item in inside.split(","):
            axis, equals, value = item.partition("=")
            if not equals or not axis:
                raise ValueError(text)
            arm.append((axis.strip(), parse_value(value)))
    optimizer, at, lr = text.rpartition("@")
    value = parse_value(lr)
    if not at or not optimizer or not is_number(value) or not math.isfinite(value):
        raise ValueError(text)
    return (optimizer, float(value), *arm)


@dataclass(frozen=True)
class Experiment:
    """A resolved experiment: its settings, its optimizer variants and its grid, all validated.

    grid holds optimizer, lr and seed, and any other axis: a setting (AXIS_SETTINGS) or a hyperparameter
    that the grid's optimizers share. Its lr is one list for every optimizer, or a table of one list per
    optimizer (each optimizer over its own range).
    """

    settings: dict[str, Any]
    grid: dict[str, Any]
    variants: dict[str, dict[str, Any]]
    source: str  # where it came from, for messages
    drawn: tuple[str, ...] = ()  # how drawn values were drawn, one line each (kept in to_toml as comments)
    extra_seeds: dict[Cell, tuple[int, ...]] = field(default_factory=dict)  # (optimizer, lr, *arm) -> seeds
    problem_settings: dict[str, Any] = field(default_factory=dict)  # a plugin problem's settings, as given
    plugins: Plugins = field(default_factory=Plugins, compare=False)  # the plugins it names, resolved
    # Only these cells of the grid run (empty: all): a confirmation sweep runs each arm's chosen setting, not
    # the product of the arms and their lrs. Each is (optimizer, lr, *arm) or (optimizer, lr); it filters the
    # grid, and no run key changes.
    cells: tuple[tuple[Any, ...], ...] = ()
    confirms: str | None = None  # the parent run id of the tuning sweep whose chosen settings this one confirms

    @property
    def name(self) -> str:
        return self.settings["name"]

    @property
    def axes(self) -> tuple[str, ...]:
        """The grid's axes besides optimizer, lr and seed: what makes an optimizer an arm of the comparison."""
        return tuple(axis for axis in self.grid if axis not in GRID_AXES)

    def lrs(self, optimizer: str) -> list[float | None]:
        """The learning rates the grid sweeps for an optimizer (None: its default)."""
        lrs = self.grid.get("lr")
        if lrs is None:
            return [None]
        return lrs[optimizer] if isinstance(lrs, dict) else lrs

    def specs(self) -> list[RunSpec]:
        """The grid's cells, in a stable order (optimizer, then the other axes, then lr, then seed), then the
        extra seeds of cells. Cells that come out the same (a warmup axis under a schedule without warmup)
        are listed once."""
        axes = self.axes
        specs: dict[str, RunSpec] = {}
        for optimizer in self.grid["optimizer"]:
            for values in itertools.product(*(self.grid[axis] for axis in axes)):
                setting = dict(zip(axes, values, strict=True))
                for lr in self.lrs(optimizer):
                    for seed in self.grid["seed"]:
                        spec = self._spec(optimizer, lr, seed, setting)
                        specs.setdefault(spec.key, spec)
        for (optimizer, lr, *arm), seeds in self.extra_seeds.items():
            for seed in seeds:
                spec = self._spec(optimizer, lr, seed, dict(arm))
                specs.setdefault(spec.key, spec)
        if self.cells:  # a confirmation sweep: only the chosen cells
            return [spec for spec in specs.values() if {self.cell(spec), (spec.optimizer, spec.lr)} & set(self.cells)]
        return list(specs.values())

    def arm(self, spec: RunSpec) -> tuple[tuple[str, Any], ...]:
        """The spec's value of each of the grid's other axes (as the spec has it, a hyperparameter as used)."""
        used = spec.optimizer_kwargs
        return tuple(
            (axis, used.get(axis) if axis == "weight_decay" or axis not in AXIS_SETTINGS else getattr(spec, axis))
            for axis in self.axes
        )

    def cell(self, spec: RunSpec) -> Cell:
        return (spec.optimizer, spec.lr, *self.arm(spec))

    def _spec(self, optimizer: str, lr: float | None, seed: int, setting: dict[str, Any] | None = None) -> RunSpec:
        setting = setting or {}
        kind, default_lr, hyperparameters = self.resolve_optimizer(optimizer)
        settings = {**self.settings, **{k: v for k, v in setting.items() if k in DEFAULTS}}
        for name, value in setting.items():  # a hyperparameter axis: every optimizer of the grid takes it
            if name not in DEFAULTS:
                hyperparameters[name] = value
        if settings["weight_decay"] is not None:
            hyperparameters["weight_decay"] = float(settings["weight_decay"])
        for name in ("warmup", "decay", "step_size", "gamma"):  # what the schedule does not read: its default
            if name not in SCHEDULE_SETTINGS[settings["schedule"]]:
                settings[name] = DEFAULTS[name]
        bound = settings["diverge_above"]
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
            record=settings["record"],
            **{name: settings[name] for name in LATER_SETTINGS if name not in ("clip_grad_norm", "validation")},
            clip_grad_norm=float(settings["clip_grad_norm"]),
            validation=float(settings["validation"]),
            problem_settings=self.problem_settings_used(),
        )

    def problem_settings_used(self) -> tuple[tuple[str, Any], ...]:
        """Every setting of a plugin problem, defaults included, sorted; () for a built-in problem."""
        entry = self.plugins.problem(self.settings["problem"]) if self.settings["problem"] not in PROBLEMS else None
        return () if entry is None else tuple(sorted({**entry.defaults, **self.problem_settings}.items()))

    def resolve_optimizer(self, name: str) -> tuple[str, float, dict[str, Any]]:
        """(torch kind, default lr, every hyperparameter) of a built-in name or a variant."""
        variant = self.variants.get(name, {"type": name})
        kind = variant["type"]
        if kind in OPTIMIZERS:
            _class_name, default_lr, defaults = OPTIMIZERS[kind]
        else:
            plugin = self.plugins.optimizer(kind)
            default_lr, defaults = plugin.default_lr, plugin.defaults
        hyperparameters = dict(defaults)
        hyperparameters.update({k: v for k, v in variant.items() if k != "type"})
        return kind, default_lr, hyperparameters

    def to_toml(self) -> str:
        """The resolved experiment as a TOML file that loads back to the same sweep."""
        lines = [f"# tinytrain sweep --from-run <this run>   (resolved from {self.source})"]
        lines += [f"# drawn: {line}" for line in self.drawn]
        lines += [f"{key} = {_toml_value(value)}" for key, value in self.settings.items() if value is not None]
        if self.confirms:  # a confirmation sweep: which tuning sweep, and the chosen cells
            lines += [f"confirms = {_toml_value(self.confirms)}"]
        if self.cells:
            lines += [f"cells = {_toml_value([cell_label(cell, exact=True) for cell in self.cells])}"]
        lines += ["", "[grid]"]
        lines += [f"{axis} = {_toml_value(values)}" for axis, values in self.grid.items()]
        for name, variant in self.variants.items():
            lines += ["", f'[optimizers."{name}"]']
            lines += [f"{key} = {_toml_value(value)}" for key, value in variant.items()]
        if self.problem_settings:
            lines += ["", "[problem_settings]"]
            lines += [f"{key} = {_toml_value(value)}" for key, value in self.problem_settings.items()]
        lines += self.plugins.to_toml(
            {variant["type"] for variant in self.variants.values()} | set(self.grid["optimizer"]),
            self.settings["problem"],
        )
        if self.extra_seeds:  # written by --until-separated
            lines += ["", "[extra_seeds]"] + [
                f"{json.dumps(cell_label(cell, exact=True))} = {_toml_value(seeds)}"
                for cell, seeds in self.extra_seeds.items()
            ]
        return "\n".join(lines) + "\n"


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{json.dumps(key)} = {_toml_value(item)}" for key, item in value.items()) + " }"
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
    allow_huge: bool = False,
) -> Experiment:
    """Read an experiment file (or its text), apply `--set` overrides, validate everything. recorded: the text
    is a sweep's to_toml, which lists every setting; one without diverge_above predates the bound. allow_huge:
    sweep a grid of more than MAX_CELLS cells."""
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
    experiment = validate(raw, source, recorded=recorded, allow_huge=allow_huge or recorded)
    if recorded and "diverge_above" not in raw:  # a new record: the experiment's own settings stay as validated
        experiment = replace(experiment, settings={**experiment.settings, "diverge_above": None})
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


def axis_names() -> set[str]:
    """Every name a grid axis may have: optimizer, lr, seed, a setting of AXIS_SETTINGS, a hyperparameter."""
    hyperparameter_names = {name for _class, _lr, defaults in OPTIMIZERS.values() for name in defaults}
    return set(GRID_AXES) | set(AXIS_SETTINGS) | hyperparameter_names


def apply_override(raw: dict[str, Any], text: str) -> None:
    """Apply one `--set` to the raw experiment: a grid axis, a top-level key or optimizers.NAME.KEY.

    A setting given several values (--set weight_decay=0,0.01) becomes a grid axis."""
    key, values = parse_override(text)
    axes = axis_names()
    if key in GRID_AXES or key.startswith("grid.") or (key in axes and len(values) > 1):
        axis = key.removeprefix("grid.")
        raw.setdefault("grid", {})[axis] = values[0] if len(values) == 1 and draws.is_draw(values[0]) else values
        return
    if key.startswith("problem_settings."):
        if len(values) != 1:
            raise ConfigError(f"--set {key} takes one value, got {len(values)}")
        raw.setdefault("problem_settings", {})[key.removeprefix("problem_settings.")] = values[0]
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
                f"({', '.join(GRID_AXES)} and {', '.join(AXIS_SETTINGS)}) take a list"
            )
        raw[key] = values[0]
        return
    raise ConfigError(
        f"--set {key}: unknown key{did_you_mean(key, [*GRID_AXES, *DEFAULTS])}; use a grid axis "
        f"({', '.join(GRID_AXES)}), a setting ({', '.join(DEFAULTS)}) or optimizers.NAME.HYPERPARAMETER"
    )


# ---------------------------------------------------------------------------------------------------------
# Validation: every message names the bad value and says how to fix it, on one line.


def validate(
    raw: dict[str, Any], source: str = "<experiment>", recorded: bool = False, allow_huge: bool = False
) -> Experiment:
    """recorded: raw is a sweep's resolved file, whose [plugins] table says what its plugins' signatures
    said (nothing is imported); otherwise the plugins it names are imported and their signatures read.
    allow_huge: no limit on the number of cells."""
    known = (
        set(DEFAULTS)
        | {"grid", "optimizers", "extra_seeds", "problem_settings", "cells", "confirms"}
        | ({"plugins"} if recorded else set())
    )
    for key in raw:
        if key not in known:
            hint = did_you_mean(key, known)
            if key == "plugins":
                hint = " (tinytrain writes it into a sweep's record; name plugins by import path or entry point)"
            raise ConfigError(f"unknown key '{key}' in {source}{hint}: known keys are {', '.join(sorted(known))}")
    settings = {key: raw.get(key, default) for key, default in DEFAULTS.items()}
    plugins = Plugins(raw.get("plugins", {}) if recorded else None)
    grid_raw = raw.get("grid", {})
    if not isinstance(grid_raw, dict):
        raise ConfigError("grid must be a table: write [grid] with optimizer, lr and seed lists")
    check_settings({**settings, **_first_values(grid_raw)})
    raw_variants = raw.get("optimizers", {})
    _check_dotted_names(raw_variants)
    allowed = axis_names()
    for axis in grid_raw:
        if axis not in allowed:
            raise ConfigError(
                f"unknown grid axis '{axis}'{did_you_mean(axis, sorted(allowed))}: the axes are "
                f"{', '.join(GRID_AXES)}, a setting ({', '.join(AXIS_SETTINGS)}) or a hyperparameter of the optimizers"
            )
    if not allow_huge:
        _check_size(grid_raw, raw_variants)

    problem_settings = check_problem(settings["problem"], raw.get("problem_settings"), plugins)
    variants = check_variants(raw_variants, plugins)
    grid: dict[str, Any] = {}
    drawn = list(variants.drawn)
    lr_raw = grid_raw.get("lr")
    per_optimizer = isinstance(lr_raw, dict) and not draws.is_draw_table(lr_raw)
    if "optimizer" not in grid_raw and per_optimizer:
        grid_raw = {"optimizer": list(lr_raw), **grid_raw}  # [grid.lr] alone names the optimizers
    for axis in GRID_AXES:
        if axis not in grid_raw:
            if axis in GRID_DEFAULTS:
                grid[axis] = list(GRID_DEFAULTS[axis])
            continue
        if axis == "lr" and per_optimizer:
            continue
        grid[axis], how = _axis_values(axis, grid_raw[axis], variants)
        drawn += how
        if axis == "optimizer":
            grid[axis] = [expanded for name in grid[axis] for expanded in variants.names(name)]
    if per_optimizer:
        grid["lr"], how = _lr_ranges(lr_raw, grid_raw["optimizer"], variants)
        drawn += how
    used = {name: variants.tables.get(name, {"type": name}) for name in grid["optimizer"]}
    for axis, values in grid_raw.items():
        if axis in GRID_AXES:
            continue
        if axis in DEFAULTS:
            grid[axis], _ = _axis_values(axis, values, variants)
        else:
            grid[axis] = _hyperparameter_axis(axis, values, used, plugins)
    setting_axes = [axis for axis in grid if axis in DEFAULTS]
    for values in itertools.product(*(grid[axis] for axis in setting_axes)):
        combined = {**settings, **dict(zip(setting_axes, values, strict=True))}
        check_settings(combined)
        _check_weight_decay(combined["weight_decay"], used, plugins)
    check_engine(settings, {name: variant["type"] for name, variant in used.items()})
    experiment = Experiment(
        settings=settings,
        grid=grid,
        variants=variants.tables,
        source=source,
        drawn=tuple(drawn),
        problem_settings=problem_settings,
        plugins=plugins,
    )
    if "lr" not in grid:
        for name in grid["optimizer"]:
            if experiment.resolve_optimizer(name)[1] is None:
                raise ConfigError(f"optimizer {name} has no default lr (its constructor sets none): give [grid] lr")
    experiment = replace(experiment, extra_seeds=_check_extra_seeds(raw.get("extra_seeds", {}), experiment))
    return _check_cells(raw, experiment)


def _check_cells(raw: dict[str, Any], experiment: Experiment) -> Experiment:
    # cells = ["OPTIMIZER@LR[axis=value,...]", ...]: only these cells of the grid (a confirmation sweep);
    # confirms = "RUN_ID", the tuning sweep it confirms
    confirms = raw.get("confirms")
    if confirms is not None and (not isinstance(confirms, str) or not confirms.strip()):
        raise ConfigError(f"confirms must be the parent run id of a tuning sweep, got {confirms!r}")
    names = raw.get("cells", [])
    if not isinstance(names, list):
        raise ConfigError('cells must be a list of "OPTIMIZER@LR" cells of the grid')
    if not names:  # every cell of the grid: nothing to check (listing the specs is most of a large grid's load)
        return replace(experiment, confirms=confirms)
    specs = experiment.specs()
    grid = {experiment.cell(spec) for spec in specs} | {(spec.optimizer, spec.lr) for spec in specs}
    cells = []
    for name in names:
        try:
            cell = parse_cell_label(str(name))
        except ValueError:
            cell = None
        if cell not in grid:
            raise ConfigError(f'cells lists {name!r}, which is not a cell of the grid: write "OPTIMIZER@LR"')
        cells.append(cell)
    return replace(experiment, cells=tuple(cells), confirms=confirms)


def _first_values(grid_raw: dict[str, Any]) -> dict[str, Any]:
    """The first value of each setting axis: the settings checked once before the grid is expanded."""
    first = {}
    for axis, values in grid_raw.items():
        if axis in AXIS_SETTINGS and isinstance(values, list) and values:
            first[axis] = values[0]
    return first


def _check_dotted_names(raw_variants: Any) -> None:
    """[optimizers.adam.wd] unquoted is TOML for a table adam holding a table wd: say how to name it."""
    if not isinstance(raw_variants, dict):
        return
    for name, variant in raw_variants.items():
        if isinstance(variant, dict) and "type" not in variant:
            nested = [key for key, value in variant.items() if isinstance(value, dict) and "type" in value]
            if nested:
                raise ConfigError(
                    f"[optimizers.{name}.{nested[0]}] is read as a table {nested[0]!r} inside {name!r}: quote a "
                    f'dotted variant name, [optimizers."{name}.{nested[0]}"], or name it {name}-{nested[0]}'
                )


def _count(values: Any) -> int:
    """How many values an axis lists or draws, without drawing them."""
    if isinstance(values, list):
        return len(values)
    if isinstance(values, dict) and draws.is_draw_table(values):
        count = values.get("count", 1)
        return count if is_int(count) and count > 0 else 1
    return 1


def _check_size(grid_raw: dict[str, Any], raw_variants: Any) -> None:
    """Refuse a grid of more than MAX_CELLS cells before anything is expanded or drawn."""
    raw_variants = raw_variants if isinstance(raw_variants, dict) else {}
    optimizers = grid_raw.get("optimizer", GRID_DEFAULTS["optimizer"])
    lr_raw = grid_raw.get("lr")
    per_optimizer = isinstance(lr_raw, dict) and not draws.is_draw_table(lr_raw)
    if per_optimizer and "optimizer" not in grid_raw:
        optimizers = list(lr_raw)
    optimizers = optimizers if isinstance(optimizers, list) else [optimizers]
    cells = 0
    for name in optimizers:
        variant = raw_variants.get(name) if isinstance(name, str) else None
        expansions = (
            math.prod(_count(v) for v in variant.values() if isinstance(v, dict)) if isinstance(variant, dict) else 1
        )
        lrs = _count(lr_raw.get(name, [None])) if per_optimizer else _count(lr_raw) if lr_raw is not None else 1
        cells += expansions * lrs
    for axis, values in grid_raw.items():
        if axis not in ("optimizer", "lr"):
            cells *= _count(values)
    if cells > MAX_CELLS:
        raise ConfigError(
            f"the grid has {cells:,} cells, more than {MAX_CELLS:,}: check the counts and lists of [grid] "
            "(or pass --allow-huge to sweep it anyway)"
        )


def _axis_values(axis: str, values: Any, variants: Variants) -> tuple[list[Any], list[str]]:
    """An axis' checked values, and how they were drawn (for the resolved file)."""
    drawn = []
    if draws.is_draw(values):
        if axis not in ("lr", "weight_decay", "clip_grad_norm", "gamma"):
            raise ConfigError(f"grid.{axis} cannot be drawn, only numbers that vary smoothly can: list its values")
        table, values = values, draws.draw(f"grid.{axis}", values)
        drawn.append(f"grid.{axis}: {draws.describe(table)}")
    values = list(values) if isinstance(values, list) else [values]
    if not values:
        raise ConfigError(f"grid.{axis} is empty: give at least one value")
    checked = [_check_axis_value(axis, value, variants) for value in values]
    duplicates = sorted({repr(v) for v in checked if checked.count(v) > 1})
    if duplicates:
        raise ConfigError(f"grid.{axis} lists {', '.join(duplicates)} more than once: list each value once")
    return checked, drawn


def _lr_ranges(table: dict[str, Any], optimizers: Any, variants: Variants) -> tuple[dict[str, list[float]], list[str]]:
    """[grid.lr] keyed by optimizer: each optimizer's own learning rates, for every name it expands into."""
    names = optimizers if isinstance(optimizers, list) else [optimizers]
    ranges, drawn = {}, []
    for name in table:
        if name not in names:
            raise ConfigError(
                f"grid.lr.{name} names no optimizer of grid.optimizer{did_you_mean(name, names)}: "
                f"give lrs for {', '.join(map(str, names))}"
            )
    for name in names:
        if name not in table:
            raise ConfigError(
                f'grid.lr has no learning rates for optimizer {name!r}: add "{name}" = [...] to [grid.lr]'
            )
        where = f"grid.lr.{name}"
        values = table[name]
        if draws.is_draw(values):
            drawn.append(f"{where}: {draws.describe(values)}")
            values = draws.draw(where, values)
        values = list(values) if isinstance(values, list) else [values]
        if not values:
            raise ConfigError(f"{where} is empty: give at least one learning rate")
        checked = [_check_axis_value("lr", value, variants, where) for value in values]
        if len(set(checked)) != len(checked):
            raise ConfigError(f"{where} lists a learning rate more than once: list each value once")
        for expanded in variants.names(name):
            ranges[expanded] = checked
    return ranges, drawn


def _hyperparameter_axis(axis: str, values: Any, used: dict[str, dict[str, Any]], plugins: Plugins) -> list[Any]:
    """A hyperparameter as an axis: every optimizer of the grid takes it, and no variant fixes it."""
    values = list(values) if isinstance(values, list) else [values]
    if not values:
        raise ConfigError(f"grid.{axis} is empty: give at least one value")
    checked: list[Any] = []
    for name, variant in used.items():
        defaults = _defaults_of(variant["type"], plugins)
        if axis not in defaults:
            raise ConfigError(
                f"grid.{axis}: optimizer {name!r} (type {variant['type']}) takes no {axis}: sweep {axis} only over "
                "optimizers that take it"
            )
        if axis in variant:
            raise ConfigError(f"grid.{axis}: variant {name!r} fixes {axis} itself: drop one of the two")
        checked = [hyperparameters.check(f"grid.{axis}", axis, value, defaults[axis]) for value in values]
    if len({repr(v) for v in checked}) != len(checked):
        raise ConfigError(f"grid.{axis} lists a value more than once: list each value once")
    return checked


def _defaults_of(kind: str, plugins: Plugins) -> dict[str, Any]:
    """An optimizer type's hyperparameters and their defaults: the catalogue's, or a plugin's signature."""
    return OPTIMIZERS[kind][2] if kind in OPTIMIZERS else plugins.optimizer(kind).defaults


def _check_weight_decay(weight_decay: Any, used: dict[str, dict[str, Any]], plugins: Plugins) -> None:
    """The weight_decay setting applies to every optimizer of the grid: each must take it, no variant fix it."""
    if weight_decay is None:
        return
    for name, variant in used.items():
        if "weight_decay" not in _defaults_of(variant["type"], plugins):
            raise ConfigError(
                f"weight_decay {weight_decay!r} applies to every optimizer, but {name!r} (type {variant['type']}) "
                "takes none: drop weight_decay or that optimizer"
            )
        if "weight_decay" in variant:
            raise ConfigError(
                f"optimizers.{name} fixes weight_decay and so does the setting weight_decay: drop one of the two"
            )


def _check_extra_seeds(raw: Any, experiment: Experiment) -> dict[Cell, tuple[int, ...]]:
    # [extra_seeds] "OPTIMIZER@LR" = [seeds]: more seeds for cells of the grid (written by --until-separated)
    if isinstance(raw, dict) and not raw:
        return {}
    cells = {experiment.cell(spec) for spec in experiment.specs()}
    extra = {}
    for name, seeds in raw.items() if isinstance(raw, dict) else [(raw, None)]:
        try:
            cell = parse_cell_label(name)
        except ValueError:
            cell = None
        if cell not in cells or not isinstance(seeds, list) or not all(is_int(s) and s >= 0 for s in seeds):
            raise ConfigError(f'extra_seeds.{name} must name a cell of the grid as "OPTIMIZER@LR" = [seeds >= 0]')
        extra[cell] = tuple(sorted(set(seeds) - set(experiment.grid["seed"])))
    return extra


def _check_axis_value(axis: str, value: Any, variants: Variants, where: str | None = None) -> Any:
    where = where or f"grid.{axis}"
    if axis == "optimizer":
        if not isinstance(value, str) or not variants.known(value):
            names = variants.choices()
            raise ConfigError(
                f"unknown optimizer {value!r} in grid.optimizer{did_you_mean(value, names)}: use one of "
                f"{', '.join(names)}, or define it as [optimizers.{value}] with a type"
            )
        return value
    if axis == "lr":
        if not is_number(value) or not math.isfinite(value) or value <= 0:
            raise ConfigError(f"lr must be a finite number > 0, got {value!r} in {where}")
        return float(value)
    if axis == "seed":
        if not is_int(value) or value < 0:
            raise ConfigError(f"seed must be an integer >= 0, got {value!r} in grid.seed")
        return value
    return value  # a setting: checked with the others, per combination of the grid's settings

"""Every top-level setting of an experiment, its default, and the checks of their values (no torch import)."""

from __future__ import annotations

import math
from typing import Any

from tinytrain.errors import ConfigError, did_you_mean
from tinytrain.optimizers import VMAP_KINDS
from tinytrain.spec.catalogue import DIGITS_TRAINING_IMAGES, LOSSES

# Every top-level setting and its default: the one place defaults live.
DEFAULTS: dict[str, Any] = {
    "name": "optimizer-grid",  # the MLflow experiment
    "steps": 100,  # optimizer steps per run; the loss is recorded at steps 0..steps
    "data_seed": 0,  # seeds the input, independently of the run's seed
    "target_index": 3,  # where the one-hot target has its 1
    "checkpoint_every": 0,  # also checkpoint every N steps (0: the final weights only)
    "record": "model",  # RECORDS: what each run keeps of its weights (docs/records.md); never in a run key
    "threads": 1,  # torch's intra-op threads: part of what makes a run bit-for-bit reproducible
    "mkldnn": False,  # oneDNN off: faster at this size, and recorded because it changes the bits
    "engine": "sequential",  # sequential (one run at a time) or vmap (cells in batched nets)
    "problem": "one-sample",  # what a run learns: one-sample (the blog's) or digits (tinytrain/problems/)
    "loss": "mse",  # mse against the one-hot label (the blog's) or cross_entropy
    "batch_size": 64,  # digits: training images per step
    "eval_every": 50,  # digits: test metrics every N steps (0: at the end only), and always at the end
    "diverge_above": 1e3,  # a loss above this many times the run's initial loss (or non-finite) is divergence
    # The training recipe (docs/recipes.md): the learning-rate schedule and its lengths, weight decay, clipping
    "schedule": "constant",  # SCHEDULES: how the lr changes over the run (torch.optim.lr_scheduler)
    "warmup": 0,  # linear warmup of warmup, warmup-cosine and wsd: steps (an integer) or a fraction of steps
    "decay": 0.2,  # wsd's final decay: steps or a fraction of steps
    "step_size": 0.3,  # step: the lr is multiplied by gamma every step_size steps (or fraction of steps)
    "gamma": 0.1,  # step: the factor
    "weight_decay": None,  # one value for every optimizer that takes it (None: each optimizer's own default)
    "clip_grad_norm": 0.0,  # clip the gradients' total 2-norm to this (clip_grad_norm_); 0: no clipping
    "validation": 0.0,  # digits: the fraction of the training images held out for validation (0: none)
    # How compute is spent (docs/budget.md): none trains every run to `steps`; halving is successive halving
    "budget": "none",
    "eta": 3,  # halving: at each rung the best 1/eta of the cells continue
    "first_rung": 0,  # halving: the first rung's steps (0: steps / eta^2, rounded up)
    "tuning_metric": "auto",  # what halving and search rank cells by (lower is better); auto: see tuning_metric()
    # How records are written (docs/performance.md): processes writing finished runs' records; auto: writer_count()
    "writers": "auto",
}
BUDGETS = ("none", "halving")
# What a run keeps of its weights: a LoggedModel per checkpoint (model); a plain weights file per checkpoint and
# a LoggedModel for each cell's median seed (weights); no weights at all (none). Metrics, params and outcome
# are kept whatever the policy, and so are the training states that runs continue from.
RECORDS = ("model", "weights", "none")
LEGACY_RECORD = "model"  # what a run logged before the setting existed keeps (it has no `record` param)
# auto's choice, the first a problem measures: held-out validation loss, then test loss, then the training loss
TUNING_METRICS = ("val_loss", "test_loss", "final_loss")
# Settings added after run keys were first written: they enter a run's key only when they differ from
# their default, so that every run key written before them (a one-sample run at the defaults) stays valid.
LATER_SETTINGS = (
    "problem",
    "loss",
    "batch_size",
    "eval_every",
    "schedule",
    "warmup",
    "decay",
    "step_size",
    "gamma",
    "clip_grad_norm",
    "validation",
)
SCHEDULES = ("constant", "warmup", "cosine", "warmup-cosine", "wsd", "linear", "step")
# The settings each schedule reads besides the lr; the others are left at their defaults in its run specs
# (so that, say, a warmup axis crossed with a constant schedule gives one cell, not one per warmup).
SCHEDULE_SETTINGS = {
    "constant": (),
    "warmup": ("warmup",),
    "cosine": (),
    "warmup-cosine": ("warmup",),
    "wsd": ("warmup", "decay"),
    "linear": (),
    "step": ("step_size", "gamma"),
}
LENGTH_SETTINGS = ("warmup", "decay", "step_size")  # steps, or a fraction of the run's steps
# The settings a grid may also sweep (besides optimizer, lr, seed and a hyperparameter that optimizers share)
AXIS_SETTINGS = (
    "steps",
    "data_seed",
    "target_index",
    "loss",
    "batch_size",
    "schedule",
    "warmup",
    "decay",
    "step_size",
    "gamma",
    "weight_decay",
    "clip_grad_norm",
    "validation",
)
BATCH_SETTINGS = ("batch_size", "eval_every")  # used only by problems with a data set (not one-sample)
GRID_AXES = ("optimizer", "lr", "seed")
GRID_DEFAULTS: dict[str, list[Any]] = {"optimizer": ["adam"], "seed": [0]}  # lr: each optimizer's default
ENGINES = ("sequential", "vmap")
MAX_TARGET_INDEX = 9
MAX_CELLS = 10**6  # more cells than this is almost surely a typo: refused unless --allow-huge


def length_in_steps(value: int | float, steps: int) -> int:
    """A schedule length as steps: an integer is steps, a fraction in (0, 1) that share of steps, rounded."""
    if isinstance(value, float):
        return round(value * steps)
    return value


def is_int(value: Any) -> bool:
    """An integer of TOML or Python, not a bool (True is an int to Python, not to an experiment file)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def check_settings(settings: dict[str, Any]) -> None:
    name = settings["name"]
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f"name must be a non-empty string (the MLflow experiment), got {name!r}")
    lower_bounds = {"steps": 1, "data_seed": 0, "checkpoint_every": 0, "threads": 1, "batch_size": 1, "eval_every": 0}
    for key, low in lower_bounds.items():
        value = settings[key]
        if not is_int(value) or value < low:
            raise ConfigError(f"{key} must be an integer >= {low}, got {value!r}")
    target = settings["target_index"]
    if not is_int(target) or not 0 <= target <= MAX_TARGET_INDEX:
        raise ConfigError(f"target_index must be an integer from 0 to {MAX_TARGET_INDEX}, got {target!r}")
    if not isinstance(settings["mkldnn"], bool):
        raise ConfigError(f"mkldnn must be true or false, got {settings['mkldnn']!r}")
    bound = settings["diverge_above"]
    if not is_number(bound) or math.isnan(bound) or bound <= 1:
        raise ConfigError(
            f"diverge_above must be a number > 1 (times the initial loss; inf: only a non-finite "
            f"loss diverges), got {bound!r}"
        )
    check_budget(settings)
    writers = settings["writers"]
    if writers != "auto" and (not is_int(writers) or writers < 1):
        raise ConfigError(f"writers must be an integer >= 1 or auto (the cores training leaves free), got {writers!r}")
    if settings["record"] not in RECORDS:
        hint = did_you_mean(settings["record"], RECORDS) if isinstance(settings["record"], str) else ""
        raise ConfigError(f"record must be one of {', '.join(RECORDS)}, got {settings['record']!r}{hint}")
    if settings["engine"] not in ENGINES:
        raise ConfigError(f"engine must be one of {', '.join(ENGINES)}, got {settings['engine']!r}")
    # problem: a built-in (catalogue.PROBLEMS) or a plugin, checked by spec/plugins.py's check_problem
    for key, allowed in (("loss", LOSSES), ("schedule", SCHEDULES)):
        if settings[key] not in allowed:
            hint = did_you_mean(settings[key], allowed)
            raise ConfigError(f"{key} must be one of {', '.join(allowed)}, got {settings[key]!r}{hint}")
    check_recipe(settings)
    if settings["problem"] == "one-sample":
        for key in (*BATCH_SETTINGS, "validation"):
            if settings[key] != DEFAULTS[key]:
                raise ConfigError(
                    f"{key} applies to problem digits; one-sample trains on its one input and has "
                    f'no test set: drop {key} or set problem = "digits"'
                )
    else:
        if target != DEFAULTS["target_index"]:
            raise ConfigError(
                f"target_index is the one-sample problem's label; problem {settings['problem']} "
                "has its own labels: drop target_index"
            )
        training_images = digits_training_images(settings["validation"])
        if settings["problem"] == "digits" and settings["batch_size"] > training_images:
            raise ConfigError(
                f"batch_size must be at most the {training_images} training images of "
                f"digits, got {settings['batch_size']}"
            )
    if settings["engine"] == "vmap" and (settings["threads"] != 1 or settings["mkldnn"]):
        # Only there is a cell's result independent of the batch it ran in, and equal to the sequential
        # engine's bit for bit, so that `reproduce` can retrain any vmap run on its own (see vmap.py).
        raise ConfigError(
            "engine vmap runs with threads = 1 and mkldnn = false, where its results equal the "
            "sequential engine's bit for bit: drop the threads/mkldnn settings or use engine sequential"
        )


MAX_AUTO_WRITERS = 4  # auto never starts more writers than this (each is a process of about 250 MB)


def writer_count(setting: int | str, training_processes: int, cores: int | None = None) -> int:
    """How many processes write a sweep's finished runs: the setting, or for auto the cores that the
    training processes leave free, at least 1 and at most MAX_AUTO_WRITERS."""
    if setting != "auto":
        return int(setting)
    import os

    cores = cores or os.cpu_count() or 1
    return max(1, min(cores - training_processes, MAX_AUTO_WRITERS))


def check_budget(settings: dict[str, Any]) -> None:
    """The budget's settings: successive halving needs eta >= 2 and a first rung shorter than the run."""
    if settings["budget"] not in BUDGETS:
        raise ConfigError(f"budget must be one of {', '.join(BUDGETS)}, got {settings['budget']!r}")
    eta, first = settings["eta"], settings["first_rung"]
    if not is_int(eta) or eta < 2:
        raise ConfigError(f"eta must be an integer >= 2 (halving keeps the best 1/eta at each rung), got {eta!r}")
    if not is_int(first) or first < 0:
        raise ConfigError(f"first_rung must be an integer >= 0 (0: steps / eta^2), got {first!r}")
    metric = settings["tuning_metric"]
    if not isinstance(metric, str) or not metric:
        raise ConfigError(f"tuning_metric must be a metric name such as test_loss, or auto, got {metric!r}")
    if settings["budget"] != "halving":
        return
    if first >= settings["steps"]:
        raise ConfigError(
            f"first_rung {first} is not shorter than the run ({settings['steps']} steps): halving stops runs "
            "at the first rung, so give first_rung < steps (or 0 for steps / eta^2)"
        )
    every = settings["eval_every"] if settings["problem"] != "one-sample" else 1
    if every == 0:
        raise ConfigError(
            "halving ranks cells by held-out metrics at each rung, and eval_every = 0 measures them only at "
            "the end: set eval_every (first_rung a multiple of it)"
        )
    if any(rung % every for rung in rungs(settings)[:-1]):
        raise ConfigError(
            f"halving ranks cells by held-out metrics measured every eval_every = {every} steps: make "
            f"first_rung a multiple of it (rungs {', '.join(map(str, rungs(settings)))})"
        )


def rungs(settings: dict[str, Any]) -> list[int]:
    """Successive halving's rungs: first_rung, times eta at each rung while shorter than the run, then steps.

    first_rung 0 is steps / eta^2 rounded up (to a multiple of eval_every where held-out metrics rank)."""
    steps, eta = settings["steps"], settings["eta"]
    first = settings["first_rung"]
    if not first:
        every = settings["eval_every"] if settings["problem"] != "one-sample" else 0
        first = max(1, -(-steps // eta**2))
        first = -(-first // every) * every if every else first
    points = []
    while first < steps:
        points.append(first)
        first *= eta
    return [*points, steps]


def check_engine(settings: dict[str, Any], kinds: dict[str, str]) -> None:
    """The vmap engine batches the one-sample problem with MSE, for the optimizers it has a stacked update of."""
    if settings["engine"] != "vmap":
        return
    if settings["problem"] != "one-sample" or settings["loss"] != "mse":
        raise ConfigError(
            f"engine vmap trains problem one-sample with loss mse only, not problem "
            f"{settings['problem']} with loss {settings['loss']}: use engine sequential "
            "(--jobs N runs cells in parallel)"
        )
    for name, kind in kinds.items():
        if kind not in VMAP_KINDS:
            raise ConfigError(
                f"engine vmap has no stacked update for {kind} (optimizer {name}): use engine "
                f"sequential, or one of {', '.join(VMAP_KINDS)}"
            )


def digits_training_images(validation: float) -> int:
    """The images digits trains on when `validation` of its training images are held out for validation."""
    return DIGITS_TRAINING_IMAGES - math.ceil(validation * DIGITS_TRAINING_IMAGES)  # as train_test_split rounds


def check_recipe(settings: dict[str, Any]) -> None:
    """The schedule's lengths fit the run, weight decay and clipping are numbers of the right sign."""
    steps, schedule = settings["steps"], settings["schedule"]
    for key in LENGTH_SETTINGS:
        value = settings[key]
        if not (is_int(value) and value >= 0) and not (isinstance(value, float) and 0 < value < 1):
            raise ConfigError(f"{key} must be steps (an integer >= 0) or a fraction of steps in (0, 1), got {value!r}")
    used = SCHEDULE_SETTINGS[schedule]
    warmup, decay = (length_in_steps(settings[key], steps) for key in ("warmup", "decay"))
    if schedule in ("warmup", "warmup-cosine") and warmup < 1:
        raise ConfigError(
            f"schedule {schedule!r} needs a warmup: set warmup to steps or a fraction of steps, e.g. warmup = 0.05"
        )
    if "warmup" in used and warmup >= steps:
        raise ConfigError(
            f"warmup {settings['warmup']!r} ({warmup} steps) is not shorter than the run's {steps} steps: "
            "give fewer steps or a fraction below 1, e.g. warmup = 0.05"
        )
    if schedule == "wsd" and (decay < 1 or warmup + decay > steps):
        raise ConfigError(
            f"wsd's decay {settings['decay']!r} ({decay} steps) must be at least a step and, with the warmup "
            f"of {warmup}, fit in the run's {steps} steps: give e.g. decay = 0.2"
        )
    if schedule == "step" and length_in_steps(settings["step_size"], steps) < 1:
        raise ConfigError(f"step_size must be at least a step, got {settings['step_size']!r}: e.g. step_size = 0.3")
    gamma = settings["gamma"]
    if not is_number(gamma) or not 0 < gamma <= 1:
        raise ConfigError(f"gamma must be a number in (0, 1] (the step schedule's factor), got {gamma!r}")
    decay_value = settings["weight_decay"]
    if decay_value is not None and (not is_number(decay_value) or not math.isfinite(decay_value) or decay_value < 0):
        raise ConfigError(f"weight_decay must be a finite number >= 0, got {decay_value!r}")
    clip = settings["clip_grad_norm"]
    if not is_number(clip) or not math.isfinite(clip) or clip < 0:
        raise ConfigError(
            f"clip_grad_norm must be a finite number >= 0 (the largest gradient norm; 0: no clipping), got {clip!r}"
        )
    validation = settings["validation"]
    if not is_number(validation) or not 0 <= validation < 1:
        raise ConfigError(
            f"validation must be the fraction of digits' training images held out, in [0, 1), got {validation!r}"
        )

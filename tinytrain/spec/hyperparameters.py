"""An optimizer hyperparameter's value: checked against the type of its default, and read back from a param.

The rule is the default's type: a flag takes true/false, an integer an integer >= 0, a number a finite number
of the default's sign (infinity where the default is infinite), a tuple as many numbers (betas in [0, 1)),
text one of optimizers.CHOICES, and a default of None (derived by the optimizer) a number >= 0 or a choice.
Plain data, no torch: experiment files are validated before anything is imported.
"""

from __future__ import annotations

import ast
import math
from typing import Any

from tinytrain.errors import ConfigError
from tinytrain.optimizers import CHOICES
from tinytrain.spec.settings import is_int, is_number


class HyperparameterError(ConfigError):
    """A value that the hyperparameter's default does not allow; the message says which and why."""


def check(where: str, key: str, value: Any, default: Any) -> Any:
    """The value in the form the optimizer takes it, or HyperparameterError naming `where`."""
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise HyperparameterError(f"{where} must be true or false, got {value!r}")
        return value
    if isinstance(default, tuple):
        return _check_tuple(where, key, value, default)
    if isinstance(default, str) or (default is None and isinstance(value, str)):
        choices = CHOICES.get(key, (default,))
        if value not in choices:
            raise HyperparameterError(f"{where} must be one of {', '.join(map(str, choices))}, got {value!r}")
        return value
    if is_int(default):
        if not is_int(value) or value < 0:
            raise HyperparameterError(f"{where} must be an integer >= 0, got {value!r}")
        return value
    return _check_number(where, value, default)


def _check_number(where: str, value: Any, default: float | None) -> float:
    allowed_inf = default is not None and math.isinf(default)
    if not is_number(value) or math.isnan(value) or (math.isinf(value) and not allowed_inf):
        raise HyperparameterError(f"{where} must be a finite number {_sign(default)}, got {value!r}")
    if (default is not None and default < 0 and value > 0) or ((default is None or default >= 0) and value < 0):
        raise HyperparameterError(f"{where} must be a finite number {_sign(default)}, got {value!r}")
    return float(value)


def _sign(default: float | None) -> str:
    return "<= 0" if default is not None and default < 0 else ">= 0"


COUNT_WORDS = {2: "two", 3: "three"}


def _check_tuple(where: str, key: str, value: Any, default: tuple) -> tuple:
    example = list(default)
    count = COUNT_WORDS.get(len(default), str(len(default)))
    if not isinstance(value, list | tuple) or len(value) != len(default):
        if key.endswith("betas"):
            raise HyperparameterError(f"{where} must be {count} numbers in [0, 1), e.g. {example}, got {value!r}")
        raise HyperparameterError(f"{where} must be {count} numbers, e.g. {example}, got {value!r}")
    checked = []
    for item, item_default in zip(value, default, strict=True):
        if item_default is None:
            if item is not None:
                raise HyperparameterError(f"{where} keeps None where its default has it: give {example}")
            checked.append(None)
            continue
        if not is_number(item) or not math.isfinite(item):
            raise HyperparameterError(f"{where} must be {count} finite numbers, e.g. {example}, got {value!r}")
        if key.endswith("betas") and not 0 <= item < 1:
            raise HyperparameterError(f"{where} must be {count} numbers in [0, 1), e.g. {example}, got {value!r}")
        checked.append(item if is_int(item_default) and is_int(item) else float(item))
    return tuple(checked)


def as_param(value: Any) -> str:
    """A hyperparameter as an MLflow param: repr for numbers (every bit), str otherwise."""
    return repr(value) if isinstance(value, float) else str(value)


def from_param(text: str, default: Any) -> Any:
    """The value as_param wrote, back in its type (what `reproduce` trusts)."""
    if isinstance(default, bool):
        return text == "True"
    if isinstance(default, str) or (default is None and text.isidentifier() and text != "None"):
        return text
    if text in ("inf", "-inf"):
        return float(text)
    value = ast.literal_eval(text)
    if isinstance(default, float) and is_int(value):
        return float(value)
    return value

"""The library's error for bad input and its "did you mean", apart from the modules that raise it (no cycles)."""

import difflib
from collections.abc import Iterable


class ConfigError(ValueError):
    """Bad input: an experiment file, an override or a value that cannot make a valid sweep."""


def did_you_mean(word: object, choices: Iterable[object], cutoff: float = 0.75) -> str:
    """' (did you mean X?)' for the closest of choices to a misspelt word (difflib), else ''. A hyperparameter's
    name passes a lower cutoff (betas -> adamw_betas); names of keys and axes keep 0.75 (not epochs -> eps)."""
    if not isinstance(word, str):
        return ""
    close = difflib.get_close_matches(word, [str(choice) for choice in choices], n=1, cutoff=cutoff)
    return f" (did you mean {close[0]!r}?)" if close else ""

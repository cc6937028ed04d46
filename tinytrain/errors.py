"""The library's error for bad input, apart from the modules that raise it (no imports, no cycles)."""


class ConfigError(ValueError):
    """Bad input: an experiment file, an override or a value that cannot make a valid sweep."""

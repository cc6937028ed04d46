"""What an experiment is, as plain data: experiment files, settings, variants, hyperparameters, draws, run keys.

Nothing here imports torch or MLflow, so validating an experiment (`--dry-run`, `--help`) stays instant.
"""

from tinytrain.errors import ConfigError
from tinytrain.spec.experiment import (
    DEFAULT_EXPERIMENT,
    DEFAULTS,
    ENGINES,
    PROJECT_ROOT,
    Experiment,
    RunSpec,
    apply_override,
    default_experiment_path,
    load_experiment,
    parse_override,
    read_experiment_file,
    validate,
)

__all__ = [
    "DEFAULTS",
    "DEFAULT_EXPERIMENT",
    "ENGINES",
    "PROJECT_ROOT",
    "ConfigError",
    "Experiment",
    "RunSpec",
    "apply_override",
    "default_experiment_path",
    "load_experiment",
    "parse_override",
    "read_experiment_file",
    "validate",
]

"""Optuna define-by-run search spaces, one per registered strategy.

A space function asks for each dimension through `spaces.dims.Dims` (`dims.float`, `dims.int`,
`dims.categorical`) with its built-in range, and `get_space` binds it into the function Ray
calls with a trial: it applies any `--space` overrides (spaces.overrides) and returns their
fixed values as a dict of constants. Each name is a TrialConfig field, except lr, which Optuna
sees as lr_sgd or lr_adamw (one parameter per range); `to_trial_values` and `to_study_params`
map between the two. Every module in this package is imported here, and registers its space
with `@register_space`: adding a strategy's space is adding one file.
"""

import importlib
import pkgutil

from spaces.dims import Dims
from spaces.registry import (
    SPACES,
    SpaceContext,
    get_space,
    register_space,
    run_context,
    space_dimensions,
    to_study_params,
    to_trial_values,
)

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["SPACES", "Dims", "SpaceContext", "get_space", "register_space", "run_context",
           "space_dimensions", "to_study_params", "to_trial_values"]

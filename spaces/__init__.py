"""Optuna define-by-run search spaces, one per registered strategy.

A space only calls `trial.suggest_*` and returns None (Ray's rule for define-by-run spaces);
each suggested name is a field of `trainables.config.TrialConfig`. Every module in this package
is imported here, and registers its space with `@register_space`: adding a strategy's space is
adding one file.
"""

import importlib
import pkgutil

from spaces.registry import SPACES, SpaceContext, get_space, register_space

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["SPACES", "SpaceContext", "get_space", "register_space"]

"""Optuna define-by-run search spaces, one per registered strategy.

A space only calls `trial.suggest_*` and returns None (Ray's rule for define-by-run spaces);
each suggested name is a field of `trainables.config.TrialConfig`.
"""

# each module registers its space on import
from spaces import colorization, frozen, lp_ft, partial, scratch, unfrozen  # noqa: F401
from spaces.registry import SPACES, SpaceContext, get_space, register_space

__all__ = ["SPACES", "SpaceContext", "get_space", "register_space"]

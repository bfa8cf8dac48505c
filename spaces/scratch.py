"""Training from random initialisation: every weight is new."""

import optuna

from spaces.registry import SpaceContext, common, register_space


@register_space("scratch")
def scratch(trial: optuna.Trial, context: SpaceContext) -> None:
    common(trial)

"""Training from random initialisation: every weight is new, so larger learning rates."""

import optuna

from spaces.registry import common, register_space


@register_space("scratch")
def scratch(trial: optuna.Trial) -> None:
    common(trial, lr=(1e-3, 0.3))

"""Full fine-tuning; the backbone's lr is the head's times a searched multiplier."""

import optuna

from spaces.registry import common, register_space


@register_space("unfrozen")
def unfrozen(trial: optuna.Trial) -> None:
    common(trial, lr=(1e-3, 0.3))
    trial.suggest_float("lr_mult", 0.01, 1.0, log=True)

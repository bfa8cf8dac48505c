"""Fine-tuning a colorization-pretrained encoder; its lr multiplier is searched as for unfrozen."""

import optuna

from spaces.registry import common, register_space


@register_space("colorization")
def colorization(trial: optuna.Trial) -> None:
    common(trial, lr=(1e-3, 0.3))
    trial.suggest_float("lr_mult", 0.01, 1.0, log=True)

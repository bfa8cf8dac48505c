"""Fine-tuning a colorization-pretrained encoder: lr multiplier and how many blocks stay frozen."""

import optuna

from spaces.registry import SpaceContext, common, lr_mult, register_space


@register_space("colorization")
def colorization(trial: optuna.Trial, context: SpaceContext) -> None:
    common(trial)
    lr_mult(trial)
    trial.suggest_int("freeze_depth", 0, context.num_blocks - 1)

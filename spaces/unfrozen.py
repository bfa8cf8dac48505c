"""Full fine-tuning with a searched backbone lr multiplier."""

import optuna

from spaces.registry import SpaceContext, common, lr_mult, register_space


@register_space("unfrozen")
def unfrozen(trial: optuna.Trial, context: SpaceContext) -> None:
    common(trial)
    lr_mult(trial)
